"""What a training run tells the outside: the callback interface, and the progress bar and log line built on it.

The trainer only calls callbacks (on the main process); how a run is shown (a terminal bar, a log line for
Dagster's run log, a tracker) is each callback's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import TrainResult


class TrainerCallback:
    """Receives the run's events; the pipeline subclasses it to stream metrics to its tracker."""

    def on_train_begin(self, info: dict[str, Any]) -> None: ...
    def on_step_end(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def on_train_end(self, result: TrainResult) -> None: ...


class ProgressBar(TrainerCallback):
    """A tqdm bar with the step's loss, divergence and sampling speed (the `sdft train` terminal view)."""

    def __init__(self, description: str = "train"):
        self.description, self.bar = description, None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=info["total_steps"], initial=info["resumed_from"] or 0, desc=self.description, dynamic_ncols=True
        )

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.bar.set_postfix(progress_fields(metrics), refresh=False)
        self.bar.update(1)

    def on_train_end(self, result: TrainResult) -> None:
        self.bar.close()


def progress_fields(metrics: dict[str, float]) -> dict[str, str]:
    """What the progress bar shows of a step's metrics."""
    fields = {"loss": f"{metrics['loss']:.4f}"}
    if "divergence" in metrics:
        fields["kl"] = f"{metrics['divergence']:.4f}"
    if "generated_tokens_per_s" in metrics:
        fields["tok/s"] = f"{metrics['generated_tokens_per_s']:.0f}"
    return fields


def progress_line(step: int, total: int, metrics: dict[str, float], elapsed_s: float, first_step: int = 0) -> str:
    """The progress bar as one log line, for logs that are not a terminal (Dagster's run log): the step, the
    bar's fields, and the pace and ETA since `first_step` (where this process started; a resumed run's earlier
    steps took no time here)."""
    pace = elapsed_s / max(step - first_step, 1)
    fields = {
        "step": f"{step}/{total}",
        **progress_fields(metrics),
        "s/step": f"{pace:.1f}",
        "ETA": format_duration((total - step) * pace),
    }
    return "  ".join(f"{name} {value}" for name, value in fields.items())


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
