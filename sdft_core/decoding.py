"""The model side of on-policy sampling: prefill a batch of prompts, then one token per row per step.

Three decoders share one interface (`prefill`, or `start` from a prompt pass already taken; then `step`):

- `NativeDecoder`, for Llama-family models (Llama, Qwen2) in float32 on an x86-64 CPU with AVX2, at up to
  `NATIVE_MAX_ROWS` rows: a static KV cache and each step one call into `cpu_kernels`' `decode_step`, which
  reads the model's own weights in place. On CPU a decode step is a chain of skinny matrix products (a few rows
  against each weight), as fast as the weights stream from memory, plus a few hundred small ops that in torch
  each cost a dispatch; in the kernel they cost next to nothing.
- `LeanDecoder`, for the same models elsewhere (CUDA, more rows, other dtypes): a static KV cache and a decode
  step written out layer by layer in torch, with none of the generic forward's per-call work (mask building,
  cache bookkeeping, output objects). On CUDA the step is captured once per rollout as a CUDA graph, so a step
  costs one launch instead of hundreds. On CPU its products run as `weight @ x.T`, which streams the weights 2-3x
  faster than `x @ weight.T` in torch (or in `cpu_kernels`' skinny product where that takes them).
- `GenericDecoder`: any other model (LoRA adapters, other architectures, wrappers), through its own forward with
  a dynamic cache.

All start from a `PromptPass`, the model's own forward over the prompts (so every padding and attention rule is
the model's), and all give the same logits up to floating-point summation order.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels

log = logging.getLogger(__name__)

LEAN_MODEL_TYPES = ("llama", "qwen2")
_SKINNY_ROWS = 32  # up to this many rows, CPU products run as weight @ x.T
# Up to this many rows the native step beats the lean one on the embedded model (2-core EPYC: 23 vs 38 ms per step
# at 4 rows, 114 vs 132 at 32, 208 vs 234 at 64; even at 96, slower at 128: benchmarks/decode_step.py).
NATIVE_MAX_ROWS = 64
_LAYER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lean_unsupported_reason(model: nn.Module) -> str | None:
    """Why `model` must use the generic decoder, or None when the lean decoder applies."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LEAN_MODEL_TYPES:
        return f"model type {model_type!r} (lean decoding covers {', '.join(LEAN_MODEL_TYPES)})"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or getattr(model, "lm_head", None) is None:
        return "not a decoder-only causal LM with model.layers and lm_head"
    for layer in layers:
        for name in _LAYER_LINEARS:
            module = layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp
            linear = getattr(module, name, None)
            if type(linear) is not nn.Linear:  # noqa: E721 - LoRA and other wrappers subclass or wrap Linear
                return f"{name} is a {type(linear).__name__}, not a plain Linear (e.g. LoRA adapters)"
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return "sharded (DTensor) parameters"
    return None


def native_unsupported_reason(model: nn.Module, rows: int) -> str | None:
    """Why `model` cannot decode `rows` rows with `NativeDecoder`, or None when it can."""
    reason = lean_unsupported_reason(model)
    if reason is not None:
        return reason
    if rows > NATIVE_MAX_ROWS:
        return f"{rows} rows (the native step takes up to {NATIVE_MAX_ROWS}; MKL's products are faster beyond)"
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        return "parameters that are not float32 on the CPU"
    config, base = model.config, model.model
    if getattr(config, "hidden_act", None) not in ("silu", "swish"):
        return f"activation {getattr(config, 'hidden_act', None)!r} (the CPU step computes SiLU)"
    head_dim = _head_dim(config)
    widths = {"hidden": config.hidden_size, "head": head_dim, "intermediate": config.intermediate_size}
    if any(width % 8 for width in widths.values()):
        return f"widths {widths} (the CPU step takes multiples of 8)"
    if model.lm_head.weight.shape[0] != base.embed_tokens.weight.shape[0]:
        return "an output head and an embedding of different vocabularies"
    if not all(p.is_contiguous() for p in model.parameters()):
        return "non-contiguous parameters"
    if cpu_kernels.library() is None:
        return f"the CPU kernels are unavailable ({cpu_kernels.unavailable_reason() or 'their build failed'})"
    return None


def make_decoder(model: nn.Module, rows: int, max_length: int, *, cuda_graphs: bool = True):
    """The native decoder when the model and the machine allow it, else the lean one, else the generic one."""
    if native_unsupported_reason(model, rows) is None:
        return NativeDecoder(model, rows, max_length)
    if lean_unsupported_reason(model) is None:
        return LeanDecoder(model, rows, max_length, cuda_graphs=cuda_graphs)
    return GenericDecoder(model)


def cache_argument(model: nn.Module, cache) -> dict:
    """The KV cache as the model's forward names it: `cache` (newer transformers), else `past_key_values`.

    Wrappers that take **kwargs (PEFT, test doubles) follow the installed transformers' own models."""
    parameters = inspect.signature(type(model).forward).parameters
    if "cache" not in parameters and "past_key_values" not in parameters:
        return {_transformers_cache_name(): cache}
    return {"cache" if "cache" in parameters else "past_key_values": cache}


@functools.cache
def _transformers_cache_name() -> str:
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class PromptPass:
    """The model's forward over left-padded prompts, where decoding starts: the KV cache of every prompt position
    and, at the last one, the final hidden state and the logits (detached). Taken with gradients, it is also the
    prompt part of the student's training forward (see `Trainer`), which then runs only the completion."""

    prompt_ids: torch.Tensor  # [rows, width]
    prompt_mask: torch.Tensor  # [rows, width]
    cache: Any  # transformers' DynamicCache
    last_hidden: torch.Tensor  # [rows, hidden]
    logits: torch.Tensor  # [rows, vocab]


def prompt_pass(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> PromptPass:
    """The model's own forward over the prompts (every padding and attention rule is the model's), with or
    without gradients as the caller runs it."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                **cache_argument(model, cache), use_cache=True, logits_to_keep=1, output_hidden_states=True)
    return PromptPass(prompt_ids, prompt_mask, cache, out.hidden_states[-1][:, -1], out.logits[:, -1].detach())


class _Decoder:
    """Both decoders: `prefill` runs the model's forward over the prompts, then `start`s decoding from it."""

    model: nn.Module

    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.start(prompt_pass(self.model, prompt_ids, prompt_mask))


class GenericDecoder(_Decoder):
    """Any causal LM through its own forward and a dynamic KV cache."""

    def __init__(self, model: nn.Module):
        self.model = model

    def start(self, prompt: PromptPass) -> torch.Tensor:
        """Decode on from a prompt pass; its cache is left as it is (decoding appends to a detached copy)."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        for index, layer in enumerate(prompt.cache.layers):
            self.cache.update(layer.keys.detach(), layer.values.detach(), index)
        self.attention_mask = prompt.prompt_mask
        self.positions = position_ids(prompt.prompt_mask)
        return prompt.logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(self.attention_mask[:, :1])], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return self.model(input_ids=tokens[:, None], attention_mask=self.attention_mask,
                          position_ids=self.positions, **cache_argument(self.model, self.cache),
                          use_cache=True).logits[:, -1]


class _StaticCacheDecoder(_Decoder):
    """Decoders with a static KV cache `keys`/`values` [layers][rows, kv_heads, max_length, head_dim] and an
    additive attention `bias` [rows, ..., max_length] (0 where a row may attend, -inf elsewhere)."""

    keys: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor
    key_order: torch.Tensor | slice = slice(None)  # the cached keys' order within a head

    @torch.no_grad()
    def start(self, prompt: PromptPass) -> torch.Tensor:
        """Decode on from a prompt pass: its keys and values are copied into the static cache."""
        width = prompt.prompt_ids.shape[1]
        for index, layer in enumerate(prompt.cache.layers):
            self.keys[index, :, :, :width] = layer.keys[..., self.key_order]
            self.values[index, :, :, :width] = layer.values
        rows = prompt.prompt_mask.shape[0]
        attends = prompt.prompt_mask.bool().view(rows, *[1] * (self.bias.dim() - 2), width)
        self.bias[..., :width].masked_fill_(attends, 0.0)
        self.length = width
        self.positions = prompt.prompt_mask.sum(-1)  # the next token's position in each row
        return prompt.logits

    def _check_room(self) -> None:
        if self.length >= self.max_length:
            raise RuntimeError(f"the static cache holds {self.max_length} positions; all are used")


class NativeDecoder(_StaticCacheDecoder):
    """Llama-family decoding on an x86-64 CPU (see `native_unsupported_reason`): a static KV cache
    [layers][rows, kv_heads, max_length, head_dim] and each step one call into `cpu_kernels`' `decode_step`.

    The kernel reads the model's parameters where they are (no copies), so a decoder serves one rollout: build a
    new one after the weights change."""

    def __init__(self, model: nn.Module, rows: int, max_length: int):
        base, config = model.model, model.config
        self.model, self.rows, self.max_length = model, rows, max_length
        self.kernel = cpu_kernels.decode_step()
        if self.kernel is None:
            raise RuntimeError(f"the CPU kernels are unavailable: {cpu_kernels.unavailable_reason()}")
        head_dim, kv_heads = _head_dim(config), config.num_key_value_heads
        shape = (len(base.layers), rows, kv_heads, max_length, head_dim)
        self.keys, self.values = torch.zeros(shape), torch.zeros(shape)
        self.bias = torch.full((rows, max_length), float("-inf"))
        cos, sin = base.rotary_emb(self.keys, torch.arange(max_length)[None])  # the model's own, by position
        self.cos, self.sin = cos[0].float().contiguous(), sin[0].float().contiguous()

        def detached(tensor):
            return None if tensor is None else tensor.detach()

        self.layer_tensors = []  # held here: the kernel's pointer table points into them
        for index, layer in enumerate(base.layers):
            attn, mlp = layer.self_attn, layer.mlp
            linears = dict(q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, o=attn.o_proj, gate=mlp.gate_proj,
                           up=mlp.up_proj, down=mlp.down_proj)
            tensors = {name: linear.weight.detach() for name, linear in linears.items()}
            tensors.update({f"{name}_bias": detached(linear.bias) for name, linear in linears.items()})
            tensors.update(input_norm=layer.input_layernorm.weight.detach(),
                           post_attention_norm=layer.post_attention_layernorm.weight.detach(),
                           keys=self.keys[index], values=self.values[index])
            self.layer_tensors.append(tensors)
        self.table = self.kernel.layer_table(self.layer_tensors)
        self.embed, self.final_norm = base.embed_tokens.weight.detach(), base.norm.weight.detach()
        self.head, self.head_bias = model.lm_head.weight.detach(), detached(model.lm_head.bias)
        self.eps, self.scale = config.rms_norm_eps, getattr(base.layers[0].self_attn, "scaling", head_dim ** -0.5)
        self.dims = self.kernel.dims(rows=rows, hidden=config.hidden_size, heads=config.num_attention_heads,
                                     kv_heads=kv_heads, head_dim=head_dim, intermediate=config.intermediate_size,
                                     vocab=self.head.shape[0], max_length=max_length, layers=len(base.layers),
                                     slot=0, threads=torch.get_num_threads())
        self.workspace = self.kernel.workspace(self.dims)
        self.length = 0

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_room()
        self.dims[self.kernel.DIMS.index("slot")] = self.length  # the step opens this slot to attention
        logits = torch.empty(self.rows, self.head.shape[0])
        self.kernel(self.dims, self.eps, self.scale, self.table, tokens.to(torch.int64).contiguous(),
                    self.positions, self.embed, self.final_norm, self.head, self.head_bias, self.cos, self.sin,
                    self.bias, self.workspace, logits)
        self.positions += 1
        self.length += 1
        return logits


def _skinny_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for a few rows of x on CPU, as weight @ x.T; the result is a transposed (column-major) view."""
    return torch.mm(weight, x.T).T


def _interleaved_pairs(head_dim: int) -> torch.Tensor:
    """The order [0, d/2, 1, d/2 + 1, ...]: each rotary pair (i, i + d/2) side by side, as one complex number."""
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half, head_dim)], dim=-1).flatten()


class LeanDecoder(_StaticCacheDecoder):
    """Llama-family decoding with a static KV cache [layers][rows, kv_heads, max_length, head_dim].

    Weights are read from the model at construction (cast once to the autocast dtype under CUDA autocast), so a
    decoder serves one rollout; build a new one after the weights change. The copies are arranged for few ops
    per layer, with the same logits:
    - each RMSNorm weight, and the sqrt(hidden size) that turns a norm into a root mean square, is multiplied
      into the columns of the product it feeds (qkv, gate_up, the head);
    - the attention scale 1/sqrt(head_dim) is multiplied into the q rows;
    - q and k rows are reordered within each head so that every rotary pair is adjacent: the rotation is then one
      complex product. Scores q.k do not change when q and k share a reordering; the cached keys use it too.
    """

    def __init__(self, model: nn.Module, rows: int, max_length: int, *, cuda_graphs: bool = True):
        base, config = model.model, model.config
        self.model, self.max_length = model, max_length
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        if self.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
            self.dtype = torch.get_autocast_dtype("cuda")
        self.embed = base.embed_tokens.weight  # a lookup: rows of it are cast, not the table
        self.rotary = base.rotary_emb
        self.eps = config.rms_norm_eps
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = _head_dim(config)
        self.hidden_size = config.hidden_size
        self.act = base.layers[0].mlp.act_fn
        self.q_width, self.kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.intermediate = base.layers[0].mlp.gate_proj.out_features
        self.pair_order = self.key_order = _interleaved_pairs(self.head_dim).to(self.device)
        self.layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            # One product for q, k and v and one for gate and up: fewer, larger products per step.
            self.layers.append({
                "qkv": self._fused([(attn.q_proj, self.heads), (attn.k_proj, self.kv_heads), (attn.v_proj, None)],
                                   layer.input_layernorm.weight, query_scale=self.head_dim ** -0.5),
                "o": self._weights(attn.o_proj),
                "gate_up": self._fused([(mlp.gate_proj, None), (mlp.up_proj, None)],
                                       layer.post_attention_layernorm.weight),
                "down": self._weights(mlp.down_proj),
            })
        self.final_norm = (base.norm.weight.detach().float() * self.hidden_size ** 0.5).to(self.dtype)
        self.head = self._weights(model.lm_head)
        shape = (len(self.layers), rows, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Additive attention bias per (row, KV head): 0 where a row may attend, -inf elsewhere (unwritten slots,
        # left padding).
        self.bias = torch.full((rows, self.kv_heads, 1, max_length), float("-inf"), dtype=self.dtype,
                               device=self.device)
        self.length = 0
        self.skinny = self.device.type == "cpu" and rows <= _SKINNY_ROWS
        use_kernel = self.skinny and rows <= cpu_kernels.MAX_ROWS and self.dtype == torch.float32
        kernel = cpu_kernels.kernel() if use_kernel else None
        weights = [weight for layer in self.layers for weight, _ in layer.values()] + [self.head[0]]
        # Decided once: every product of a step then runs in the kernel (which still checks each call).
        self.kernel = kernel if kernel is not None and all(map(kernel.takes_weight, weights)) else None
        self.use_graph = cuda_graphs and self.device.type == "cuda"
        self.graph = None

    def _weights(self, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = None if linear.bias is None else linear.bias.detach().to(self.dtype)
        return linear.weight.detach().to(self.dtype), bias

    def _fused(self, parts: list[tuple[nn.Linear, int | None]], norm_weight: torch.Tensor, query_scale: float = 1.0):
        """The linears' weights stacked, times sqrt(hidden) x the preceding norm's weight per column, in the compute
        dtype. A part given with a head count (q, k) has its rows in rotary-pair order; the first part's rows are
        times `query_scale`. Biases likewise (zeros for linears without one), or None if none has one."""
        weights, biases = [], []
        for linear, heads in parts:
            weight, bias = linear.weight.detach(), linear.bias
            bias = torch.zeros(linear.out_features, device=weight.device) if bias is None else bias.detach().float()
            if heads is not None:
                order = self.pair_order
                weight = weight.view(heads, self.head_dim, -1)[:, order].reshape(weight.shape)
                bias = bias.view(heads, self.head_dim)[:, order].reshape(bias.shape)
            weights.append(weight)
            biases.append(bias)
        # In place on the one new copy: a rollout rebuilds these from every layer's weights.
        weight = torch.cat(weights).float().mul_(norm_weight.detach().float() * self.hidden_size ** 0.5)
        first = parts[0][0].out_features
        weight[:first].mul_(query_scale)
        biases[0] = biases[0] * query_scale
        weight = weight.to(self.dtype)
        if all(linear.bias is None for linear, _ in parts):
            return weight, None
        return weight, torch.cat(biases).to(self.dtype)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kernel is not None:
            out = self.kernel(x, weight)
        elif self.skinny:  # a column-major view; elementwise ops and .contiguous() make it row-major
            out = _skinny_linear(x, weight)
        else:
            out = F.linear(x, weight)
        return out if bias is None else out + bias

    def _normalized(self, h: torch.Tensor) -> torch.Tensor:
        """h / sqrt(|h|^2 + hidden x eps), in float32 like the model's RMSNorm: its root mean square is
        |h| / sqrt(hidden), and that sqrt(hidden) and the norm's weight are in the next product's columns."""
        h32 = h.float()
        norm = torch.linalg.vector_norm(h32, dim=-1, keepdim=True)
        return (h32 * norm.square_().add_(self.hidden_size * self.eps).rsqrt_()).to(self.dtype)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_room()
        self.bias[..., self.length] = 0.0
        if self.use_graph and (self.graph is not None or self._capture(tokens)):
            logits = self._graph_step(tokens)
        else:
            logits = self._step(tokens, self.positions, self.length, self.length + 1)
        self.positions = self.positions + 1
        self.length += 1
        return logits

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, slot, visible: int) -> torch.Tensor:
        """One decode step; `slot` (int, or a 1-element tensor under a graph) is the cache position written."""
        rows, kv_heads, head_dim = tokens.shape[0], self.kv_heads, self.head_dim
        groups = self.heads // kv_heads
        rotating = self.heads + kv_heads  # queries and keys rotate together
        qk_width = self.q_width + self.kv_width
        with torch.autocast(self.device.type, enabled=False):
            h = F.embedding(tokens, self.embed).to(self.dtype)  # [rows, hidden]
            cos, sin = self.rotary(h, positions[:, None])  # [rows, 1, head_dim]: one position per row
            half = head_dim // 2
            rotation = torch.complex(cos[..., :half].float(), sin[..., :half].float())  # [rows, 1, head_dim / 2]
            bias = self.bias.view(rows * kv_heads, 1, -1)[..., :visible]
            for index, w in enumerate(self.layers):
                qkv = self._linear(self._normalized(h), *w["qkv"]).contiguous()
                pairs = qkv[:, :qk_width].unflatten(-1, (rotating, half, 2)).float()
                qk = torch.view_as_real(torch.view_as_complex(pairs) * rotation).to(self.dtype)
                k = qk[:, self.heads:].flatten(-2)  # [rows, kv_heads, head_dim]
                v = qkv[:, qk_width:].view(rows, kv_heads, head_dim)
                keys, values = self.keys[index], self.values[index]
                if isinstance(slot, int):
                    keys.select(2, slot).copy_(k)
                    values.select(2, slot).copy_(v)
                else:
                    keys.index_copy_(2, slot, k[:, :, None])
                    values.index_copy_(2, slot, v[:, :, None])
                # One query position: three batched products beat SDPA's masked grouped-query path on CPU
                q = qk[:, :self.heads].reshape(rows * kv_heads, groups, head_dim)  # query heads by KV head
                scores = torch.baddbmm(bias, q, keys.view(rows * kv_heads, -1, head_dim)[:, :visible].transpose(1, 2))
                attended = torch.bmm(scores.softmax(-1), values.view(rows * kv_heads, -1, head_dim)[:, :visible])
                h = h + self._linear(attended.view(rows, -1), *w["o"])
                gate, up = self._linear(self._normalized(h), *w["gate_up"]).split(self.intermediate, -1)
                h = h + self._linear((self.act(gate) * up).contiguous(), *w["down"])
            return self._linear(self._normalized(h) * self.final_norm, *self.head)

    def _capture(self, tokens: torch.Tensor) -> bool:
        """Capture the step over the whole cache (masked) as a CUDA graph; False (and eager steps) if it fails."""
        self.static_tokens = tokens.clone()
        self.static_positions = self.positions.clone()
        self.static_slot = torch.tensor([self.length], device=self.device)

        def full_step():
            return self._step(self.static_tokens, self.static_positions, self.static_slot, self.max_length)

        try:
            self.graph, self.static_logits = self._record(full_step)
        except RuntimeError as err:
            log.warning("CUDA graph capture failed, decoding without it: %s", err)
            self.use_graph = False
            return False
        return True

    @staticmethod
    def _record(step) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """`step` captured as a CUDA graph, and the tensor its replays write their output to."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (lazy inits, workspaces); writes only this slot
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = step()
        return graph, output

    def _graph_step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.static_tokens.copy_(tokens)
        self.static_positions.copy_(self.positions)
        self.static_slot.fill_(self.length)
        self.graph.replay()
        return self.static_logits.clone()  # the next replay overwrites static_logits
