"""Float32 decode-step kernels for x86-64 CPUs with AVX2 and FMA: the opt-in fast path of sdft's static-cache
decoder on CPU (`sdft_core.decoding.StaticCacheDecoder` uses them when this package is importable).

Compiled when the package is installed (`make kernels`, i.e. `uv pip install --no-build-isolation --no-deps
./kernels`), never at import. The kernels are in `kernels.cpp`:
- `skinny_matmul(x, weight, bias=None, out=None, accumulate=False)`: x @ weight.T (+ bias) for a few rows of x,
  into `out` or added to it;
- `DecodeStep(...)`: one decode step of a Llama-family model in one call and one OpenMP team, over the tensors
  of the torch decoder that builds it;
- `supported()`: whether this CPU can run them.
"""

import torch  # noqa: F401 - loads libtorch, and with it the OpenMP runtime the kernels share, before the extension

from ._C import DecodeStep, skinny_matmul, supported

__all__ = ["DecodeStep", "skinny_matmul", "supported"]
