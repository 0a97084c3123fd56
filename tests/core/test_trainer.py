import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sdft_core.checkpoint import list_checkpoints
from sdft_core.config import LoraSettings, RolloutConfig, TeacherConfig, TrainConfig
from sdft_core.records import records_from_dicts
from sdft_core.trainer import Trainer, TrainerCallback, cosine_with_warmup, train
from tests.tiny import save_tiny_model, toy_records


@pytest.fixture(scope="module")
def peaky_model_dir(tmp_path_factory):
    """Larger initial weights give peaked distributions, so teacher and student clearly disagree at first."""
    return save_tiny_model(tmp_path_factory.mktemp("peaky"), init_std=0.3)


@pytest.fixture(scope="module")
def records():
    return records_from_dicts(toy_records(12)).accepted


def config(model_dir, output_dir, **overrides):
    fields = dict(
        model=str(model_dir),
        output_dir=str(output_dir),
        max_steps=6,
        batch_size=4,
        micro_batch_size=2,
        learning_rate=3e-3,
        warmup_steps=2,
        checkpoint_every=2,
        rollout=RolloutConfig(max_new_tokens=10),
    )
    return TrainConfig(**(fields | overrides))


def fixed_batch_values(trainer, steps):
    rows = trainer.step_rows(0)
    completions, _ = trainer.rollouts(rows, {})  # the pass serves one step; later steps run the prompts again
    values = []
    for _ in range(steps):
        out = trainer.accumulate_gradients(rows, completions, {})
        trainer.apply_update({})
        values.append(out["token_value_sum"] / out["loss_tokens"])
    return values


def test_sdft_steps_on_a_fixed_batch_lower_the_divergence(peaky_model_dir, records, tmp_path):
    trainer = Trainer(config(peaky_model_dir, tmp_path, teacher=TeacherConfig(kind="frozen")), records[:4])
    values = fixed_batch_values(trainer, 12)
    assert values[0] > 0.5
    assert values[-1] < 0.3 * values[0]


def test_sft_lowers_its_cross_entropy(peaky_model_dir, records, tmp_path):
    trainer = Trainer(config(peaky_model_dir, tmp_path, method="sft"), records[:4])
    values = fixed_batch_values(trainer, 12)
    assert values[-1] < 0.5 * values[0]


def test_dft_lowers_its_cross_entropy(peaky_model_dir, records, tmp_path):
    trainer = Trainer(config(peaky_model_dir, tmp_path, method="dft", learning_rate=3e-2), records[:4])
    values = fixed_batch_values(trainer, 12)
    assert values[-1] < values[0] - 0.5


def test_full_run_writes_model_metrics_and_checkpoints(peaky_model_dir, records, tmp_path):
    events = []

    class Recorder(TrainerCallback):
        def on_train_begin(self, info):
            events.append(("begin", info["total_steps"]))

        def on_step_end(self, step, metrics):
            events.append(("step", step, metrics["loss"]))

        def on_checkpoint(self, step, path):
            events.append(("checkpoint", step))

        def on_train_end(self, result):
            events.append(("end", result.steps))

    result = train(config(peaky_model_dir, tmp_path, keep_checkpoints=2), records, callbacks=[Recorder()])
    assert result.steps == 6 and (result.model_dir / "model.safetensors").exists()
    assert (result.model_dir / "tokenizer.json").exists()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    first = metrics[0]
    for key in (
        "loss",
        "divergence",
        "grad_norm",
        "learning_rate",
        "generated_tokens_per_s",
        "time_generation",
        "time_teacher",
        "time_student",
        "time_optimizer",
        "eos_fraction",
        "completion_tokens_mean",
    ):
        assert math.isfinite(first[key]), key
    assert first["time_generation"] > 0 and first["time_teacher"] > 0 and first["time_student"] > 0
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    assert events[0] == ("begin", 6) and events[-1] == ("end", 6)
    assert [e[1] for e in events if e[0] == "checkpoint"] == [2, 4, 6]


def test_a_fresh_start_in_a_used_directory_logs_only_its_own_steps(peaky_model_dir, records, tmp_path):
    train(config(peaky_model_dir, tmp_path, max_steps=3), records)
    for checkpoint in list_checkpoints(tmp_path):  # kept weights, dropped checkpoints: the next run starts afresh
        shutil.rmtree(checkpoint)
    again = train(config(peaky_model_dir, tmp_path, max_steps=3), records)
    assert again.resumed_from is None
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]


def test_a_step_whose_samples_all_end_inside_the_loss_mask_warns(peaky_model_dir, records, tmp_path, caplog):
    """Measured in the study: SDFT at a high rate learned to answer with EOS at once; with the first 3 tokens out
    of the loss such a step has no loss token, changes nothing, and the student stays there. Say so."""
    trainer = Trainer(config(peaky_model_dir, tmp_path), records)
    normal = trainer.train_step()
    assert normal["loss_tokens_per_row"] > 0
    eos = trainer.tokenizer.eos_token_id
    trainer.generate = lambda rows, trainable_prompt_pass=False: ([[eos] for _ in rows], None)
    with caplog.at_level("WARNING", logger="sdft_core.trainer"):
        collapsed = trainer.train_step()
    assert collapsed["loss_tokens_per_row"] == 0 and collapsed["loss"] == 0
    assert "step 2: no completion token carries loss" in caplog.text and "skip_first_tokens=3" in caplog.text


def test_learning_rate_schedule():
    multiplier = cosine_with_warmup(total_steps=10, warmup_steps=2, min_ratio=0.1)
    values = [multiplier(s) for s in range(10)]
    assert values[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(values[2:], values[3:]))
    assert values[-1] > 0.1 and abs(multiplier(10) - 0.1) < 1e-12


class Crash(RuntimeError):
    pass


def final_weights(output_dir):
    return load_file(output_dir / "model" / "model.safetensors")


@pytest.mark.parametrize("method", ["sdft", "sft"])
def test_kill_and_resume_gives_the_same_weights(peaky_model_dir, records, tmp_path, method):
    reference = train(config(peaky_model_dir, tmp_path / "reference", method=method, max_steps=7), records)

    class CrashAfterStep(TrainerCallback):
        def on_step_end(self, step, metrics):
            if step == 5:  # between the checkpoints of steps 4 and 6
                raise Crash

    crashed = config(peaky_model_dir, tmp_path / "crashed", method=method, max_steps=7)
    with pytest.raises(Crash):
        train(crashed, records, callbacks=[CrashAfterStep()])
    assert [p.name for p in list_checkpoints(tmp_path / "crashed")] == ["step-000002", "step-000004"]
    resumed = train(crashed, records)
    assert resumed.resumed_from == 4 and resumed.steps == 7
    want, got = final_weights(tmp_path / "reference"), final_weights(tmp_path / "crashed")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))
    assert reference.final_metrics["loss"] == pytest.approx(resumed.final_metrics["loss"], rel=1e-6)


def test_crash_while_writing_a_checkpoint_resumes_from_the_previous_one(
    peaky_model_dir, records, tmp_path, monkeypatch
):
    reference = train(config(peaky_model_dir, tmp_path / "reference"), records)
    original_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt") and "step-000004" in str(path):
            raise Crash("disk full")
        calls["n"] += 1
        return original_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(Crash):
        train(config(peaky_model_dir, tmp_path / "crashed"), records)
    monkeypatch.setattr(torch, "save", original_save)
    assert [p.name for p in list_checkpoints(tmp_path / "crashed")] == ["step-000002"]
    resumed = train(config(peaky_model_dir, tmp_path / "crashed"), records)
    assert resumed.resumed_from == 2
    want, got = final_weights(tmp_path / "reference"), final_weights(tmp_path / "crashed")
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert reference.steps == resumed.steps


@pytest.mark.parametrize("torn", ["model.safetensors", "optimizer.pt", "state.json"])
def test_a_torn_newest_checkpoint_is_skipped_for_the_one_before_it(peaky_model_dir, records, tmp_path, caplog, torn):
    """A checkpoint that was renamed into place but whose file is cut short (a disk that lied about a flush, a
    copy cut short): the resume reads each checkpoint whole first, says which it skips, and ends where an
    uninterrupted run ends."""
    reference = train(config(peaky_model_dir, tmp_path / "reference"), records)

    class CrashAfterStep(TrainerCallback):
        def on_step_end(self, step, metrics):
            if step == 5:
                raise Crash

    crashed = config(peaky_model_dir, tmp_path / "crashed")
    with pytest.raises(Crash):
        train(crashed, records, callbacks=[CrashAfterStep()])
    newest = list_checkpoints(tmp_path / "crashed")[-1]
    assert newest.name == "step-000004"
    data = (newest / torn).read_bytes()
    (newest / torn).write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="sdft_core.trainer"):
        resumed = train(crashed, records)
    assert resumed.resumed_from == 2
    assert "step-000004 is unreadable" in caplog.text
    want, got = final_weights(tmp_path / "reference"), final_weights(tmp_path / "crashed")
    assert all(torch.equal(want[k], got[k]) for k in want)
    steps = [json.loads(line)["step"] for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    assert reference.steps == resumed.steps


def test_resume_refuses_a_checkpoint_of_other_examples_of_the_same_number(peaky_model_dir, records, tmp_path):
    train(config(peaky_model_dir, tmp_path, max_steps=2), records)
    edited = records_from_dicts([dict(r.to_dict(), demonstration=r.demonstration + " (edited)") for r in records])
    with pytest.raises(ValueError, match="the data changed since the checkpoint"):
        train(config(peaky_model_dir, tmp_path, max_steps=2), edited.accepted)


def test_a_kill_while_the_metrics_log_is_cut_back_leaves_it_whole(peaky_model_dir, records, tmp_path, monkeypatch):
    """The log is rewritten beside itself and renamed over: a kill before the rename leaves the old log."""
    import sdft_core.checkpoint as checkpoint

    train(config(peaky_model_dir, tmp_path, max_steps=3), records)
    log = tmp_path / "metrics.jsonl"
    before = log.read_text()

    def killed(*args):
        raise Crash("killed during the rename")

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(Crash):
        checkpoint.truncate_metrics(log, 1)
    assert log.read_text() == before and all(json.loads(line) for line in before.splitlines())
    monkeypatch.undo()
    checkpoint.truncate_metrics(log, 1)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1]


def test_a_second_run_in_a_folder_that_is_training_fails_at_once_naming_the_holder(peaky_model_dir, records, tmp_path):
    import subprocess
    import sys

    from sdft_core.run_lock import RunFolderBusy, run_folder_lock

    with run_folder_lock(tmp_path):  # a run that is training there
        with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()} on .* is training in this folder"):
            train(config(peaky_model_dir, tmp_path, max_steps=1), records)
    assert not list_checkpoints(tmp_path) and not (tmp_path / "metrics.jsonl").exists()
    # a holder killed mid-run leaves nothing behind: the operating system drops its lock
    code = f"from sdft_core.run_lock import run_folder_lock\nwith run_folder_lock({str(tmp_path)!r}):\n    os._exit(9)"
    code = "import os\n" + code
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert train(config(peaky_model_dir, tmp_path, max_steps=1), records).steps == 1


def test_resume_refuses_a_different_config(peaky_model_dir, records, tmp_path):
    train(config(peaky_model_dir, tmp_path, max_steps=2), records)
    with pytest.raises(ValueError, match="different training config"):
        train(config(peaky_model_dir, tmp_path, max_steps=2, learning_rate=1e-4), records)


def test_every_example_is_seen_once_per_epoch(peaky_model_dir, records, tmp_path):
    trainer = Trainer(config(peaky_model_dir, tmp_path, max_steps=None, epochs=2, batch_size=4), records)
    assert trainer.total_steps == 6
    seen = [ex.index for step in range(6) for ex, _ in trainer.step_rows(step)]
    assert sorted(seen[:12]) == list(range(12)) and sorted(seen[12:]) == list(range(12))
    assert seen[:12] != seen[12:]  # reshuffled per epoch


def test_records_that_cannot_fit_are_rejected_with_the_reason(peaky_model_dir, records, tmp_path):
    too_long = records_from_dicts([{"id": "long", "prompt": "word " * 400, "demonstration": "d"}]).accepted
    cfg = config(peaky_model_dir, tmp_path, max_steps=1)
    cfg.prompts.max_prompt_tokens = 200
    result = train(cfg, list(records) + too_long)
    (rejected,) = result.rejected
    assert "record 'long'" in rejected.reason and "max_prompt_tokens=200" in rejected.reason
    rows = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert rows[0]["raw"]["id"] == "long"


def test_lora_training_changes_only_adapters_and_saves_a_merged_model(peaky_model_dir, records, tmp_path):
    cfg = config(peaky_model_dir, tmp_path, max_steps=2, lora=LoraSettings(r=4, alpha=8))
    trainer = Trainer(cfg, records)
    assert trainer.teacher is not None and all("lora_" in n for n in trainer.teacher.names)
    result = trainer.train()
    merged = load_file(result.model_dir / "model.safetensors")
    base = load_file(peaky_model_dir / "model.safetensors")
    assert merged.keys() == base.keys()  # a plain model directory, adapters merged
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_num_generations_samples_each_prompt_several_times(peaky_model_dir, records, tmp_path):
    rollout = RolloutConfig(max_new_tokens=10, num_generations=2)
    trainer = Trainer(config(peaky_model_dir, tmp_path, batch_size=2, rollout=rollout), records)
    rows = trainer.step_rows(0)
    assert len(rows) == 4 and rows[0][0] is rows[1][0] and rows[2][0] is rows[3][0]
    assert len({key for _, key in rows}) == 4
    completions, _ = trainer.rollouts(rows, {})
    assert completions[0] != completions[1]  # two independent samples of the same prompt
    metrics = trainer.train_step()
    assert metrics["step"] == 1 and math.isfinite(metrics["loss"])


def layer_calls_per_step(trainer):
    calls = []
    # a submodule: the layer itself is checkpointed at `forward`, so only its children run again in backward
    handle = trainer.lm.model.layers[0].self_attn.register_forward_hook(lambda *args: calls.append(1))
    rows = trainer.step_rows(0)
    completions, prompt = trainer.rollouts(rows, {})
    calls.clear()
    trainer.accumulate_gradients(rows, completions, {}, prompt)
    handle.remove()
    return len(calls)


def test_activation_checkpointing_recomputes_and_gives_the_same_update(peaky_model_dir, records, tmp_path):
    plain_calls = layer_calls_per_step(Trainer(config(peaky_model_dir, tmp_path / "a"), records))
    ckpt_calls = layer_calls_per_step(
        Trainer(config(peaky_model_dir, tmp_path / "b", gradient_checkpointing=True), records)
    )
    assert plain_calls == 2  # 2 micro-batches (the teacher is its own module)
    assert ckpt_calls == 4  # the student's layer runs again in each backward pass
    plain = train(config(peaky_model_dir, tmp_path / "plain", max_steps=2), records)
    checkpointed = train(config(peaky_model_dir, tmp_path / "ckpt", max_steps=2, gradient_checkpointing=True), records)
    want = load_file(plain.model_dir / "model.safetensors")
    got = load_file(checkpointed.model_dir / "model.safetensors")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_on_cpu_freed_memory_stays_mapped_for_the_next_step():
    """Freed large tensors stay in the process (no page faults to map them again next step)."""
    import os
    import sys

    from sdft_core.trainer import retain_freed_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")

    def resident_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    assert retain_freed_memory()
    block = torch.ones(64 * 2**20 // 4)  # 64 MB, above glibc's largest mmap threshold
    held = resident_mb()
    del block
    assert resident_mb() > held - 8  # still mapped: a default glibc would have returned the 64 MB


def test_the_prompt_pass_taken_for_sampling_is_the_prompt_part_of_the_training_forward(
    peaky_model_dir, records, tmp_path
):
    """One micro-batch per step: the student's prompts run once, with gradients, for sampling and for training
    (the training forward runs only the completions), and the gradient is the one of running them twice."""
    reused = Trainer(config(peaky_model_dir, tmp_path / "reused", micro_batch_size=4), records)
    plain = Trainer(config(peaky_model_dir, tmp_path / "plain", micro_batch_size=4), records)
    plain.reuse_prompt_pass = False
    assert reused.reuse_prompt_pass
    widths, grads, samples = {}, {}, {}
    for name, trainer in (("reused", reused), ("plain", plain)):
        rows = trainer.step_rows(0)
        samples[name], prompt = trainer.rollouts(rows, {})
        assert (prompt is not None) == (name == "reused")
        seen = widths.setdefault(name, [])
        layer = trainer.lm.model.layers[0]
        handle = layer.register_forward_hook(lambda module, args, out, seen=seen: seen.append(args[0].shape[1]))
        trainer.accumulate_gradients(rows, samples[name], {}, prompt)
        handle.remove()
        grads[name] = {n: p.grad.clone() for n, p in trainer.lm.named_parameters()}
        assert math.isfinite(trainer.train_step()["loss"])  # and on to the next step
    assert samples["reused"] == samples["plain"]
    assert widths["reused"] == [max(len(c) for c in samples["reused"]) - 1]  # the completions alone, once
    assert widths["plain"][0] > widths["reused"][0] + 5  # prompts and completions
    for name, want in grads["plain"].items():
        torch.testing.assert_close(grads["reused"][name], want, rtol=1e-4, atol=1e-6 * want.abs().max().item())


def test_micro_batches_hold_rows_of_similar_length_and_the_gradient_is_the_whole_batchs(
    peaky_model_dir, records, tmp_path
):
    whole = Trainer(config(peaky_model_dir, tmp_path / "whole", micro_batch_size=4), records)
    whole.reuse_prompt_pass = False
    split = Trainer(config(peaky_model_dir, tmp_path / "split", micro_batch_size=2), records)
    grads, micro_batches, samples = {}, {}, {}
    for name, trainer in (("whole", whole), ("split", split)):
        rows = trainer.step_rows(0)
        samples[name], _ = trainer.rollouts(rows, {})
        seen = micro_batches.setdefault(name, [])
        micro_step = trainer.micro_step

        def spied(part, completions, timings, prompt=None, trainer=trainer, micro_step=micro_step, seen=seen):
            seen.append([trainer.forward_length(ex, c) for (ex, _), c in zip(part, completions)])
            return micro_step(part, completions, timings, prompt)

        trainer.micro_step = spied
        trainer.accumulate_gradients(rows, samples[name], {})
        grads[name] = {n: p.grad.clone() for n, p in trainer.lm.named_parameters()}
    assert samples["whole"] == samples["split"]
    first, second = micro_batches["split"]
    assert sorted(first + second) == sorted(micro_batches["whole"][0])
    assert max(first) <= min(second)  # the shorter rows together, then the longer ones
    assert len(set(micro_batches["whole"][0])) > 2  # lengths differ, so the grouping is a real reordering
    for name, want in grads["whole"].items():
        torch.testing.assert_close(grads["split"][name], want, rtol=1e-4, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize(
    "overrides",
    [
        dict(micro_batch_size=2),
        dict(gradient_checkpointing=True),
        dict(method="sft"),
        dict(lora=LoraSettings(r=4, alpha=8, dropout=0.1)),
    ],
)
def test_the_prompt_pass_is_run_again_where_reusing_it_would_hold_or_change_too_much(
    peaky_model_dir, records, tmp_path, overrides
):
    trainer = Trainer(config(peaky_model_dir, tmp_path, **({"micro_batch_size": 4} | overrides)), records)
    assert not trainer.reuse_prompt_pass
