"""The drift measure KL(base || model) against a float64 brute force, and its deterministic, reusable cache."""

import pytest
import torch

from sdft_core.evaluation.drift import kl_to_base, ratio_bootstrap, sample_base
from sdft_core.prompts import encode_messages
from tests.tiny import make_model


def _prompts(tokenizer, n=7):
    questions = [
        "What is the capital of France?",
        "Where is the lazy dog?",
        "What is a wetland?",
        "calculate_triangle_area(base=10, height=5)",
        "So the answer is",
        "Source text: the quick fox",
        "Now answer with a response of your own",
    ]
    return [
        encode_messages(tokenizer, [{"role": "user", "content": questions[i % len(questions)] + " " * (i // 7)}])
        for i in range(n)
    ]


def _brute_force_kl(base, model, samples) -> tuple[float, list[float]]:
    """Each sequence alone, unpadded, both models in float64: sum over tokens of sum_v p0 (log p0 - log p)."""
    base64 = base.double().eval()
    model64 = model.double().eval()
    per_sequence = []
    with torch.no_grad():
        for prompt, completion in zip(samples.prompt_ids, samples.completion_ids):
            ids = torch.tensor([prompt + completion[:-1]]) if completion else torch.tensor([prompt])
            positions = slice(len(prompt) - 1, len(prompt) - 1 + len(completion))
            log_p0 = torch.log_softmax(base64(ids).logits[0, positions], -1)
            log_p = torch.log_softmax(model64(ids).logits[0, positions], -1)
            per_sequence.append(float((log_p0.exp() * (log_p0 - log_p)).sum()))
    base.float()
    model.float()
    total_tokens = sum(len(c) for c in samples.completion_ids)
    return sum(per_sequence) / total_tokens, per_sequence


def test_kl_matches_a_float64_brute_force(tmp_path, tokenizer):
    base = make_model(tokenizer, seed=0).eval()
    trained = make_model(tokenizer, seed=0).eval()
    with torch.no_grad():  # a trained model: the base's weights, moved
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    samples = sample_base(
        base, tokenizer, _prompts(tokenizer), tmp_path / "base.safetensors", max_new_tokens=9, batch_size=3
    )
    lengths = [len(c) for c in samples.completion_ids]
    assert max(lengths) == 9 and len(set(lengths)) >= 1 and all(n >= 1 for n in lengths)

    drift = kl_to_base(trained, samples, tokenizer.pad_token_id, batch_size=4)
    expected, per_sequence = _brute_force_kl(base, trained, samples)
    assert drift.mean > 1e-3  # the moved model really drifted
    assert drift.mean == pytest.approx(expected, rel=1e-4)
    assert drift.sequence_kl == pytest.approx(per_sequence, rel=1e-4, abs=1e-6)
    assert drift.tokens == sum(lengths) and drift.sequence_tokens == lengths
    assert drift.ci[0] <= drift.mean <= drift.ci[1]

    same = kl_to_base(base, samples, tokenizer.pad_token_id, batch_size=2)
    assert abs(same.mean) < 1e-6  # the base model has not drifted from itself, whatever the batching


def test_base_samples_are_deterministic_and_cached(tmp_path, tokenizer):
    base = make_model(tokenizer, seed=1).eval()
    prompts = _prompts(tokenizer, 5)
    first = sample_base(base, tokenizer, prompts, tmp_path / "a.safetensors", max_new_tokens=6, seed=3, batch_size=2)
    second = sample_base(base, tokenizer, prompts, tmp_path / "b.safetensors", max_new_tokens=6, seed=3, batch_size=5)
    assert first.completion_ids == second.completion_ids  # batch composition does not change a row's sample
    torch.testing.assert_close(first.base_log_probs(0, 5), second.base_log_probs(0, 5), atol=1e-5, rtol=0)
    rerun = sample_base(base, tokenizer, prompts, tmp_path / "d.safetensors", max_new_tokens=6, seed=3, batch_size=2)
    assert rerun.completion_ids == first.completion_ids
    assert torch.equal(rerun.base_log_probs(0, 5), first.base_log_probs(0, 5))  # same batching: bit for bit
    other_seed = sample_base(base, tokenizer, prompts, tmp_path / "c.safetensors", max_new_tokens=6, seed=4)
    assert other_seed.completion_ids != first.completion_ids

    stamp = (tmp_path / "a.safetensors").stat().st_mtime_ns
    with torch.no_grad():  # a reused cache does not sample again: another model gives the cached samples back
        for p in base.parameters():
            p.add_(1.0)
    again = sample_base(base, tokenizer, prompts, tmp_path / "a.safetensors", max_new_tokens=6, seed=3)
    assert again.completion_ids == first.completion_ids
    assert (tmp_path / "a.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other prompts or settings"):
        sample_base(base, tokenizer, prompts[:4], tmp_path / "a.safetensors", max_new_tokens=6, seed=3)


def test_ratio_bootstrap_brackets_the_pooled_mean():
    sums, counts = [1.0, 4.0, 0.5, 2.0], [2, 8, 1, 4]
    low, high = ratio_bootstrap(sums, counts, samples=500)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)  # every sequence has 0.5 nats per token
    low, high = ratio_bootstrap([0.0, 3.0, 1.0], [3, 3, 3], samples=2000)
    assert 0.0 <= low < 4 / 9 < high <= 1.0
