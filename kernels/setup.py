"""Builds sdft_cpu_kernels._C with torch's C++ extension tools, at install time only (see pyproject.toml)."""

import platform

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

if platform.machine().lower() not in ("x86_64", "amd64"):
    raise SystemExit(f"sdft-cpu-kernels is x86-64 code (AVX2, FMA); this machine is {platform.machine()}")

setup(
    ext_modules=[
        CppExtension(
            "sdft_cpu_kernels._C",
            ["sdft_cpu_kernels/kernels.cpp"],
            # AVX2/FMA are enabled per function in the source (checked at run time), not for the whole module
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
