"""The model side of on-policy sampling: a prompt pass, then one token per row per step.

Two decoders share one interface (`start` from a `PromptPass`, or `prefill` to take one; then `step`):

- `StaticCacheDecoder`, for Llama-family models (Llama, Qwen2): a static KV cache and a decode step written out
  layer by layer in torch, with none of the generic forward's per-call work (mask building, cache bookkeeping,
  output objects). On CUDA the step is captured once per rollout as a CUDA graph, so a step costs one launch
  instead of hundreds.
  On CPU in float32, when the optional package `sdft-cpu-kernels` is installed (`make kernels`: a C++ extension
  built at install time, nothing is compiled here), the step is instead one call into its `DecodeStep`, over the
  same weights and cache: a few rows against every weight stream faster there than in torch's products, and the
  step's few hundred small ops cost no dispatch.
- `GenericDecoder`: any other model (LoRA adapters, other architectures, wrappers), through its own forward with
  a dynamic cache.

Both start from the model's own forward over the prompts (every padding and attention rule is the model's), and
both sample with the numerics of the training forward, which is what the samples are trained under: in float32,
or under autocast the products and attention (torch's SDPA) in the autocast dtype on a float32 residual stream,
norms and rotary embedding in float32, and the output head in float32 as the loss computes it. On CPU under bf16
autocast the static-cache step gives the training forward's logits bit for bit where the products' rounding does
not depend on their shape (torch's own kernels); where the library picks a kernel by shape (oneDNN on CPUs with
bf16 instructions) a few bf16 results round the other way (tests/core/test_decoding.py). A decoder that ran
everything in bf16 would sample from a measurably different policy than the one it trains.
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

log = logging.getLogger(__name__)

STATIC_CACHE_MODEL_TYPES = ("llama", "qwen2")
# Up to this many rows the CPU kernel's step is faster than the torch step (benchmarks/decode_step.py)
CPU_KERNEL_MAX_ROWS = 16
_LAYER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def static_cache_unsupported_reason(model: nn.Module) -> str | None:
    """Why `model` must use the generic decoder, or None when the static-cache decoder applies."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in STATIC_CACHE_MODEL_TYPES:
        return f"model type {model_type!r} (the static-cache decoder covers {', '.join(STATIC_CACHE_MODEL_TYPES)})"
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


def make_decoder(model: nn.Module, rows: int, max_length: int, *, cuda_graphs: bool = True):
    """The static-cache decoder where the model allows it, else the generic one."""
    if static_cache_unsupported_reason(model) is None:
        return StaticCacheDecoder(model, rows, max_length, cuda_graphs=cuda_graphs)
    return GenericDecoder(model)


@functools.cache
def cpu_kernels():
    """The optional compiled CPU kernels (package `sdft-cpu-kernels`, import `sdft_cpu_kernels`), or None when
    they are not installed or this CPU cannot run them (no AVX2/FMA). They were compiled when installed."""
    try:
        import sdft_cpu_kernels
    except ImportError:
        return None
    return sdft_cpu_kernels if sdft_cpu_kernels.supported() else None


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


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The output head in float32 whatever autocast is on: a bf16 product there would put percent-level errors
    into the logits that the loss, its gradient and the sampler all read."""
    with torch.autocast(hidden.device.type, enabled=False):
        return F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())


@dataclass
class PromptPass:
    """The model's forward over left-padded prompts, where decoding starts: the KV cache of every prompt position
    and, at the last one, the final hidden state and the float32 logits (detached). Taken with gradients, it is
    also the prompt part of the student's training forward (see `Trainer`), which then runs only the completion."""

    prompt_ids: torch.Tensor  # [rows, width]
    prompt_mask: torch.Tensor  # [rows, width]
    cache: Any  # transformers' DynamicCache
    last_hidden: torch.Tensor  # [rows, hidden]
    logits: torch.Tensor  # [rows, vocab]


def last_logits(model: nn.Module, out) -> torch.Tensor:
    """A forward's logits at the last position in float32: the model's own, or under autocast the head again in
    float32 on the final hidden state (`output_hidden_states=True`), as the loss computes it."""
    if not torch.is_autocast_enabled(out.logits.device.type):
        return out.logits[:, -1].detach().float()
    head = model.get_output_embeddings()
    return head_logits(out.hidden_states[-1][:, -1].detach(), head.weight.detach(), getattr(head, "bias", None))


def prompt_pass(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> PromptPass:
    """The model's own forward over the prompts (every padding and attention rule is the model's), with or
    without gradients as the caller runs it."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids(prompt_mask),
        **cache_argument(model, cache),
        use_cache=True,
        logits_to_keep=1,
        output_hidden_states=True,
    )
    return PromptPass(prompt_ids, prompt_mask, cache, out.hidden_states[-1][:, -1], last_logits(model, out))


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

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(self.attention_mask[:, :1])], dim=1)
        self.positions = self.positions[:, -1:] + 1
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attention_mask,
            position_ids=self.positions,
            **cache_argument(self.model, self.cache),
            use_cache=True,
            output_hidden_states=torch.is_autocast_enabled(self.attention_mask.device.type),
        )
        return last_logits(self.model, out)


def _interleaved_pairs(head_dim: int) -> torch.Tensor:
    """The order [0, d/2, 1, d/2 + 1, ...]: each rotary pair (i, i + d/2) side by side, as one complex number."""
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half, head_dim)], dim=-1).flatten()


class StaticCacheDecoder(_Decoder):
    """Llama-family decoding with a static KV cache `keys`/`values` [layers][rows, kv_heads, max_length, head_dim].

    Weights are read from the model at construction (cast once to the compute dtype, as autocast would cast them
    on every call), so a decoder serves one rollout; build a new one after the weights change. Two rearrangements
    cut the ops per layer without changing a product: q, k and v are one product (their weights stacked), as are
    gate and up; and q and k rows are reordered within each head so that every rotary pair is adjacent, which
    makes the rotation one complex product (scores q.k do not change when q and k share a reordering; the cached
    keys use it too).

    `kernel` is the CPU kernel's step over these same tensors where it applies (see `_cpu_kernel`), else None.
    """

    def __init__(
        self, model: nn.Module, rows: int, max_length: int, *, cuda_graphs: bool = True, cpu_kernel: bool = True
    ):
        base, config = model.model, model.config
        self.model, self.max_length = model, max_length
        self.device = next(model.parameters()).device
        self.residual_dtype = next(model.parameters()).dtype
        self.dtype = self.residual_dtype  # the products' dtype
        if torch.is_autocast_enabled(self.device.type):
            self.dtype = torch.get_autocast_dtype(self.device.type)
        self.embed = base.embed_tokens.weight
        self.rotary = base.rotary_emb
        self.eps = config.rms_norm_eps
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = _head_dim(config)
        self.scale = getattr(base.layers[0].self_attn, "scaling", self.head_dim**-0.5)
        self.act = base.layers[0].mlp.act_fn
        self.q_width, self.kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.intermediate = base.layers[0].mlp.gate_proj.out_features
        self.pair_order = _interleaved_pairs(self.head_dim).to(self.device)
        self.layers = [
            {
                "input_norm": layer.input_layernorm.weight.detach(),
                "qkv": self._stacked(
                    [
                        (layer.self_attn.q_proj, self.heads),
                        (layer.self_attn.k_proj, self.kv_heads),
                        (layer.self_attn.v_proj, None),
                    ]
                ),
                "o": self._stacked([(layer.self_attn.o_proj, None)]),
                "post_attention_norm": layer.post_attention_layernorm.weight.detach(),
                "gate_up": self._stacked([(layer.mlp.gate_proj, None), (layer.mlp.up_proj, None)]),
                "down": self._stacked([(layer.mlp.down_proj, None)]),
            }
            for layer in base.layers
        ]
        self.final_norm = base.norm.weight.detach()
        self.head = model.lm_head.weight.detach(), model.lm_head.bias
        shape = (len(self.layers), rows, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Additive attention mask per row, broadcast over heads: 0 where a row may attend, -inf elsewhere (unwritten
        # slots, left padding)
        self.additive_mask = torch.full((rows, 1, 1, max_length), float("-inf"), dtype=self.dtype, device=self.device)
        self.length = 0
        self.use_graph = cuda_graphs and self.device.type == "cuda"
        self.graph = None
        self.kernel = self._cpu_kernel(rows) if cpu_kernel else None

    def _cpu_kernel(self, rows: int):
        """`sdft_cpu_kernels.DecodeStep` over this decoder's weights, cache and mask: float32 on CPU (no autocast),
        SiLU, widths that are multiples of 8, at most `CPU_KERNEL_MAX_ROWS` rows; None elsewhere."""
        kernels = cpu_kernels()
        widths = (self.embed.shape[1], self.head_dim, self.intermediate)
        if (
            kernels is None
            or self.device.type != "cpu"
            or self.dtype != torch.float32
            or self.residual_dtype != torch.float32
            or rows > CPU_KERNEL_MAX_ROWS
            or getattr(self.model.config, "hidden_act", None) not in ("silu", "swish")
            or any(width % 8 for width in widths)
        ):
            return None
        cos, sin = self.rotary(self.keys, torch.arange(self.max_length)[None])  # the model's own, by position
        half = self.head_dim // 2
        layers = [
            [w["input_norm"], *w["qkv"], *w["o"], w["post_attention_norm"], *w["gate_up"], *w["down"]]
            for w in self.layers
        ]
        return kernels.DecodeStep(
            embed=self.embed.detach(),
            layers=layers,
            final_norm=self.final_norm,
            head=self.head[0],
            head_bias=self.head[1],
            keys=self.keys,
            values=self.values,
            mask=self.additive_mask,
            cos=cos[0, :, :half].float().contiguous(),
            sin=sin[0, :, :half].float().contiguous(),
            heads=self.heads,
            eps=self.eps,
            scale=self.scale,
        )

    def _stacked(self, parts: list[tuple[nn.Linear, int | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The linears' weights (and biases: zeros for a linear without one, None if none has one) stacked, in the
        compute dtype. A part given with a head count (q, k) has its rows in rotary-pair order."""
        weights, biases = [], []
        for linear, heads in parts:
            weight = linear.weight.detach()
            bias = torch.zeros(linear.out_features, device=weight.device) if linear.bias is None else linear.bias
            bias = bias.detach()
            if heads is not None:
                weight = weight.view(heads, self.head_dim, -1)[:, self.pair_order].reshape(weight.shape)
                bias = bias.view(heads, self.head_dim)[:, self.pair_order].reshape(bias.shape)
            weights.append(weight)
            biases.append(bias)
        weight = torch.cat(weights).to(self.dtype)
        if all(linear.bias is None for linear, _ in parts):
            return weight, None
        return weight, torch.cat(biases).to(self.dtype)

    @torch.no_grad()
    def start(self, prompt: PromptPass) -> torch.Tensor:
        """Decode on from a prompt pass: its keys and values are copied into the static cache."""
        width = prompt.prompt_ids.shape[1]
        for index, layer in enumerate(prompt.cache.layers):
            self.keys[index, :, :, :width] = layer.keys[..., self.pair_order]
            self.values[index, :, :, :width] = layer.values
        rows = prompt.prompt_mask.shape[0]
        self.additive_mask[..., :width].masked_fill_(prompt.prompt_mask.bool().view(rows, 1, 1, width), 0.0)
        self.length = width
        self.positions = prompt.prompt_mask.sum(-1)  # the next token's position in each row
        return prompt.logits

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x.to(self.dtype), weight, bias)

    def _rms_norm(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The model's RMSNorm: in float32, times its weight, in the residual dtype."""
        h32 = h.float()
        normalized = h32 * h32.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()
        return weight * normalized.to(self.residual_dtype)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.length >= self.max_length:
            raise RuntimeError(f"the static cache holds {self.max_length} positions; all are used")
        self.additive_mask[..., self.length] = 0.0
        if self.kernel is not None:
            logits = self.kernel(tokens, self.positions, self.length)
        elif self.use_graph and (self.graph is not None or self._capture(tokens)):
            logits = self._graph_step(tokens)
        else:
            logits = self._step(tokens, self.positions, self.length, self.length + 1)
        self.positions = self.positions + 1
        self.length += 1
        return logits

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, slot, visible: int) -> torch.Tensor:
        """One decode step; `slot` (int, or a 1-element tensor under a graph) is the cache position written."""
        rows, kv_heads, head_dim = tokens.shape[0], self.kv_heads, self.head_dim
        rotating = self.heads + kv_heads  # queries and keys rotate together
        qk_width = self.q_width + self.kv_width
        with torch.autocast(self.device.type, enabled=False):
            h = F.embedding(tokens, self.embed)  # [rows, hidden], the residual stream
            cos, sin = self.rotary(h, positions[:, None])  # [rows, 1, head_dim]: one position per row
            half = head_dim // 2
            rotation = torch.complex(cos[..., :half].float(), sin[..., :half].float())  # [rows, 1, head_dim / 2]
            mask = self.additive_mask[..., :visible]
            for index, w in enumerate(self.layers):
                qkv = self._linear(self._rms_norm(h, w["input_norm"]), *w["qkv"])
                pairs = qkv[:, :qk_width].unflatten(-1, (rotating, half, 2)).float()
                qk = torch.view_as_real(torch.view_as_complex(pairs) * rotation).to(self.dtype)
                k = qk[:, self.heads :].flatten(-2)  # [rows, kv_heads, head_dim]
                v = qkv[:, qk_width:].view(rows, kv_heads, head_dim)
                keys, values = self.keys[index], self.values[index]
                if isinstance(slot, int):
                    keys.select(2, slot).copy_(k)
                    values.select(2, slot).copy_(v)
                else:
                    keys.index_copy_(2, slot, k[:, :, None])
                    values.index_copy_(2, slot, v[:, :, None])
                # the training forward's attention kernel, so that its rounding is the training forward's too
                attended = F.scaled_dot_product_attention(
                    qk[:, : self.heads].flatten(-2)[:, :, None],
                    keys[:, :, :visible],
                    values[:, :, :visible],
                    attn_mask=mask,
                    scale=self.scale,
                    enable_gqa=kv_heads != self.heads,
                )  # [rows, heads, 1, dim]
                h = h + self._linear(attended.reshape(rows, -1), *w["o"]).to(self.residual_dtype)
                gate, up = self._linear(self._rms_norm(h, w["post_attention_norm"]), *w["gate_up"]).split(
                    self.intermediate, -1
                )
                h = h + self._linear(self.act(gate) * up, *w["down"]).to(self.residual_dtype)
            return head_logits(self._rms_norm(h, self.final_norm), *self.head)

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
