"""Training progress as the Dagster run log shows it."""

import types

from pipelines.train_entry import PipesProgress
from sdft_core.callbacks import format_duration, progress_line


def test_a_progress_line_has_the_step_loss_tokens_per_second_and_an_eta_from_the_pace():
    line = progress_line(5, 20, {"loss": 0.5, "divergence": 0.25, "generated_tokens_per_s": 61.7}, elapsed_s=50.0)
    assert line == "step 5/20  loss 0.5000  kl 0.2500  tok/s 62  s/step 10.0  ETA 2m30s"
    # resumed at step 3: the pace counts only the steps this process ran
    assert progress_line(5, 20, {"loss": 0.5}, elapsed_s=50.0, first_step=3).endswith("s/step 25.0  ETA 6m15s")
    assert [format_duration(s) for s in (0, 59.4, 61, 2 * 3600 + 125)] == ["0s", "59s", "1m01s", "2h02m"]


class RecordedLog:
    """Stands in for the Pipes logger: keeps the lines the Dagster run log would receive."""

    def __init__(self):
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


def test_training_progress_reaches_the_run_log_first_step_then_every_30_s_and_last_step():
    now = [0.0]
    pipes = types.SimpleNamespace(log=RecordedLog())
    progress = PipesProgress(pipes, every_s=30, clock=lambda: now[0])
    progress.on_train_begin({"total_steps": 100, "resumed_from": None})
    for step in range(1, 101):
        now[0] += 2.0  # 2 s per step
        progress.on_step_end(step, {"loss": 1.0 / step})
    assert pipes.log.lines[0].startswith("training: ")
    logged_steps = [int(line.split()[1].split("/")[0]) for line in pipes.log.lines[1:]]
    assert logged_steps == [1, 16, 31, 46, 61, 76, 91, 100]
    assert pipes.log.lines[2] == "step 16/100  loss 0.0625  s/step 2.0  ETA 2m48s"


def test_evaluation_progress_reaches_the_run_log_at_each_tasks_end_and_every_30_s_within_one():
    from pipelines.metadata import progress_log

    now = [0.0]
    log = RecordedLog()
    report = progress_log(log, "candidate", every_s=30, clock=lambda: now[0])
    for done in range(16, 401, 16):  # 25 batches of 16 items, 5 s each
        now[0] += 5.0
        report("hellaswag", min(done, 400), 400)
    report("boolq", 16, 16)
    assert log.lines == [f"evaluating candidate: hellaswag {n}/400" for n in (96, 192, 288, 384, 400)] + [
        "evaluating candidate: boolq 16/16"
    ]
