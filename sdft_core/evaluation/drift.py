"""Drift from the base model: KL(pi_0 || pi) per token over the full vocabulary, on the base model's own samples.

Forgetting tracks the forward KL from the base policy to the trained one, measured on the new task's prompts
(Shenfeld, Pari, Agrawal, "RL's Razor", arXiv 2509.04259), and it is far less noisy than a benchmark score: every
token of every completion contributes a full-vocabulary number instead of one right-or-wrong bit per item.

    samples = sample_base(base, tokenizer, prompts, "cache/tool_use.safetensors", max_new_tokens=64)
    drift = kl_to_base(trained, samples)          # drift.mean nats per token, drift.ci a bootstrap interval

The base model samples each prompt's completion once (temperature 1, a counter-based uniform per row and step,
so the same prompts give the same completions on every machine run) and its float32 log-probabilities over the
whole vocabulary at every completion position are cached beside them. Every later model then costs one forward
pass over the cached prompt + completion:

    KL_t = sum_v p0(v | x, y<t) * (log p0(v | x, y<t) - log p(v | x, y<t))

averaged over all completion tokens (EOS included), with a bootstrap interval that resamples whole sequences.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..decoding import position_ids
from ..models import eos_token_ids, output_head
from ..rollout import pad, sample_completions, sample_key

FORMAT_VERSION = 1


@dataclass(frozen=True)
class BaseSamples:
    """Prompts, the base model's completions of them, and where its log-probabilities are cached."""

    path: Path
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # EOS included when the base model emitted one

    @property
    def offsets(self) -> list[int]:
        """Row of the cached log-probability table where each completion's tokens start (and the total at the end)."""
        starts = [0]
        for completion in self.completion_ids:
            starts.append(starts[-1] + len(completion))
        return starts

    def base_log_probs(self, start: int, end: int) -> torch.Tensor:
        """The base model's float32 log-probabilities [tokens, vocab] of completions start..end-1, concatenated."""
        from safetensors import safe_open

        offsets = self.offsets
        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_slice("log_probs")[offsets[start] : offsets[end]]


@dataclass(frozen=True)
class DriftResult:
    mean: float  # nats per completion token
    ci: tuple[float, float]  # bootstrap 95% interval over sequences
    tokens: int
    sequence_kl: list[float]  # the sum over each sequence's tokens
    sequence_tokens: list[int]

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci": list(self.ci), "tokens": self.tokens, "sequences": len(self.sequence_kl)}


def sample_base(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[list[int]],
    path: str | Path,
    *,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 16,
) -> BaseSamples:
    """Sample one completion per prompt from the base `model` and cache its log-probabilities at `path`.

    A file already at `path` made from the same prompts and settings is reused as it is; one made from others is
    an error (the caller names cache files, so a silent overwrite would hide a mix-up)."""
    path = Path(path)
    key = _cache_key(prompts, max_new_tokens, seed)
    if path.exists():
        samples, metadata = _read(path)
        if metadata.get("key") != key:
            raise ValueError(
                f"{path} caches base samples of other prompts or settings "
                f"(max_new_tokens={metadata.get('max_new_tokens')}, seed={metadata.get('seed')}); "
                "delete it or choose another path"
            )
        return samples

    completions = sample_token_lists(
        model, tokenizer, prompts, [sample_key(seed, i) for i in range(len(prompts))], max_new_tokens, batch_size
    )
    samples = BaseSamples(path, [list(p) for p in prompts], completions)
    log_probs = torch.cat(
        list(completion_log_probs(model, samples.prompt_ids, completions, tokenizer.pad_token_id, batch_size))
    )
    _write(path, samples, log_probs, {"key": key, "max_new_tokens": max_new_tokens, "seed": seed})
    return _read(path)[0]


def sample_token_lists(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[list[int]],
    row_keys: Sequence[int],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[list[int]]:
    """One temperature-1 completion per prompt (EOS included when emitted), in prompt order. Prompts of similar
    length share a batch; each row's sample depends only on its key (counter-based sampling), not on the batch."""
    eos = eos_token_ids(model, tokenizer)
    completions: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rollout = sample_completions(
            model,
            [list(prompts[i]) for i in batch],
            [row_keys[i] for i in batch],
            pad_token_id=tokenizer.pad_token_id,
            eos_token_ids=eos,
            max_new_tokens=max_new_tokens,
            temperature=1.0,
        )
        lengths = rollout.completion_mask.sum(-1).tolist()
        for row, index in enumerate(batch):
            completions[index] = rollout.completion_ids[row, : lengths[row]].tolist()
    return completions


def kl_to_base(
    model: nn.Module,
    samples: BaseSamples,
    pad_token_id: int,
    batch_size: int = 16,
    bootstrap_samples: int = 2000,
    seed: int = 0,
) -> DriftResult:
    """Mean KL(base || model) per completion token over the cached samples, with a bootstrap 95% interval."""
    sums, counts = [], []
    batches = completion_log_probs(model, samples.prompt_ids, samples.completion_ids, pad_token_id, batch_size)
    for start, log_probs in zip(range(0, len(samples.prompt_ids), batch_size), batches):
        end = min(start + batch_size, len(samples.prompt_ids))
        base = samples.base_log_probs(start, end).to(log_probs.device)
        per_token = (base.exp() * (base - log_probs)).sum(-1).double()
        cursor = 0
        for completion in samples.completion_ids[start:end]:
            sums.append(float(per_token[cursor : cursor + len(completion)].sum()))
            counts.append(len(completion))
            cursor += len(completion)
    total = sum(counts)
    return DriftResult(
        sum(sums) / max(total, 1), ratio_bootstrap(sums, counts, bootstrap_samples, seed), total, sums, counts
    )


def ratio_bootstrap(
    sums: Sequence[float], counts: Sequence[int], samples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of sum(sums) / sum(counts) when whole sequences are resampled."""
    import numpy as np

    if not sums:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values, weights = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    picks = rng.integers(0, len(values), size=(samples, len(values)))
    ratios = values[picks].sum(1) / np.maximum(weights[picks].sum(1), 1.0)
    tail = (1 - level) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)


@torch.no_grad()
def completion_log_probs(
    model: nn.Module,
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    pad_token_id: int,
    batch_size: int = 16,
):
    """For each batch of `batch_size` (prompt, completion) pairs, in order: the model's float32 log-probabilities
    [tokens, vocab] at every completion position, the batch's completions concatenated."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    weight, bias = output_head(model)
    decoder = model.get_decoder()
    try:
        for start in range(0, len(prompt_ids), batch_size):
            prompts, prompt_mask = pad(list(prompt_ids[start : start + batch_size]), pad_token_id, "left", device)
            completions, completion_mask = pad(
                list(completion_ids[start : start + batch_size]), pad_token_id, "right", device
            )
            # The state at the last prompt position predicts the first completion token, and so on.
            input_ids = torch.cat([prompts, completions[:, :-1]], dim=1)
            attention_mask = torch.cat([prompt_mask, completion_mask[:, :-1]], dim=1)
            hidden = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids(attention_mask),
                use_cache=False,
            ).last_hidden_state[:, prompts.shape[1] - 1 :]
            hidden = hidden[completion_mask.bool()]  # row by row, each completion's tokens in order
            logits = torch.nn.functional.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
            yield torch.log_softmax(logits, dim=-1)
    finally:
        model.train(was_training)


def _cache_key(prompts: Sequence[list[int]], max_new_tokens: int, seed: int) -> str:
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, max_new_tokens, seed, [list(p) for p in prompts]]).encode())
    return digest.hexdigest()


def _write(path: Path, samples: BaseSamples, log_probs: torch.Tensor, metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    header = metadata | {"prompt_ids": samples.prompt_ids, "completion_ids": samples.completion_ids}
    save_file(
        {"log_probs": log_probs.float().contiguous()}, str(staging), metadata={"sdft_base_samples": json.dumps(header)}
    )
    os.replace(staging, path)  # the cache exists whole or not at all


def _read(path: Path) -> tuple[BaseSamples, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["sdft_base_samples"])
    return BaseSamples(path, header.pop("prompt_ids"), header.pop("completion_ids")), header
