import pytest
import torch

from sdft_core import cpu_kernels
from sdft_core.config import LoraSettings
from sdft_core.decoding import (
    NATIVE_MAX_ROWS,
    GenericDecoder,
    LeanDecoder,
    NativeDecoder,
    lean_unsupported_reason,
    make_decoder,
    native_unsupported_reason,
)
from sdft_core.models import apply_lora
from sdft_core.rollout import pad, sample_completions, sample_key
from tests.core.test_cpu_kernels import require_kernel
from tests.tiny import make_model, make_tokenizer

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


def qwen2_model(tokenizer):
    """Qwen2: biases on q/k/v, a different rope base, GQA."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_theta=1000.0, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
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
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=88, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=3, head_dim=16, attention_bias=True,
                         mlp_bias=True, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


FAMILIES = {"llama": lambda tokenizer: make_model(tokenizer, layers=3, init_std=0.2), "qwen2": qwen2_model,
            "llama_biases": llama_with_every_bias}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def run(decoder, prompt_ids, prompt_mask, tokens):
    """Logits after the prompt and after each forced token."""
    logits = [decoder.prefill(prompt_ids, prompt_mask)]
    for token in tokens:
        logits.append(decoder.step(token))
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("products", ["kernel", "torch"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lean_decoder_gives_the_models_own_logits(tokenizer, family, products, monkeypatch):
    if products == "kernel":
        require_kernel()
    else:
        monkeypatch.setattr(cpu_kernels, "kernel", lambda: None)
    model = (make_model(tokenizer, layers=3, init_std=0.2) if family == "llama" else qwen2_model(tokenizer)).eval()
    assert lean_unsupported_reason(model) is None
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    forced = [torch.tensor([3 + i, 40 + i, 7]) for i in range(6)]
    max_length = prompt_ids.shape[1] + len(forced)
    decoder = LeanDecoder(model, 3, max_length)
    assert (decoder.kernel is not None) == (products == "kernel")
    assert LeanDecoder(model, cpu_kernels.MAX_ROWS + 1, max_length).kernel is None  # MKL is faster there
    with torch.no_grad():
        lean = run(decoder, prompt_ids, prompt_mask, forced)
        generic = run(GenericDecoder(model), prompt_ids, prompt_mask, forced)
        # and the full forward of each whole sequence, one row at a time without padding (no cache at all)
        for row, prompt in enumerate(PROMPTS):
            sequence = torch.tensor([prompt + [int(t[row]) for t in forced]])
            full = model(input_ids=sequence).logits[0, len(prompt) - 1:]
            torch.testing.assert_close(lean[row], full, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lean, generic, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_native_decoder_gives_the_models_own_logits(tokenizer, family, threads):
    require_kernel()
    model = FAMILIES[family](tokenizer).eval()
    assert native_unsupported_reason(model, 3) is None
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    forced = [torch.tensor([3 + i, 40 + i, 7]) for i in range(6)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        decoder = make_decoder(model, 3, prompt_ids.shape[1] + len(forced) + 2)  # two slots stay unwritten
        assert isinstance(decoder, NativeDecoder)
        with torch.no_grad():
            native = run(decoder, prompt_ids, prompt_mask, forced)
            generic = run(GenericDecoder(model), prompt_ids, prompt_mask, forced)
            for row, prompt in enumerate(PROMPTS):  # each whole sequence alone, without padding or a cache
                sequence = torch.tensor([prompt + [int(t[row]) for t in forced]])
                full = model(input_ids=sequence).logits[0, len(prompt) - 1:]
                torch.testing.assert_close(native[row], full, atol=2e-5, rtol=1e-4)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(native, generic, atol=2e-5, rtol=1e-4)


def test_native_decoder_takes_rows_beyond_a_group_of_four(tokenizer):
    """The kernel applies each weight row to the rows of x by fours; 9 rows leave a group of one."""
    require_kernel()
    model = qwen2_model(tokenizer).eval()
    prompts = [PROMPTS[i % 3][: 2 + i % 5] for i in range(9)]
    prompt_ids, prompt_mask = pad(prompts, tokenizer.pad_token_id, "left")
    forced = [torch.arange(9) + 3 * i + 5 for i in range(4)]
    decoder = make_decoder(model, 9, prompt_ids.shape[1] + len(forced))
    assert isinstance(decoder, NativeDecoder)
    with torch.no_grad():
        native = run(decoder, prompt_ids, prompt_mask, forced)
        generic = run(GenericDecoder(model), prompt_ids, prompt_mask, forced)
    torch.testing.assert_close(native, generic, atol=2e-5, rtol=1e-4)


def test_native_decoder_refuses_tokens_outside_the_vocabulary(tokenizer):
    require_kernel()
    model = make_model(tokenizer).eval()
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    decoder = NativeDecoder(model, 3, prompt_ids.shape[1] + 4)
    decoder.prefill(prompt_ids, prompt_mask)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder.step(torch.tensor([1, len(tokenizer), 3]))


def test_decoders_are_chosen_by_what_the_model_and_machine_allow(tokenizer, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    require_kernel()
    model = make_model(tokenizer)
    assert isinstance(make_decoder(model, NATIVE_MAX_ROWS, 16), NativeDecoder)
    assert isinstance(make_decoder(model, NATIVE_MAX_ROWS + 1, 16), LeanDecoder)  # MKL is faster there
    assert "rows" in native_unsupported_reason(model, NATIVE_MAX_ROWS + 1)
    gelu = LlamaForCausalLM(LlamaConfig(**{**model.config.to_dict(), "hidden_act": "gelu"}))
    assert "activation 'gelu'" in native_unsupported_reason(gelu, 2)
    assert isinstance(make_decoder(gelu, 2, 16), LeanDecoder)
    assert "float32" in native_unsupported_reason(make_model(tokenizer).to(torch.bfloat16), 2)
    narrow = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=12, intermediate_size=20,
                                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    assert "multiples of 8" in native_unsupported_reason(narrow, 2)
    cpu_kernels.library.cache_clear()
    monkeypatch.setenv("SDFT_CPU_KERNEL", "0")
    try:
        assert "SDFT_CPU_KERNEL=0" in native_unsupported_reason(model, 2)
        assert isinstance(make_decoder(model, 2, 16), LeanDecoder)
    finally:
        cpu_kernels.library.cache_clear()


def test_a_model_with_weights_the_kernel_cannot_take_decodes_with_torchs_products(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    require_kernel()
    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=12, intermediate_size=20, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()  # 12 and 20 are not multiples of 8
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    forced = [torch.tensor([3 + i, 40 + i, 7]) for i in range(4)]
    decoder = LeanDecoder(model, 3, prompt_ids.shape[1] + len(forced))
    assert decoder.kernel is None
    with torch.no_grad():
        lean = run(decoder, prompt_ids, prompt_mask, forced)
        generic = run(GenericDecoder(model), prompt_ids, prompt_mask, forced)
    torch.testing.assert_close(lean, generic, atol=2e-5, rtol=1e-4)


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
    monkeypatch.setattr(LeanDecoder, "_record", staticmethod(lambda step: (replay := EagerReplay(step), replay.output)))
    graphed = LeanDecoder(model, 3, max_length)
    graphed.use_graph = True
    with torch.no_grad():
        replayed = run(graphed, prompt_ids, prompt_mask, forced)
        eager = run(LeanDecoder(model, 3, max_length), prompt_ids, prompt_mask, forced)
    assert isinstance(graphed.graph, EagerReplay)
    torch.testing.assert_close(replayed, eager, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", [LeanDecoder, NativeDecoder])
def test_static_cache_decoders_refuse_to_write_past_their_cache(tokenizer, kind):
    if kind is NativeDecoder:
        require_kernel()
    model = make_model(tokenizer).eval()
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    decoder = kind(model, 3, prompt_ids.shape[1] + 1)
    decoder.prefill(prompt_ids, prompt_mask)
    decoder.step(torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match="static cache"):
        decoder.step(torch.tensor([1, 2, 3]))


def test_models_the_lean_decoder_cannot_read_fall_back_to_their_own_forward(tokenizer):
    model = apply_lora(make_model(tokenizer), LoraSettings(r=4, alpha=8))
    assert lean_unsupported_reason(model) is not None
    assert "LoRA" in lean_unsupported_reason(model.get_base_model())
    assert isinstance(make_decoder(model, 2, 16), GenericDecoder)
    assert isinstance(make_decoder(make_model(tokenizer), 2, 16), (LeanDecoder, NativeDecoder))


def test_sampling_gives_the_same_completions_through_every_decoder(tokenizer, monkeypatch):
    """Same keys, same model: the native, lean and generic paths sample identical tokens."""
    require_kernel()
    model = make_model(tokenizer, layers=2, init_std=0.2)
    keys = [sample_key(3, i) for i in range(len(PROMPTS))]
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, eos_token_ids=[tokenizer.eos_token_id], max_new_tokens=16)
    completions = {}
    for kind in (NativeDecoder, LeanDecoder, GenericDecoder):
        monkeypatch.setattr("sdft_core.rollout.make_decoder",
                            lambda model, rows, length, kind=kind, **_: kind(model) if kind is GenericDecoder
                            else kind(model, rows, length))
        completions[kind.__name__] = sample_completions(model, PROMPTS, keys, **kwargs).completion_ids
    assert torch.equal(completions["NativeDecoder"], completions["GenericDecoder"])
    assert torch.equal(completions["LeanDecoder"], completions["GenericDecoder"])
    assert completions["GenericDecoder"].shape[1] > 3
