"""The skill chain as the pipeline tests run it: its assets, its resources over a test folder, and a worker process
that registers one skill's evaluated candidate (the `registered_model` step alone) on a shared Dagster instance:
`python -m tests.pipelines.chain ROOT DAGSTER_HOME SKILL`.

The worker announces itself ready (ROOT/ready-SKILL) and waits for ROOT/go, so that registrations start together."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg

from pipelines.defs import assets
from pipelines.defs.resources import Compute, MlflowRegistry, SkillData

CHAIN = [
    assets.demonstrations,
    assets.curated_demonstrations,
    assets.teacher_contexts,
    assets.sdft_model,
    assets.sft_baseline,
    assets.benchmark_evaluation,
    assets.registered_model,
]
GATE_THAT_PASSES = {"min_gain": -1.0, "max_regression": 1.0}  # a tiny random model learns nothing


def resources(root: Path) -> dict:
    """The chain's resources over a test folder: data/, work/, mlflow.db, and the tiny model in tiny/."""
    return {
        "skill_data": SkillData(root=str(root / "data"), dvc_file=str(root / "data.dvc"), work_dir=str(root / "work")),
        "registry": MlflowRegistry(
            tracking_uri=f"sqlite:///{root}/mlflow.db", base_model=str(root / "tiny"), model_cache=str(root / "models")
        ),
        "compute": Compute(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def main(root: Path, home: Path, skill: str) -> int:
    (root / f"ready-{skill}").touch()
    deadline = time.monotonic() + 300
    while not (root / "go").exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.01)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(
            CHAIN,
            selection=[assets.registered_model],  # on the evaluation as its last run stored it
            partition_key=skill,
            instance=instance,
            resources=resources(root),
            run_config={"ops": {"registered_model": {"config": GATE_THAT_PASSES}}},
            raise_on_error=False,
        )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
