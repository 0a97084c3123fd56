"""`x @ weight.T` for a few rows of x on an x86-64 CPU with AVX2: the products of a CPU decode step.

A decode step multiplies a handful of rows against every weight of the model, so it is as fast as the weights
stream from memory. In torch 2.13, MKL's float32 products stream them at about half the speed of a plain read
at 4 rows; `cpu_matmul.c` is a small AVX2 kernel that reads each weight row once, in order, with a prefetch ahead.

It is compiled on first use with the system's C compiler (`$CC`, else `cc`) into the sdft cache
(`$SDFT_CACHE_DIR/kernels`, keyed by a hash of the source and flags) and loaded with ctypes. OpenMP comes from
the `libgomp.so.1` torch already loaded, so the kernel shares torch's threads. Where it cannot be had (another
architecture, no compiler, a failed build, or `SDFT_CPU_KERNEL=0`) `kernel()` is None and callers use torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .models import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11")
# Up to this many rows the kernel beats MKL's `weight @ x.T` on the embedded model's weights (2-core EPYC: 25 vs
# 35 ms per decode step's products at 4 rows, 47 vs 93 at 12); at 16-24 rows they are even, at 32 MKL wins.
MAX_ROWS = 12


class SkinnyMatmul:
    """The loaded kernel: `self(x, weight)` is x @ weight.T for float32 CPU tensors that it `accepts`."""

    def __init__(self, library: ctypes.CDLL):
        self._function = library.skinny_matmul
        self._function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
        self._function.restype = ctypes.c_int

    @staticmethod
    def takes_weight(weight: torch.Tensor) -> bool:
        """Whether some x can be multiplied by this weight (a caller can decide once per weight)."""
        return (weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 2
                and weight.shape[0] > 0 and weight.shape[1] % 8 == 0 and weight.is_contiguous())

    @classmethod
    def accepts(cls, x: torch.Tensor, weight: torch.Tensor) -> bool:
        return (cls.takes_weight(weight) and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2
                and x.shape[1] == weight.shape[1] and 0 < x.shape[0] <= MAX_ROWS)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not self.accepts(x, weight):
            raise ValueError(f"skinny_matmul takes float32 CPU x [m, k] (m <= {MAX_ROWS}) and contiguous weight "
                             f"[n, k] with k a multiple of 8; got x {tuple(x.shape)} {x.dtype}, "
                             f"weight {tuple(weight.shape)} {weight.dtype}")
        x = x.contiguous()
        rows, depth = x.shape
        out = torch.empty(rows, weight.shape[0], dtype=torch.float32)
        status = self._function(x.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, depth, weight.shape[0],
                                torch.get_num_threads())
        if status != 0:
            raise RuntimeError(f"skinny_matmul refused shapes x {tuple(x.shape)}, weight {tuple(weight.shape)}")
        return out


def unavailable_reason() -> str | None:
    """Why the kernel cannot be built here, or None when it can be tried."""
    if os.environ.get("SDFT_CPU_KERNEL", "1") == "0":
        return "SDFT_CPU_KERNEL=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} is not x86-64"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"the CPU lacks AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    if shutil.which(compiler()) is None:
        return f"no C compiler ({compiler()!r}; set CC)"
    return None


def compiler() -> str:
    return os.environ.get("CC", "cc")


@functools.cache
def kernel() -> SkinnyMatmul | None:
    """The kernel, built on first use; None (once logged) where it cannot be had."""
    reason = unavailable_reason()
    if reason is None:
        try:
            return SkinnyMatmul(ctypes.CDLL(str(_build())))
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("CPU decoding uses torch's products: building %s failed: %s", SOURCE.name, err)
            return None
    log.info("CPU decoding uses torch's products: %s", reason)
    return None


def _build() -> Path:
    """The shared library for this source and these flags, compiled once into the cache (atomically, so that
    concurrent processes never load a half-written file)."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler(), *FLAGS)).encode()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"cpu_matmul-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run([compiler(), *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise subprocess.SubprocessError(result.stderr.strip() or f"{compiler()} exited {result.returncode}")
        os.replace(built, target)
    return target
