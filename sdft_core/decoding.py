"""The model side of on-policy sampling: prefill a batch of prompts, then one token per row per step.

Two decoders share one interface (`prefill`, `step`):

- `LeanDecoder`, for Llama-family models (Llama, Qwen2) whose projections are plain `nn.Linear`: a static KV
  cache and a decode step written out layer by layer, with none of the generic forward's per-call work (mask
  building, cache bookkeeping, output objects). On CPU a decode step is a chain of skinny matrix products
  (a few rows against each weight) and `weight @ x.T` streams those weights 2-3x faster than `x @ weight.T`.
  On CUDA the step is captured once per rollout as a CUDA graph, so a step costs one launch instead of hundreds.
- `GenericDecoder`: any other model (LoRA adapters, other architectures, wrappers), through its own forward with
  a dynamic cache.

Both run the prompt through the model's own forward (so every padding and attention rule is the model's), and
both give the same logits up to floating-point summation order.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

LEAN_MODEL_TYPES = ("llama", "qwen2")
_SKINNY_ROWS = 32  # up to this many rows, CPU products run as weight @ x.T
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


def make_decoder(model: nn.Module, rows: int, max_length: int, *, cuda_graphs: bool = True):
    """The lean decoder when the model allows it, else the generic one."""
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


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class GenericDecoder:
    """Any causal LM through its own forward and a dynamic KV cache."""

    def __init__(self, model: nn.Module):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)

    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        self.attention_mask = prompt_mask
        self.positions = position_ids(prompt_mask)
        return self.model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=self.positions,
                          **cache_argument(self.model, self.cache), use_cache=True, logits_to_keep=1).logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(self.attention_mask[:, :1])], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return self.model(input_ids=tokens[:, None], attention_mask=self.attention_mask,
                          position_ids=self.positions, **cache_argument(self.model, self.cache),
                          use_cache=True).logits[:, -1]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if x.device.type == "cpu" and rows <= _SKINNY_ROWS:
        # The result is a transposed view; callers' elementwise ops make the next input row-major again.
        out = torch.mm(weight, x.reshape(rows, x.shape[-1]).contiguous().T).T.view(*x.shape[:-1], weight.shape[0])
    else:
        out = F.linear(x, weight)
    return out if bias is None else out + bias


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LeanDecoder:
    """Llama-family decoding with a static KV cache [layers][rows, kv_heads, max_length, head_dim].

    Weights are read from the model at construction (cast once to the autocast dtype under CUDA autocast), so a
    decoder serves one rollout; build a new one after the weights change.
    """

    def __init__(self, model: nn.Module, rows: int, max_length: int, *, cuda_graphs: bool = True):
        base, config = model.model, model.config
        self.model, self.max_length = model, max_length
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        if self.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
            self.dtype = torch.get_autocast_dtype("cuda")
        cast = self._cast
        self.embed = base.embed_tokens.weight  # a lookup: rows of it are cast, not the table
        self.rotary = base.rotary_emb
        self.eps = config.rms_norm_eps
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.act = base.layers[0].mlp.act_fn
        self.layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            # One product for q, k and v and one for gate and up: fewer, larger products per step.
            self.layers.append({
                "norm1": cast(layer.input_layernorm.weight), "norm2": cast(layer.post_attention_layernorm.weight),
                "qkv": self._fused(attn.q_proj, attn.k_proj, attn.v_proj),
                "o": (cast(attn.o_proj.weight), cast(attn.o_proj.bias)),
                "gate_up": self._fused(mlp.gate_proj, mlp.up_proj),
                "down": (cast(mlp.down_proj.weight), cast(mlp.down_proj.bias)),
            })
        self.q_width, self.kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.intermediate = base.layers[0].mlp.gate_proj.out_features
        self.final_norm = cast(base.norm.weight)
        self.head = (cast(model.lm_head.weight), cast(model.lm_head.bias))
        shape = (len(self.layers), rows, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Additive attention bias: 0 where a row may attend, -inf elsewhere (unwritten slots, left padding).
        self.bias = torch.full((rows, 1, 1, max_length), float("-inf"), dtype=self.dtype, device=self.device)
        self.length = 0
        self.use_graph = cuda_graphs and self.device.type == "cuda"
        self.graph = None

    def _cast(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.detach().to(self.dtype)

    def _fused(self, *linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The linears' weights stacked (a copy in the compute dtype); biases too, zeros for those without."""
        weight = torch.cat([linear.weight.detach().to(self.dtype) for linear in linears])
        if all(linear.bias is None for linear in linears):
            return weight, None
        bias = torch.cat([self._cast(linear.bias) if linear.bias is not None
                          else weight.new_zeros(linear.out_features) for linear in linears])
        return weight, bias

    @torch.no_grad()
    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        generic = GenericDecoder(self.model)  # the model's own forward fills a dynamic cache; we copy it in
        logits = generic.prefill(prompt_ids, prompt_mask)
        cache = generic.cache
        width = prompt_ids.shape[1]
        for index, layer in enumerate(cache.layers):
            self.keys[index, :, :, :width] = layer.keys
            self.values[index, :, :, :width] = layer.values
        self.bias[:, 0, 0, :width].masked_fill_(prompt_mask.bool(), 0.0)
        self.length = width
        self.positions = prompt_mask.sum(-1)  # the next token's position in each row
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.length >= self.max_length:
            raise RuntimeError(f"the static cache holds {self.max_length} positions; all are used")
        self.bias[:, 0, 0, self.length] = 0.0
        if self.use_graph and (self.graph is not None or self._capture(tokens)):
            logits = self._graph_step(tokens)
        else:
            logits = self._step(tokens, self.positions, self.length, self.length + 1)
        self.positions = self.positions + 1
        self.length += 1
        return logits

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, slot, visible: int) -> torch.Tensor:
        """One decode step; `slot` (int, or a 1-element tensor under a graph) is the cache position written."""
        rows = tokens.shape[0]
        with torch.autocast(self.device.type, enabled=False):
            h = F.embedding(tokens, self.embed).to(self.dtype)  # [rows, hidden]
            cos, sin = self.rotary(h, positions[:, None])  # [rows, 1, head_dim]: one position per row
            bias = self.bias[..., :visible]
            groups = self.heads // self.kv_heads
            heads = self.heads + self.kv_heads  # queries and keys rotate together
            norm = (h.shape[-1],)
            for index, w in enumerate(self.layers):
                qkv = _linear(F.rms_norm(h, norm, w["norm1"], self.eps), *w["qkv"])
                qk = _rotate(qkv[:, :self.q_width + self.kv_width].reshape(rows, heads, self.head_dim), cos, sin)
                q = qk[:, :self.heads].view(rows, self.kv_heads, groups, self.head_dim)  # query heads by KV head
                k = qk[:, self.heads:, None]  # [rows, kv_heads, 1, head_dim]
                v = qkv[:, self.q_width + self.kv_width:].reshape(rows, self.kv_heads, 1, self.head_dim)
                keys, values = self.keys[index], self.values[index]
                if isinstance(slot, int):
                    keys[:, :, slot] = k[:, :, 0]
                    values[:, :, slot] = v[:, :, 0]
                else:
                    keys.index_copy_(2, slot, k)
                    values.index_copy_(2, slot, v)
                # One query position: four plain ops beat SDPA's masked grouped-query path on CPU
                scores = torch.matmul(q, keys[:, :, :visible].transpose(-1, -2)).mul_(self.scale).add_(bias)
                attended = torch.matmul(scores.softmax(-1), values[:, :, :visible])
                h = h + _linear(attended.reshape(rows, -1), *w["o"])
                gate, up = _linear(F.rms_norm(h, norm, w["norm2"], self.eps), *w["gate_up"]).split(
                    self.intermediate, -1)
                h = h + _linear(self.act(gate) * up, *w["down"])
            return _linear(F.rms_norm(h, norm, self.final_norm, self.eps), *self.head)

    def _capture(self, tokens: torch.Tensor) -> bool:
        """Capture the step over the whole cache (masked) as a CUDA graph; False (and eager steps) if it fails."""
        self.static_tokens = tokens.clone()
        self.static_positions = self.positions.clone()
        self.static_slot = torch.tensor([self.length], device=self.device)

        def full_step():
            return self._step(self.static_tokens, self.static_positions, self.static_slot, self.max_length)

        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph (lazy inits, workspaces); writes only this slot
                    full_step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_logits = full_step()
        except RuntimeError as err:
            log.warning("CUDA graph capture failed, decoding without it: %s", err)
            self.use_graph = False
            return False
        self.graph = graph
        return True

    def _graph_step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.static_tokens.copy_(tokens)
        self.static_positions.copy_(self.positions)
        self.static_slot.fill_(self.length)
        self.graph.replay()
        return self.static_logits
