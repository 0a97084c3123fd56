import copy

import pytest
import torch

from sdft_core.config import LoraSettings
from sdft_core.decoding import (
    GenericDecoder,
    StaticCacheDecoder,
    head_logits,
    make_decoder,
    static_cache_unsupported_reason,
)
from sdft_core.models import apply_lora
from sdft_core.rollout import pad, sample_completions, sample_key
from tests.tiny import make_model, make_tokenizer

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


def qwen2_model(tokenizer):
    """Qwen2: biases on q/k/v, a different rope base, GQA."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=1000.0,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    return model


def llama_with_every_bias(tokenizer):
    """Llama with biases on all seven projections (attention_bias, mlp_bias) and an untied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=88,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        head_dim=16,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


FAMILIES = {
    "llama": lambda tokenizer: make_model(tokenizer, layers=3, init_std=0.2),
    "qwen2": qwen2_model,
    "llama_biases": llama_with_every_bias,
}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def run(decoder, prompt_ids, prompt_mask, tokens):
    """Logits after the prompt and after each forced token."""
    logits = [decoder.prefill(prompt_ids, prompt_mask)]
    for token in tokens:
        logits.append(decoder.step(token))
    return torch.stack(logits, dim=1)


def full_sequence_logits(model, prompt, forced_row):
    """Each whole sequence alone, without padding or a cache."""
    sequence = torch.tensor([prompt + forced_row])
    return model(input_ids=sequence).logits[0, len(prompt) - 1 :]


@pytest.mark.parametrize("rows", [3, 40])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_static_cache_decoder_gives_the_models_own_logits(tokenizer, family, rows):
    model = FAMILIES[family](tokenizer).eval()
    assert static_cache_unsupported_reason(model) is None
    prompts = [PROMPTS[i % 3][: 2 + i % 6] for i in range(rows)]
    prompt_ids, prompt_mask = pad(prompts, tokenizer.pad_token_id, "left")
    forced = [torch.arange(rows) % 50 + 3 * i + 5 for i in range(6)]
    decoder = make_decoder(model, rows, prompt_ids.shape[1] + len(forced) + 2)  # two slots stay unwritten
    assert isinstance(decoder, StaticCacheDecoder)
    with torch.no_grad():
        static = run(decoder, prompt_ids, prompt_mask, forced)
        generic = run(GenericDecoder(model), prompt_ids, prompt_mask, forced)
        for row in range(0, rows, 7):
            full = full_sequence_logits(model, prompts[row], [int(t[row]) for t in forced])
            torch.testing.assert_close(static[row], full, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(static, generic, atol=2e-5, rtol=1e-4)


def training_forward_logits(model, prompt, forced_row):
    """What the trainer computes under autocast: the model's hidden states, the head in float32."""
    sequence = torch.tensor([prompt + forced_row])
    hidden = model.model(input_ids=sequence).last_hidden_state[0, len(prompt) - 1 :]
    return head_logits(hidden, model.lm_head.weight)


def test_under_bf16_autocast_decoding_samples_with_the_training_forwards_numerics(tokenizer):
    """The training forward runs autocast: bf16 products on a float32 residual stream, and the loss's head in
    float32. Decoding from a whole-bf16 copy of the model would sample from a measurably different policy.

    Bit for bit only where a product's rounding does not depend on its shape. The decoder multiplies a few rows
    at a time, the training forward a whole sequence, and on CPUs with bf16 instructions (AVX-512 BF16, AMX)
    oneDNN picks its kernel by shape, so a few bf16 results round the other way there. Torch's own kernels
    (oneDNN off) sum every product in one order whatever the shape: that checks the decoder's numerics exactly
    on any CPU; with the machine's own kernels it checks that those roundings stay far below a bf16 copy's."""
    model = make_model(tokenizer, layers=4, init_std=0.2).eval()
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    forced = [torch.tensor([3 + i, 40 + i, 7]) for i in range(8)]

    def decoded_and_training():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            decoder = make_decoder(model, 3, prompt_ids.shape[1] + len(forced))
            assert decoder.dtype == torch.bfloat16 and decoder.residual_dtype == torch.float32
            decoded = run(decoder, prompt_ids, prompt_mask, forced)
            assert decoded.dtype == torch.float32
            training = torch.stack(
                [training_forward_logits(model, p, [int(t[row]) for t in forced]) for row, p in enumerate(PROMPTS)]
            )
        return decoded, training

    def divergence(logits, training):  # mean KL(training || other) per position, in float64
        return (
            torch.nn.functional.kl_div(
                logits.double().log_softmax(-1), training.double().log_softmax(-1), log_target=True, reduction="none"
            )
            .sum(-1)
            .mean()
            .item()
        )

    with torch.backends.mkldnn.flags(enabled=False):
        decoded, training = decoded_and_training()
    # every bf16 value equal; only the float32 head's last bits may differ (its kernel also depends on the shape)
    torch.testing.assert_close(decoded, training, atol=1e-5, rtol=1e-6)
    assert divergence(decoded, training) < 1e-9

    decoded, training = decoded_and_training()
    with torch.no_grad():
        whole_bf16 = torch.stack(
            [
                full_sequence_logits(copy.deepcopy(model).bfloat16(), p, [int(t[row]) for t in forced]).float()
                for row, p in enumerate(PROMPTS)
            ]
        )
    assert divergence(whole_bf16, training) > 1e-5  # what sampling from a bf16 copy would cost
    assert divergence(decoded, training) < divergence(whole_bf16, training) / 3


class EagerReplay:
    """Stands in for a CUDA graph on CPU: each replay runs the recorded step again into the same output tensor."""

    def __init__(self, step):
        self.step = step
        self.output = step()

    def replay(self):
        self.output.copy_(self.step())


def test_the_cuda_graph_step_gives_the_eager_steps_logits(tokenizer, monkeypatch):
    """What a captured graph replays: the step over the whole static cache, masked, with the slot, positions and
    tokens read from tensors. Run on CPU by replaying the recorded step eagerly."""
    model = qwen2_model(tokenizer).eval()
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    forced = [torch.tensor([3 + i, 40 + i, 7]) for i in range(6)]
    max_length = prompt_ids.shape[1] + len(forced) + 3  # unwritten slots stay masked
    monkeypatch.setattr(
        StaticCacheDecoder, "_record", staticmethod(lambda step: (replay := EagerReplay(step), replay.output))
    )
    graphed = StaticCacheDecoder(model, 3, max_length, cpu_kernel=False)  # the torch step, as on CUDA
    graphed.use_graph = True
    with torch.no_grad():
        replayed = run(graphed, prompt_ids, prompt_mask, forced)
        eager = run(StaticCacheDecoder(model, 3, max_length, cpu_kernel=False), prompt_ids, prompt_mask, forced)
    assert isinstance(graphed.graph, EagerReplay)
    torch.testing.assert_close(replayed, eager, atol=2e-5, rtol=1e-4)


def test_the_static_cache_decoder_refuses_to_write_past_its_cache(tokenizer):
    model = make_model(tokenizer).eval()
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    decoder = StaticCacheDecoder(model, 3, prompt_ids.shape[1] + 1)
    decoder.prefill(prompt_ids, prompt_mask)
    decoder.step(torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match="static cache"):
        decoder.step(torch.tensor([1, 2, 3]))


def test_models_the_static_cache_decoder_cannot_read_fall_back_to_their_own_forward(tokenizer):
    model = apply_lora(make_model(tokenizer), LoraSettings(r=4, alpha=8))
    assert static_cache_unsupported_reason(model) is not None
    assert "LoRA" in static_cache_unsupported_reason(model.get_base_model())
    assert isinstance(make_decoder(model, 2, 16), GenericDecoder)
    assert isinstance(make_decoder(make_model(tokenizer), 2, 16), StaticCacheDecoder)


def test_sampling_gives_the_same_completions_through_both_decoders(tokenizer, monkeypatch):
    """Same keys, same model: the static-cache and generic paths sample identical tokens."""
    model = make_model(tokenizer, layers=2, init_std=0.2)
    keys = [sample_key(3, i) for i in range(len(PROMPTS))]
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, eos_token_ids=[tokenizer.eos_token_id], max_new_tokens=16)
    completions = {}
    for kind in (StaticCacheDecoder, GenericDecoder):
        monkeypatch.setattr(
            "sdft_core.rollout.make_decoder",
            lambda model, rows, length, kind=kind, **_: (
                kind(model) if kind is GenericDecoder else kind(model, rows, length)
            ),
        )
        completions[kind.__name__] = sample_completions(model, PROMPTS, keys, **kwargs).completion_ids
    assert torch.equal(completions["StaticCacheDecoder"], completions["GenericDecoder"])
    assert completions["GenericDecoder"].shape[1] > 3
