"""The command line, run as users run it: in a subprocess, and under `accelerate launch` with two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import save_tiny_model, toy_records

BIN = Path(sys.executable).parent
COMMON = ["--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "3e-3",
          "--max-new-tokens", "8", "--warmup-steps", "1", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("cli-model"), init_std=0.3)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-data") / "demos.jsonl"
    rows = toy_records(8) + [{"id": "bad", "prompt": "q"}]  # one record lacks its demonstration
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_train_cli_runs_and_reports(model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result = run([sys.executable, "-m", "sdft_core.cli", "train", "--model", str(model_dir), "--data",
                  str(data_file), "--output", str(out), *COMMON, "--set", "loss.top_k=16"])
    summary = json.loads(result.stdout)
    assert summary["steps"] == 3 and summary["rejected"] == 1
    assert "rejected" in result.stderr and "field 'demonstration': missing required field" in result.stderr
    assert (out / "model" / "model.safetensors").exists()
    saved = json.loads((out / "config.json").read_text())
    assert saved["loss"]["top_k"] == 16 and saved["method"] == "sdft"
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["location"] == "line 9" and rejected[0]["field"] == "demonstration"



def test_generate_prints_the_greedy_completion(model_dir):
    from sdft_core.models import load_model, load_tokenizer
    from sdft_core.prompts import encode_messages
    from sdft_core.rollout import sample_completions

    generated = run([str(BIN / "sdft"), "generate", "--model", str(model_dir), "--prompt", "What is France?",
                     "--max-new-tokens", "6"]).stdout
    tokenizer, model = load_tokenizer(str(model_dir)), load_model(str(model_dir))
    ids = encode_messages(tokenizer, [{"role": "user", "content": "What is France?"}])
    rollout = sample_completions(model, [ids], [0], pad_token_id=tokenizer.pad_token_id,
                                 eos_token_ids=[tokenizer.eos_token_id], max_new_tokens=6, temperature=0)
    expected = tokenizer.decode(rollout.completion_ids[0][rollout.completion_mask[0].bool()],
                                skip_special_tokens=True)
    assert expected.strip() and generated == expected + "\n"


def test_strict_mode_and_bad_flags_fail_clearly(model_dir, data_file, tmp_path):
    strict = subprocess.run([sys.executable, "-m", "sdft_core.cli", "train", "--model", str(model_dir), "--data",
                             str(data_file), "--output", str(tmp_path), "--strict", *COMMON],
                            capture_output=True, text=True, timeout=300)
    assert strict.returncode != 0 and "demos.jsonl:line 9: field 'demonstration'" in strict.stderr
    unknown = subprocess.run([sys.executable, "-m", "sdft_core.cli", "train", "--data", str(data_file),
                              "--set", "loss.nope=1"], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "unknown config key(s) loss.nope" in unknown.stderr


def test_help_explains_the_commands():
    result = run([str(BIN / "sdft"), "train", "--help"])
    for text in ("--method {sdft,sft,dft}", "--data", "accelerate launch", "resumes from its last checkpoint"):
        assert text in result.stdout


def test_two_processes_make_the_same_update_as_one(model_dir, data_file, tmp_path):
    base = ["train", "--model", str(model_dir), "--data", str(data_file), *COMMON]
    run([sys.executable, "-m", "sdft_core.cli", *base, "--output", str(tmp_path / "one")])
    run([str(BIN / "accelerate"), "launch", "--num_processes", "2", "--num_machines", "1", "--cpu",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sdft_core.cli", *base,
         "--output", str(tmp_path / "two")])
    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    initial = load_file(model_dir / "model.safetensors")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(one[name], initial[name]) for name in one)  # training did move the weights
    metrics_one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    metrics_two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(metrics_one, metrics_two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["completion_tokens_mean"] == b["completion_tokens_mean"]
