import logging
import os
import re
import sys

import pytest
import torch

from sdft_core import cpu_kernels


def require_kernel() -> cpu_kernels.SkinnyMatmul:
    """The AVX2 kernels' skinny product; CI (SDFT_REQUIRE_SYSTEM_TOOLS=1, x86-64 with a C compiler) fails
    without it, others skip."""
    kernel = cpu_kernels.kernel()
    if kernel is None:
        reason = cpu_kernels.unavailable_reason() or "their build failed (see the log)"
        if os.environ.get("SDFT_REQUIRE_SYSTEM_TOOLS"):
            pytest.fail(f"the CPU kernels are unavailable: {reason}")
        pytest.skip(f"the CPU kernels are unavailable: {reason}")
    return kernel


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """kernel() rebuilt from scratch into an empty cache, and forgotten again afterwards."""
    monkeypatch.setenv("SDFT_CACHE_DIR", str(tmp_path))
    cpu_kernels.library.cache_clear()
    yield
    cpu_kernels.library.cache_clear()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, cpu_kernels.MAX_ROWS])
@pytest.mark.parametrize("depth, columns", [(8, 1), (16, 71), (576, 65), (1536, 130)])
def test_the_kernel_matches_a_float64_product(rows, depth, columns):
    kernel = require_kernel()
    generator = torch.Generator().manual_seed(rows * 1000 + depth + columns)
    x = torch.randn(rows, depth, generator=generator)
    weight = torch.randn(columns, depth, generator=generator)
    out = kernel(x, weight)
    assert out.shape == (rows, columns) and out.dtype == torch.float32 and out.is_contiguous()
    reference = x.double() @ weight.double().T
    # float32 sums of `depth` unit-variance products: errors of order 1e-7 x sqrt(depth) x |terms|
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=2e-6 * depth ** 0.5 * 4)


def test_the_kernel_reads_a_strided_x_and_uses_every_thread_count():
    kernel = require_kernel()
    x = torch.randn(6, 32)[:, :16]  # not contiguous
    weight = torch.randn(200, 16)
    reference = x.double() @ weight.double().T
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            torch.testing.assert_close(kernel(x, weight).double(), reference, rtol=0, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_the_kernel_refuses_what_it_cannot_multiply():
    kernel = require_kernel()
    x, weight = torch.randn(4, 12), torch.randn(10, 12)  # 12 is not a multiple of 8
    assert not kernel.accepts(x, weight)
    with pytest.raises(ValueError, match=r"x \(4, 12\).*weight \(10, 12\)"):
        kernel(x, weight)
    assert not kernel.accepts(torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(10, 16, dtype=torch.bfloat16))
    assert not kernel.accepts(torch.randn(4, 16), torch.randn(16, 10).T)  # a transposed weight
    assert not kernel.accepts(torch.randn(cpu_kernels.MAX_ROWS + 1, 16), torch.randn(10, 16))
    assert kernel.accepts(torch.randn(4, 16), torch.randn(10, 16))
    assert not kernel.takes_weight(torch.randn(10, 12)) and kernel.takes_weight(torch.randn(10, 16))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_kernel_shares_torchs_openmp_runtime():
    require_kernel()
    libraries = set(re.findall(r"\S*libgomp\S*\.so\S*", open("/proc/self/maps").read()))
    assert len(libraries) == 1, libraries


def test_a_kernel_that_cannot_be_built_falls_back_with_a_warning(fresh_kernel, monkeypatch, caplog):
    if cpu_kernels.unavailable_reason() is not None:
        pytest.skip(cpu_kernels.unavailable_reason())
    monkeypatch.setenv("CC", "false")  # a "compiler" that exits 1
    with caplog.at_level(logging.WARNING, logger="sdft_core.cpu_kernels"):
        assert cpu_kernels.kernel() is None
    assert "building cpu_kernels.c failed" in caplog.text


def test_the_kernel_is_built_once_into_the_cache_and_can_be_switched_off(fresh_kernel, monkeypatch, tmp_path):
    require_kernel()
    cpu_kernels.library.cache_clear()
    assert cpu_kernels.kernel() is not None
    built = list((tmp_path / "kernels").glob("cpu_kernels-*.so"))
    assert len(built) == 1 and list((tmp_path / "kernels").iterdir()) == built  # no scratch left behind
    cpu_kernels.library.cache_clear()

    def no_compiling(*args, **kwargs):
        raise AssertionError(f"compiled again: {args}")

    monkeypatch.setattr(cpu_kernels.subprocess, "run", no_compiling)  # a second load finds the built library
    assert cpu_kernels.kernel() is not None
    cpu_kernels.library.cache_clear()
    monkeypatch.setenv("SDFT_CPU_KERNEL", "0")
    assert cpu_kernels.unavailable_reason() == "SDFT_CPU_KERNEL=0" and cpu_kernels.kernel() is None
