import torch
from torch import nn

from sdft_core.decoding import GenericDecoder
from sdft_core.models import enable_activation_checkpointing
from sdft_core.rollout import (
    completion_mask_from_eos,
    next_tokens,
    sample_completions,
    sample_key,
)

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


class EosBiased(nn.Module):
    """Adds a constant to the EOS logit so that completions end at varied lengths."""

    def __init__(self, lm, eos_id, bias):
        super().__init__()
        self.lm, self.eos_id, self.bias = lm, eos_id, bias
        self.config = lm.config

    def forward(self, **kwargs):
        out = self.lm(**kwargs)
        out.logits[..., self.eos_id] += self.bias
        return out


def sample(model, tokenizer, prompts=PROMPTS, keys=None, max_new_tokens=12, **kwargs):
    keys = keys if keys is not None else [sample_key(0, i) for i in range(len(prompts))]
    return sample_completions(
        model,
        prompts,
        keys,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_ids=[tokenizer.eos_token_id],
        max_new_tokens=max_new_tokens,
        **kwargs,
    )


def test_completion_mask_includes_the_first_eos_and_nothing_after():
    ids = torch.tensor([[4, 2, 7, 2], [5, 6, 7, 8], [2, 3, 3, 3]])
    mask = completion_mask_from_eos(ids, torch.tensor([2]))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_masks_stop_after_eos(tiny_model, tokenizer):
    eos = tokenizer.eos_token_id
    rollout = sample(
        EosBiased(tiny_model, eos, bias=4.0),
        tokenizer,
        prompts=PROMPTS * 4,
        keys=[sample_key(1, i) for i in range(12)],
        max_new_tokens=20,
    )
    lengths = rollout.completion_mask.sum(-1)
    assert len(set(lengths.tolist())) > 2  # rows end at different steps
    for row in range(12):
        ids, mask, n = rollout.completion_ids[row], rollout.completion_mask[row], int(lengths[row])
        assert mask[:n].all() and not mask[n:].any()
        assert (ids[n:] == tokenizer.pad_token_id).all()
        eos_positions = (ids[:n] == eos).nonzero().flatten().tolist()
        assert eos_positions in ([n - 1], []) and (eos_positions or n == 20)


def test_same_keys_give_the_same_samples_and_other_keys_differ(tiny_model, tokenizer):
    first = sample(tiny_model, tokenizer)
    again = sample(tiny_model, tokenizer)
    other = sample(tiny_model, tokenizer, keys=[sample_key(99, i) for i in range(3)])
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert not torch.equal(first.completion_ids, other.completion_ids)


def test_a_rows_sample_does_not_depend_on_its_batch(tiny_model, tokenizer):
    keys = [sample_key(3, i) for i in range(3)]
    batched = sample(tiny_model, tokenizer, keys=keys)
    for row, (prompt, key) in enumerate(zip(PROMPTS, keys)):
        alone = sample(tiny_model, tokenizer, prompts=[prompt], keys=[key])
        n = int(alone.completion_mask.sum())
        assert batched.completion_ids[row, :n].tolist() == alone.completion_ids[0, :n].tolist()


def test_generation_uses_the_kv_cache_even_with_gradient_checkpointing(tiny_model, tokenizer, monkeypatch):
    """Through the model's own forward (the generic decoder; the static-cache one has its cache by construction)."""
    monkeypatch.setattr("sdft_core.rollout.make_decoder", lambda model, *a, **k: GenericDecoder(model))
    enable_activation_checkpointing(tiny_model)
    tiny_model.train()
    calls = []

    def record(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        calls.append((kwargs["input_ids"].shape[1], cache.get_seq_length()))

    handle = tiny_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        rollout = sample(tiny_model, tokenizer, max_new_tokens=8)
    finally:
        handle.remove()
    assert tiny_model.training  # the caller's mode is restored
    prompt_width = rollout.prompt_ids.shape[1]
    assert calls[0] == (prompt_width, 0)  # one prefill over the prompt
    assert len(calls) > 1
    assert calls[1:] == [(1, prompt_width + i) for i in range(len(calls) - 1)]  # then one token per step


def test_left_padding_matches_unpadded_logits(tiny_model, tokenizer):
    rollout = sample(tiny_model, tokenizer, temperature=0, max_new_tokens=6)
    for row, prompt in enumerate(PROMPTS):
        ids = torch.tensor([prompt])
        out = []
        with torch.no_grad():
            for _ in range(6):
                token = tiny_model(input_ids=ids).logits[0, -1].argmax()
                out.append(int(token))
                if token == tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, token.view(1, 1)], dim=1)
        assert rollout.completion_ids[row, : len(out)].tolist() == out


def frequencies(logits, rows=40000, **kwargs):
    keys = torch.tensor([sample_key(7, i) for i in range(rows)])
    tokens = next_tokens(logits.expand(rows, -1), keys, step=3, **kwargs)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / rows


def test_sampler_draws_from_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    for temperature in (1.0, 0.5):
        probs = torch.softmax(logits[0].double() / temperature, -1)
        freq = frequencies(logits, temperature=temperature)
        sigma = (probs * (1 - probs) / 40000).sqrt()
        assert ((freq - probs).abs() < 4 * sigma + 1e-4).all(), (freq, probs)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    freq = frequencies(logits, rows=20000, temperature=1.0, top_k=2)
    assert freq[[2, 3, 4]].sum() == 0
    expected = torch.softmax(torch.tensor([2.0, 1.0], dtype=torch.float64), -1)
    assert torch.allclose(freq[:2], expected, atol=0.015)
    freq = frequencies(logits, rows=20000, temperature=1.0, top_p=0.6)  # p(token 0) = 0.53 < 0.6
    assert set(freq.nonzero().flatten().tolist()) == {0, 1}


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert next_tokens(logits, torch.tensor([1, 2]), 0, temperature=0).tolist() == [1, 0]


def test_tensor_hash_matches_the_integer_hash():
    from sdft_core.rollout import mix32, mix32_int

    values = [0, 1, 2**31, 2**32 - 1, 123456789, 0x9E3779B9]
    assert mix32(torch.tensor(values)).tolist() == [mix32_int(v) for v in values]


def test_padding_sides():
    from sdft_core.rollout import pad

    ids, mask = pad([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
