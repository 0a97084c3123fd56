"""Float32 decoding kernels for an x86-64 CPU with AVX2 (`cpu_kernels.c`), built on first use.

A decode step multiplies a handful of rows against every weight of the model, so it is as fast as the weights
stream from memory. In torch 2.13, MKL's float32 products stream them at about half the speed of a plain read
at 4 rows, and the step's few hundred small ops (norms, rotations, attention over the cache) add a fixed cost per
op. `cpu_kernels.c` reads each weight row once, two rows at a time from two places in the matrix, with a
prefetch ahead:
- `skinny_matmul`: x @ weight.T for a few rows of x (`SkinnyMatmul`);
- `decode_step`: a whole decode step of a Llama-family model in one call and one OpenMP team (`DecodeStep`).

It is compiled on first use with the system's C compiler (`$CC`, else `cc`) into the sdft cache
(`$SDFT_CACHE_DIR/kernels`, keyed by a hash of the source and flags) and loaded with ctypes. OpenMP comes from
the `libgomp.so.1` torch already loaded, so the kernels share torch's threads. Where they cannot be had (another
architecture, no compiler, a failed build, or `SDFT_CPU_KERNEL=0`) `library()` is None and callers use torch.
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
from collections.abc import Sequence
from pathlib import Path

import torch

from .models import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11")
LIBRARIES = ("-lm",)
# Up to this many rows `skinny_matmul` beats MKL's `weight @ x.T` on the embedded model's weights (2-core EPYC,
# measured with one stream per thread: 25 vs 35 ms per decode step's products at 4 rows, 47 vs 93 at 12; even at
# 16-24, MKL faster at 32). The whole-step kernel has its own limit, `decoding.NATIVE_MAX_ROWS`.
MAX_ROWS = 12


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class SkinnyMatmul:
    """`self(x, weight)` is x @ weight.T for float32 CPU tensors that it `accepts`."""

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


class DecodeStep:
    """`decode_step` of cpu_kernels.c: one decode step of a Llama-family model over a static KV cache.

    The caller (`decoding.NativeDecoder`) holds every tensor the step reads or writes; the kernel keeps nothing
    between calls. Dimensions travel as an int64 array in the order of `DIMS`, each layer's tensors as pointers in
    the order of `LAYER_TENSORS` (a missing bias is None)."""

    DIMS = ("rows", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "max_length", "layers",
            "slot", "threads")
    LAYER_TENSORS = ("q", "k", "v", "o", "gate", "up", "down", "q_bias", "k_bias", "v_bias", "o_bias",
                     "gate_bias", "up_bias", "down_bias", "input_norm", "post_attention_norm", "keys", "values")
    STATUS = {-1: "shapes it does not take", -2: "a token or a position outside the vocabulary or the cache"}

    def __init__(self, library: ctypes.CDLL):
        self._function = library.decode_step
        self._function.argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_float] + [ctypes.c_void_p] * 12
        self._function.restype = ctypes.c_int
        self._workspace = library.decode_workspace
        self._workspace.argtypes = [ctypes.c_void_p]
        self._workspace.restype = ctypes.c_int64

    def dims(self, **sizes: int) -> ctypes.Array:
        """The dimensions array (`slot` is then set before each step)."""
        return (ctypes.c_int64 * len(self.DIMS))(*(sizes[name] for name in self.DIMS))

    def layer_table(self, layers: Sequence[dict[str, torch.Tensor | None]]) -> ctypes.Array:
        """Every layer's tensors as one pointer table; the tensors must outlive it (the caller keeps them)."""
        pointers = [_pointer(layer[name]) for layer in layers for name in self.LAYER_TENSORS]
        return (ctypes.c_void_p * len(pointers))(*pointers)

    def workspace(self, dims: ctypes.Array) -> torch.Tensor:
        return torch.empty(self._workspace(dims), dtype=torch.float32)

    def __call__(self, dims: ctypes.Array, eps: float, scale: float, layer_table: ctypes.Array,
                 tokens: torch.Tensor, positions: torch.Tensor, embed: torch.Tensor, final_norm: torch.Tensor,
                 head: torch.Tensor, head_bias: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                 attention_bias: torch.Tensor, workspace: torch.Tensor, logits: torch.Tensor) -> None:
        status = self._function(dims, eps, scale, layer_table, tokens.data_ptr(), positions.data_ptr(),
                                embed.data_ptr(), final_norm.data_ptr(), head.data_ptr(), _pointer(head_bias),
                                cos.data_ptr(), sin.data_ptr(), attention_bias.data_ptr(), workspace.data_ptr(),
                                logits.data_ptr())
        if status != 0:
            raise ValueError(f"decode_step refused {self.STATUS.get(status, f'status {status}')}: "
                             f"tokens {tokens.tolist()}, positions {positions.tolist()}, "
                             f"dims {dict(zip(self.DIMS, dims))}")


def unavailable_reason() -> str | None:
    """Why the kernels cannot be built here, or None when they can be tried."""
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
def library() -> ctypes.CDLL | None:
    """The kernels' shared library, built on first use; None (once logged) where it cannot be had."""
    reason = unavailable_reason()
    if reason is None:
        try:
            return ctypes.CDLL(str(_build()))
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("CPU decoding uses torch: building %s failed: %s", SOURCE.name, err)
            return None
    log.info("CPU decoding uses torch: %s", reason)
    return None


def kernel() -> SkinnyMatmul | None:
    lib = library()
    return None if lib is None else SkinnyMatmul(lib)


def decode_step() -> DecodeStep | None:
    lib = library()
    return None if lib is None else DecodeStep(lib)


def _build() -> Path:
    """The shared library for this source and these flags, compiled once into the cache (atomically, so that
    concurrent processes never load a half-written file)."""
    command = (compiler(), *FLAGS, *LIBRARIES)
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(command).encode()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"cpu_kernels-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run([compiler(), *FLAGS, str(SOURCE), "-o", str(built), *LIBRARIES],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise subprocess.SubprocessError(result.stderr.strip() or f"{compiler()} exited {result.returncode}")
        os.replace(built, target)
    return target
