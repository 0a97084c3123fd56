"""The training process the `sdft_model` asset starts with `accelerate launch` (one process per GPU, or the CPU).

It trains with sdft_core, streams each step's metrics to the MLflow run and, through Dagster Pipes, to the
Dagster run's log; the main process reports the result as the asset's metadata. Started again with the same
--config it resumes from the run's last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipelines.mlflow_logging import MlflowSteps
from sdft_core.callbacks import TrainerCallback, progress_line
from sdft_core.config import TrainConfig
from sdft_core.records import ReadLimits, read_demonstrations
from sdft_core.trainer import TrainResult, retain_freed_memory, train


class PipesProgress(TrainerCallback):
    """Progress in the Dagster run's log: the first step, then one line per `every_s` at most, and the last."""

    def __init__(self, pipes, every_s: float = 30.0, clock=time.monotonic):
        self.pipes, self.every_s, self.clock = pipes, every_s, clock

    def on_train_begin(self, info):
        self.total, self.first_step = info["total_steps"], info["resumed_from"] or 0
        self.started, self.logged = self.clock(), None
        self.pipes.log.info(f"training: {json.dumps(info)}")

    def on_step_end(self, step, metrics):
        now = self.clock()
        if self.logged is None or step == self.total or now - self.logged >= self.every_s:
            self.pipes.log.info(progress_line(step, self.total, metrics, now - self.started, self.first_step))
            self.logged = now

    def on_checkpoint(self, step, path):
        self.pipes.log.info(f"checkpoint {path}")


def main(argv: list[str] | None = None) -> int:
    import os

    from accelerate import PartialState
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig as JSON")
    parser.add_argument("--data", type=Path, required=True, help="curated demonstrations")
    parser.add_argument("--mlflow-run-id", help="stream metrics to this MLflow run")
    parser.add_argument("--read-limits", default="{}", help="ReadLimits as JSON: curation's, which wrote --data")
    args = parser.parse_args(argv)

    config = TrainConfig.from_dict(json.loads(args.config.read_text()))
    loaded = read_demonstrations(args.data, ReadLimits.from_dict(json.loads(args.read_limits)))
    retain_freed_memory()  # this process only trains: keep freed memory mapped (see the function)
    main_process = PartialState().is_main_process
    callbacks: list[TrainerCallback] = []
    if main_process and args.mlflow_run_id:
        callbacks.append(MlflowSteps(args.mlflow_run_id, os.environ.get("MLFLOW_TRACKING_URI")))
    if not (main_process and DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ):
        train(config, loaded.accepted, callbacks, loaded.rejected)
        return 0
    with open_dagster_pipes() as pipes:
        result: TrainResult = train(config, loaded.accepted, callbacks + [PipesProgress(pipes)], loaded.rejected)
        pipes.report_asset_materialization(
            metadata={
                "trained_steps": result.steps,
                "resumed_from_step": result.resumed_from or 0,
                "records_refused_by_trainer": len(result.rejected),
                **{f"final_{k}": float(v) for k, v in result.final_metrics.items() if k in ("loss", "grad_norm")},
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
