"""The command line, run as users run it: in a subprocess, and under `accelerate launch` with two processes."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.readiness import HANG_GUARD_S
from tests.tiny import save_tiny_model, toy_records

BIN = Path(sys.executable).parent
COMMON = [
    "--max-steps",
    "3",
    "--batch-size",
    "4",
    "--micro-batch-size",
    "2",
    "--lr",
    "3e-3",
    "--max-new-tokens",
    "8",
    "--warmup-steps",
    "1",
    "--checkpoint-every",
    "2",
]


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
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_train_cli_runs_and_reports(model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result = run(
        [
            sys.executable,
            "-m",
            "sdft_core.cli",
            "train",
            "--model",
            str(model_dir),
            "--data",
            str(data_file),
            "--output",
            str(out),
            *COMMON,
            "--set",
            "loss.top_k=16",
        ]
    )
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

    generated = run(
        [
            str(BIN / "sdft"),
            "generate",
            "--model",
            str(model_dir),
            "--prompt",
            "What is France?",
            "--max-new-tokens",
            "6",
        ]
    ).stdout
    tokenizer, model = load_tokenizer(str(model_dir)), load_model(str(model_dir))
    ids = encode_messages(tokenizer, [{"role": "user", "content": "What is France?"}])
    rollout = sample_completions(
        model,
        [ids],
        [0],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_ids=[tokenizer.eos_token_id],
        max_new_tokens=6,
        temperature=0,
    )
    expected = tokenizer.decode(rollout.completion_ids[0][rollout.completion_mask[0].bool()], skip_special_tokens=True)
    assert expected.strip() and generated == expected + "\n"


def test_strict_mode_and_bad_flags_fail_clearly(model_dir, data_file, tmp_path):
    strict = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdft_core.cli",
            "train",
            "--model",
            str(model_dir),
            "--data",
            str(data_file),
            "--output",
            str(tmp_path),
            "--strict",
            *COMMON,
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert strict.returncode != 0 and "demos.jsonl:line 9: field 'demonstration'" in strict.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "sdft_core.cli", "train", "--data", str(data_file), "--set", "loss.nope=1"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert unknown.returncode == 2 and "unknown config key(s) loss.nope" in unknown.stderr
    wrong_type = subprocess.run(
        [sys.executable, "-m", "sdft_core.cli", "train", "--data", str(data_file), "--set", "learning_rate=fast"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert wrong_type.returncode == 2 and "learning_rate must be a number, got 'fast'" in wrong_type.stderr


def test_help_explains_the_commands():
    help_text = " ".join(run([str(BIN / "sdft"), "train", "--help"]).stdout.split())  # as wrapped for any width
    for text in (
        "--method {sdft,sft,dft}",
        "--data",
        "accelerate launch",
        "resumes from its last checkpoint",
        "--loss.skip-first-tokens N completion tokens left out of the loss",
        "(default: 3; at least 0)",
    ):
        assert text in help_text


LAUNCH = [
    str(BIN / "accelerate"),
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]  # --multi_gpu runs 2 processes on CPUs too


def weights(run_dir):
    return load_file(run_dir / "model" / "model.safetensors")


LEARNING_RATE = float(COMMON[COMMON.index("--lr") + 1])


def assert_same_update(two: dict, one: dict, initial: dict) -> None:
    """Two processes' weights against one process's: the same update up to float32 rounding. The two sum each
    gradient in a different order (an all-reduce of halves), and Adam divides by the root of its second moment,
    so on an element whose gradient is near zero a rounding-level difference can move that element by a few
    percent of one step (lr); a wrong update (a lost micro-batch, a gradient not averaged) differs by whole steps
    and across whole tensors."""
    assert one.keys() == two.keys()
    for name in one:
        difference, update = (two[name] - one[name]).double(), (one[name] - initial[name]).double()
        assert difference.abs().max() <= 0.1 * LEARNING_RATE, name
        assert difference.norm() <= 1e-3 * update.norm() + 1e-7, name
    assert any(not torch.equal(one[name], initial[name]) for name in one)  # training did move the weights


def processes(run_dir):
    (checkpoint,) = sorted((run_dir / "checkpoints").iterdir())[-1:]
    return json.loads((checkpoint / "state.json").read_text())["processes"]


@pytest.fixture(scope="module")
def single_process_run(model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    run(
        [
            sys.executable,
            "-m",
            "sdft_core.cli",
            "train",
            "--model",
            str(model_dir),
            "--data",
            str(data_file),
            *COMMON,
            "--output",
            str(out),
        ]
    )
    return out


@pytest.mark.slow  # two accelerate launches per case, ~30 s
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_make_the_same_update_as_one(model_dir, data_file, single_process_run, tmp_path, sharding):
    out = tmp_path / sharding
    run(
        [
            *LAUNCH,
            "-m",
            "sdft_core.cli",
            "train",
            "--model",
            str(model_dir),
            "--data",
            str(data_file),
            *COMMON,
            "--output",
            str(out),
            "--set",
            f"fsdp={'true' if sharding == 'fsdp' else 'false'}",
        ]
    )
    assert processes(out) == 2
    for checkpoint in (out / "checkpoints").iterdir():  # FSDP: each rank its shards, nothing gathered; DDP: whole
        files = {p.name for p in checkpoint.iterdir()}
        if sharding == "fsdp":
            assert {".metadata", "__0_0.distcp", "__1_0.distcp", "state.json"} <= files, files
            assert not files & {"model.safetensors", "teacher.safetensors", "optimizer.pt"}, files
            assert json.loads((checkpoint / "state.json").read_text())["format"] == "dcp"
        else:
            assert {"model.safetensors", "teacher.safetensors", "optimizer.pt"} <= files, files
    assert_same_update(weights(out), weights(single_process_run), load_file(model_dir / "model.safetensors"))
    metrics_one = [json.loads(x) for x in (single_process_run / "metrics.jsonl").read_text().splitlines()]
    metrics_two = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics_one) == len(metrics_two) == 3
    for a, b in zip(metrics_one, metrics_two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["completion_tokens_mean"] == b["completion_tokens_mean"]


@pytest.mark.slow  # two launches, one per "machine", ~30 s
def test_two_machines_rendezvousing_on_loopback_make_the_same_update_as_one(
    model_dir, data_file, single_process_run, tmp_path, monkeypatch
):
    """The pipeline's launch command on two "machines": one `accelerate launch --num_machines 2` per rank, each
    with one CPU process, told the rendezvous by the environment (as torchrun and Kubernetes jobs do)."""
    from pipelines.defs.resources import Compute

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "two-machines"
    train = ["train", "--model", str(model_dir), "--data", str(data_file), *COMMON, "--output", str(out)]
    launches = []
    for rank in (0, 1):
        environment = {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        command = Compute(extra_launch_args=["--module"]).launch_command(Path("sdft_core.cli"), train)
        assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
        assert command[command.index("--machine_rank") + 1] == str(rank)
        log = (tmp_path / f"rank{rank}.log").open("w")
        launches.append(subprocess.Popen(command, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT))
    codes = [launch.wait(HANG_GUARD_S) for launch in launches]
    assert codes == [0, 0], [(tmp_path / f"rank{r}.log").read_text()[-3000:] for r in (0, 1)]
    assert processes(out) == 2
    assert_same_update(weights(out), weights(single_process_run), load_file(model_dir / "model.safetensors"))


def test_one_machine_needs_no_rendezvous_and_several_need_an_address(monkeypatch):
    from pipelines.defs.resources import Compute

    for name in ("SDFT_NUM_MACHINES", "NNODES", "MASTER_ADDR", "SDFT_MACHINE_RANK", "NODE_RANK", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    single = Compute().launch_command(Path("train.py"), [])
    assert single[single.index("--num_machines") + 1] == "1" and "--main_process_ip" not in single
    with pytest.raises(ValueError, match="2 machines: set MASTER_ADDR"):
        Compute(num_machines=2).launch_command(Path("train.py"), [])
    monkeypatch.setenv("SDFT_NUM_MACHINES", "4")
    monkeypatch.setenv("SDFT_MACHINE_RANK", "3")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    several = Compute(num_processes=8).launch_command(Path("train.py"), ["--x"])
    flags = dict(zip(several[3:-2:2], several[4:-2:2]))
    assert flags["--num_processes"] == "32" and flags["--num_machines"] == "4" and flags["--machine_rank"] == "3"
    assert flags["--main_process_ip"] == "10.0.0.1" and flags["--main_process_port"] == "29500"
    assert several[-2:] == ["train.py", "--x"]


@pytest.mark.slow  # four two-process launches, ~95 s
def test_sharded_run_killed_part_way_resumes_to_the_same_weights(model_dir, data_file, tmp_path):
    """An FSDP run killed during step 3 resumes from its sharded checkpoint of step 2, and a copy whose newest
    checkpoint has a corrupt shard (of the right length: it fails only while loading into the model, part-way)
    resumes from step 1; both end with the weights of an uninterrupted run."""
    settings = {
        "fsdp": True,
        "max_steps": 4,
        "batch_size": 4,
        "micro_batch_size": 2,
        "learning_rate": 3e-3,
        "warmup_steps": 1,
        "rollout": {"max_new_tokens": 8},
    }

    def worker(output, checkpoint_every, *extra):
        config = json.dumps({**settings, "checkpoint_every": checkpoint_every})
        return [
            *LAUNCH,
            str(Path(__file__).parents[1] / "distributed_worker.py"),
            *("--model", str(model_dir), "--data", str(data_file), "--config", config, "--output", str(output)),
            *extra,
        ]

    run(worker(tmp_path / "reference", 2))
    crashed = subprocess.run(
        worker(tmp_path / "crashed", 1, "--crash-after", "3"), capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert crashed.returncode != 0 and "simulated crash after step 3" in crashed.stderr
    assert sorted(p.name for p in (tmp_path / "crashed" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    shutil.copytree(tmp_path / "crashed", tmp_path / "torn")
    with (tmp_path / "torn" / "checkpoints" / "step-000002" / "__1_0.distcp").open("r+b") as shard:
        shard.write(b"\0" * 64)

    assert "resumed_from=2" in run(worker(tmp_path / "crashed", 1)).stdout
    torn = run(worker(tmp_path / "torn", 1))
    assert "resumed_from=1" in torn.stdout and "step-000002 is unreadable" in torn.stderr
    want = weights(tmp_path / "reference")
    for resumed in ("crashed", "torn"):
        got = weights(tmp_path / resumed)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=f"{resumed}: {name}")


def test_teacher_check_cli_reports_the_greedy_and_the_on_policy_check(model_dir, tmp_path):
    from sdft_core.skills import Skill, write_skill

    rows = [r | {"answers": [r["demonstration"]]} for r in toy_records(6)]
    folder = write_skill(
        Skill("toy", "toy", "short_answer", 4, "test", {"loss.skip_first_tokens": 1}, {"demonstrations": rows}),
        tmp_path,
    )
    result = run(
        [
            str(BIN / "sdft"),
            "teacher-check",
            "--skill",
            str(folder),
            "--model",
            str(model_dir),
            "--sample",
            "3",
            "--samples-per-prompt",
            "2",
        ]
    )
    report = json.loads(result.stdout)
    assert report["greedy"]["n"] == 3 and report["on_policy"]["n"] == 3
    assert report["on_policy"]["samples_per_prompt"] == 2 and report["on_policy"]["skip_first_tokens"] == 1
    assert report["on_policy"]["verdict"] and 0.0 <= report["on_policy"]["teacher_stop_probability"] <= 1.0
    # a random model answers nothing right: both checks warn, on standard error
    assert "SDFT needs a clearly better teacher" in result.stderr and "warning: no signal" in result.stderr
