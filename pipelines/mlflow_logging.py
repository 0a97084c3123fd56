"""What the pipeline and the experiments log to MLflow, written once: each training step's metrics (a trainer
callback), named values as one metric batch, and a nested config as flat params.

No Dagster and no torch here: `experiments/study.py` imports it with only the `experiment` extra (MLflow)
installed, and the assets' module when the code location loads.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from sdft_core.callbacks import TrainerCallback

MAX_PARAM_CHARS = 6000  # MLflow refuses longer param values
PARAMS_PER_REQUEST = 100  # MLflow's limit on params in one log_batch


class MlflowSteps(TrainerCallback):
    """Each optimizer step's metrics as `train/<name>` at that step, and the last checkpoint as a run tag (a
    resumed run can be traced to the checkpoint it left). `tracking_uri` None: MLflow's own (the environment's, or
    what `mlflow.set_tracking_uri` set)."""

    def __init__(self, run_id: str, tracking_uri: str | None = None):
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri=tracking_uri), run_id

    def on_step_end(self, step, metrics):
        values = {f"train/{name}": value for name, value in metrics.items() if name != "step"}
        self.client.log_batch(self.run_id, metrics=metric_batch(values, step))

    def on_checkpoint(self, step, path):
        self.client.set_tag(self.run_id, "last_checkpoint", str(path))


def metric_batch(values: Mapping[str, float], step: int = 0, model_id: str | None = None) -> list:
    """{name: value} as MLflow metrics of one timestamp, for `MlflowClient.log_batch`; `model_id` links them to a
    logged model (shown on the model's page and its registry versions)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(name, float(value), now, step, model_id=model_id) for name, value in values.items()]


def log_flat_params(client, run_id: str, config: Mapping[str, Any]) -> None:
    """A nested config (e.g. `TrainConfig.to_dict()`) as dotted params, so that two runs' settings compare field
    by field in the MLflow UI."""
    from mlflow.entities import Param

    params = [Param(name, str(value)[:MAX_PARAM_CHARS]) for name, value in _flatten(config).items()]
    for start in range(0, len(params), PARAMS_PER_REQUEST):
        client.log_batch(run_id, params=params[start : start + PARAMS_PER_REQUEST])


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def printable_uri(uri: str) -> str:
    """A tracking or database URI as it may be printed or logged: its password replaced by ***."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))


def dvc_dataset_input(name: str, dvc_md5: str, source: Mapping[str, Any], context: str, rows: int | None = None):
    """A run input in MLflow's dataset lineage whose digest is the data's DVC hash (`<md5>.dir` for a folder), so
    the run's Datasets tab names exactly the `dvc checkout` that gives its data back. `source` says where (the
    path in the repository, the .dvc file, the commit); `context` is MLflow's `mlflow.data.context` (training,
    eval)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = json.dumps({"num_rows": rows}) if rows is not None else None
    dataset = Dataset(name, dvc_md5, "dvc", json.dumps(dict(source), sort_keys=True), profile=profile)
    return DatasetInput(dataset, [InputTag("mlflow.data.context", context)])


def source_tags(name: str, git_commit: str | None) -> dict[str, str]:
    """MLflow's own source tags (shown in the run's header and searchable): what ran, and at which commit."""
    tags = {"mlflow.source.type": "JOB", "mlflow.source.name": name}
    if git_commit:
        tags["mlflow.source.git.commit"] = git_commit
    return tags
