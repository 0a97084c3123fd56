"""On-policy sampling from the student: batched, left-padded, KV-cached (the model side is `decoding`).

Each token is drawn by inverting the cumulative distribution at a uniform number that is a counter-based hash
of (row key, position) instead of the output of a stateful generator. A row's sample then depends only on its
key and the model, not on which batch or which process it lands in: one process and several processes draw the
same completions, and a resumed run draws the same completions as an uninterrupted one. One number per row and
step keeps the sampler cheap next to a decode step (per-token noise over the vocabulary cost more than the
model's own small products on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .decoding import PromptPass, make_decoder, prompt_pass

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for int64 x in [0, 2**32) without signed overflow."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def mix32_int(x: int) -> int:
    """`mix32` on a Python int (row keys are made on the host, many at a time)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def sample_key(*parts: int) -> int:
    """Combine integers (seed, epoch, example index, generation index, ...) into one 32-bit row key."""
    key = 0x9E3779B9
    for part in parts:
        key = mix32_int(key ^ (int(part) & _MASK32))
    return key


def uniform(row_keys: torch.Tensor, step: int) -> torch.Tensor:
    """One float64 number in (0, 1) per row, with 48 random bits, a pure function of (row key, step)."""
    high = mix32(row_keys ^ (step & _MASK32))
    low = mix32(high ^ 0x5BD1E995)
    return (((high >> 8) << 24) + (low >> 8)).double().add(0.5).mul(2.0**-48)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(
    logits: torch.Tensor, row_keys: torch.Tensor, step: int, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Sample one token per row from softmax(logits / temperature); temperature 0 means greedy."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    cumulative = probs.double().cumsum(-1)  # float64: float32 sums over ~10^5 tokens would blur the tail
    target = uniform(row_keys, step) * cumulative[:, -1]
    # right=True picks the first token whose cumulative mass exceeds the target: zero-probability tokens never
    return torch.searchsorted(cumulative, target[:, None], right=True)[:, 0].clamp(max=logits.shape[-1] - 1)


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, C] right-padded
    completion_mask: torch.Tensor  # [B, C] 1 up to and including the first EOS
    prompt_pass: PromptPass | None = None  # the prompts' forward with gradients, when asked for


def pad(sequences: list[list[int]], pad_id: int, side: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as a [rows, longest] tensor padded on the `left` (prompts) or `right` (completions), and a mask."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def sample_completions(
    model: nn.Module,
    prompts: list[list[int]],
    row_keys: list[int],
    *,
    pad_token_id: int,
    eos_token_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    cuda_graphs: bool = True,
    trainable_prompt_pass: bool = False,
) -> Rollout:
    """Sample one completion per prompt with the KV cache on; stops once every row has emitted an EOS.

    `trainable_prompt_pass`: take the prompts' forward with gradients, in the model's current mode, and return it
    as `Rollout.prompt_pass`: it can then be the prompt part of the training forward on these rows, which runs
    only the completions (see `Trainer`).

    Otherwise everything runs in eval mode, so gradient checkpointing (active only in training mode) cannot switch
    the cache off; the model's previous mode is restored afterwards.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = pad(prompts, pad_token_id, "left", device)
    was_training = model.training
    try:
        if trainable_prompt_pass:
            prompt = prompt_pass(model, prompt_ids, prompt_mask)
        model.eval()
        with torch.no_grad():
            if not trainable_prompt_pass:
                prompt = prompt_pass(model, prompt_ids, prompt_mask)
            completion_ids, completion_mask = _decode(
                model,
                prompt,
                row_keys,
                pad_token_id,
                eos_token_ids,
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                cuda_graphs,
            )
    finally:
        model.train(was_training)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, prompt if trainable_prompt_pass else None)


def _decode(
    model: nn.Module,
    prompt: PromptPass,
    row_keys: list[int],
    pad_token_id: int,
    eos_token_ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    cuda_graphs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    device, prompt_ids = prompt.prompt_ids.device, prompt.prompt_ids
    keys = torch.tensor(row_keys, dtype=torch.int64, device=device)
    eos = torch.tensor(eos_token_ids, dtype=torch.long, device=device)
    rows = prompt_ids.shape[0]
    # On CUDA, asking whether any row is still alive waits for the GPU: ask every few steps, not every step.
    check_every = 8 if device.type == "cuda" else 1

    decoder = make_decoder(model, rows, prompt_ids.shape[1] + max_new_tokens, cuda_graphs=cuda_graphs)
    logits = decoder.start(prompt)
    tokens, alive = [], torch.ones(rows, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = next_tokens(logits, keys, step, temperature, top_k, top_p)
        token = torch.where(alive, token, torch.full_like(token, pad_token_id))
        tokens.append(token)
        alive = alive & ~torch.isin(token, eos)
        if step == max_new_tokens - 1 or ((step + 1) % check_every == 0 and not bool(alive.any())):
            break
        logits = decoder.step(token)

    completion_ids = torch.stack(tokens, dim=1) if tokens else prompt_ids.new_zeros((rows, 0))
    completion_mask = completion_mask_from_eos(completion_ids, eos)
    return completion_ids.masked_fill(completion_mask == 0, pad_token_id), completion_mask


def completion_mask_from_eos(completion_ids: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """1 for every token up to and including the first EOS of its row, 0 after it."""
    is_eos = torch.isin(completion_ids, eos).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()
