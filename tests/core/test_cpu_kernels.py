"""The optional CPU kernels (package `sdft-cpu-kernels` in kernels/, installed by `make kernels`) against torch.

Without the package these tests skip, unless SDFT_REQUIRE_CPU_KERNELS=1 (set by .ci/run, which installs it):
then a missing or unusable package fails them.
"""

import os
import subprocess
import sys

import pytest
import torch

from sdft_core import decoding
from sdft_core.decoding import CPU_KERNEL_MAX_ROWS, GenericDecoder, StaticCacheDecoder, make_decoder
from sdft_core.rollout import pad, sample_completions, sample_key
from tests.core.test_decoding import FAMILIES, PROMPTS, full_sequence_logits, run
from tests.tiny import make_model


@pytest.fixture(scope="module")
def kernels():
    kernels = decoding.cpu_kernels()
    if kernels is None:
        reason = "sdft_cpu_kernels is not installed (make kernels), or this CPU lacks AVX2/FMA"
        if os.environ.get("SDFT_REQUIRE_CPU_KERNELS") == "1":
            pytest.fail(f"SDFT_REQUIRE_CPU_KERNELS=1, but {reason}")
        pytest.skip(reason)
    return kernels


def test_the_kernels_were_built_when_installed_and_importing_them_compiles_nothing(kernels):
    """An installed extension module; taking it for decoding loads no compiler tooling (cpp_extension's JIT)."""
    assert kernels._C.__file__.endswith(".so")
    code = (
        "import sys; from sdft_core.decoding import cpu_kernels; assert cpu_kernels() is not None; "
        "print(sorted(m for m in sys.modules if m.startswith(('torch.utils.cpp_extension', 'setuptools'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", range(1, 9))
def test_the_skinny_product_is_torchs_product(kernels, rows, bias, accumulate):
    generator = torch.Generator().manual_seed(rows)
    # 133 columns: two tasks of 64 and a third with an odd column out; depth 200 is 25 vectors of 8
    x, weight = torch.randn(rows, 200, generator=generator), torch.randn(133, 200, generator=generator)
    b = torch.randn(133, generator=generator) if bias else None
    out = torch.randn(rows, 133, generator=generator) if accumulate else None
    expected = (x.double() @ weight.double().T + (0 if b is None else b.double())).float()
    if accumulate:
        expected = expected + out
    result = kernels.skinny_matmul(x, weight, b, out=out, accumulate=accumulate)
    if accumulate:
        assert result.data_ptr() == out.data_ptr()
    torch.testing.assert_close(result, expected, atol=1e-4, rtol=1e-5)


def test_the_skinny_product_refuses_what_it_cannot_compute(kernels):
    with pytest.raises(RuntimeError, match="multiple of 8"):
        kernels.skinny_matmul(torch.randn(2, 12), torch.randn(5, 12))
    with pytest.raises(RuntimeError, match="float32"):
        kernels.skinny_matmul(torch.randn(2, 16).double(), torch.randn(5, 16).double())
    with pytest.raises(RuntimeError, match="accumulate needs out"):
        kernels.skinny_matmul(torch.randn(2, 16), torch.randn(5, 16), accumulate=True)


def greedy(decoder, prompt_ids, prompt_mask, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and logits of `steps` greedy steps."""
    logits = [decoder.prefill(prompt_ids, prompt_mask)]
    tokens = [logits[-1].argmax(-1)]
    for _ in range(steps):
        logits.append(decoder.step(tokens[-1]))
        tokens.append(logits[-1].argmax(-1))
    return torch.stack(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("rows", [3, CPU_KERNEL_MAX_ROWS])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_kernel_step_gives_the_torch_steps_and_the_models_own_logits(kernels, tokenizer, family, rows):
    model = FAMILIES[family](tokenizer).eval()
    prompts = [PROMPTS[i % 3][: 2 + i % 6] for i in range(rows)]
    prompt_ids, prompt_mask = pad(prompts, tokenizer.pad_token_id, "left")
    forced = [torch.arange(rows) % 50 + 3 * i + 5 for i in range(6)]
    length = prompt_ids.shape[1] + len(forced) + 2  # two slots stay unwritten
    fast, plain = StaticCacheDecoder(model, rows, length), StaticCacheDecoder(model, rows, length, cpu_kernel=False)
    assert isinstance(fast.kernel, kernels.DecodeStep) and plain.kernel is None
    with torch.no_grad():
        kernel_logits = run(fast, prompt_ids, prompt_mask, forced)
        torch_logits = run(plain, prompt_ids, prompt_mask, forced)
        for row in range(0, rows, 5):
            full = full_sequence_logits(model, prompts[row], [int(t[row]) for t in forced])
            torch.testing.assert_close(kernel_logits[row], full, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(kernel_logits, torch_logits, atol=2e-5, rtol=1e-4)
        # the keys and values it wrote are the torch step's (q/k in rotary-pair order in both)
        torch.testing.assert_close(fast.keys, plain.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast.values, plain.values, atol=1e-5, rtol=1e-5)

        steps = length - prompt_ids.shape[1]
        kernel_tokens, kernel_logits = greedy(StaticCacheDecoder(model, rows, length), prompt_ids, prompt_mask, steps)
        torch_tokens, torch_logits = greedy(plain, prompt_ids, prompt_mask, steps)
    assert torch.equal(kernel_tokens, torch_tokens)
    torch.testing.assert_close(kernel_logits, torch_logits, atol=2e-5, rtol=1e-4)


def test_the_kernel_step_refuses_tokens_outside_the_vocabulary(kernels, tokenizer):
    model = make_model(tokenizer).eval()
    prompt_ids, prompt_mask = pad(PROMPTS, tokenizer.pad_token_id, "left")
    decoder = StaticCacheDecoder(model, 3, prompt_ids.shape[1] + 2)
    decoder.prefill(prompt_ids, prompt_mask)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        decoder.step(torch.tensor([1, len(tokenizer), 3]))


def test_decoding_takes_the_kernel_where_it_applies_and_torch_elsewhere(kernels, tokenizer):
    model = make_model(tokenizer).eval()
    assert isinstance(make_decoder(model, 4, 16).kernel, kernels.DecodeStep)
    assert make_decoder(model, CPU_KERNEL_MAX_ROWS + 1, 16).kernel is None
    assert StaticCacheDecoder(model, 4, 16, cpu_kernel=False).kernel is None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products: the training forward's numerics, in torch
        assert make_decoder(model, 4, 16).kernel is None


def test_without_the_kernels_decoding_is_torch(tokenizer, monkeypatch):
    monkeypatch.setattr(decoding, "cpu_kernels", lambda: None)  # not installed, or a CPU without AVX2
    decoder = make_decoder(make_model(tokenizer).eval(), 4, 16)
    assert isinstance(decoder, StaticCacheDecoder) and decoder.kernel is None


def test_sampling_runs_through_the_kernel_and_gives_the_models_own_completions(kernels, tokenizer, monkeypatch):
    model = make_model(tokenizer, layers=2, init_std=0.2)
    keys = [sample_key(3, i) for i in range(len(PROMPTS))]
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, eos_token_ids=[tokenizer.eos_token_id], max_new_tokens=16)
    decoders = []

    def recording(*args, **kw):
        decoders.append(make_decoder(*args, **kw))
        return decoders[-1]

    monkeypatch.setattr("sdft_core.rollout.make_decoder", recording)
    fast = sample_completions(model, PROMPTS, keys, **kwargs).completion_ids
    assert len(decoders) == 1 and isinstance(decoders[0].kernel, kernels.DecodeStep)
    monkeypatch.setattr("sdft_core.rollout.make_decoder", lambda model, *a, **k: GenericDecoder(model))
    generic = sample_completions(model, PROMPTS, keys, **kwargs).completion_ids
    assert torch.equal(fast, generic) and fast.shape[1] > 3
