"""The Dagster code location end to end on a tiny random-weight model: a real Dagster instance, a real MLflow
registry (SQLite), real Accelerate subprocesses through Dagster Pipes."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from pipelines.defs import assets
from pipelines.defs.automation import DATA_VERSION_TAG, change_champion, nightly_retrain, skill_data_sensor
from pipelines.defs.notifications import Notifier, notify_on_failed_checks, notify_on_run_failure
from pipelines.defs.resources import SkillData
from sdft_core.lineage import dvc_dir_md5, git_commit
from tests.pipelines.chain import CHAIN, resources
from tests.readiness import HANG_GUARD_S, wait_until
from tests.tiny import save_tiny_model, toy_records

ROOT = Path(__file__).resolve().parents[2]
RUN_CONFIG = {
    "ops": {
        "curated_demonstrations": {"config": {"eval_fraction": 0.3}},
        "sdft_model": {
            "config": {"max_steps": 2, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0, "checkpoint_every": 1}
        },
        "sft_baseline": {"config": {"enabled": True}},  # trains sdft_model's config (2 steps) with method sft
        "benchmark_evaluation": {"config": {"prior_tasks": ["arc_easy", "boolq"], "prior_limit": 4, "batch_size": 8}},
    }
}


def write_skill(folder: Path, rows: list[dict], lines: list[str] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in lines)
    (folder / "demonstrations.jsonl").write_text(text)
    (folder / "skill.yaml").write_text(
        f"name: {folder.name}\ntask_type: qa\nscorer: short_answer\nmax_new_tokens: 8\n"
        "training:\n  rollout.max_new_tokens: 8\n"
    )
    return folder


def toy_skill_rows(n: int, offset: int = 0) -> list[dict]:
    rows = toy_records(n + offset)[offset:]
    return [r | {"answers": [r["demonstration"]]} for r in rows]


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.model = save_tiny_model(root / "tiny")
        self.resources = resources(root)
        self.skill_data, self.registry = self.resources["skill_data"], self.resources["registry"]

    def materialize(self, instance, skill: str, selection=None, run_config=RUN_CONFIG, raise_on_error=True):
        if not instance.has_dynamic_partition("skill", skill):
            instance.add_dynamic_partitions("skill", [skill])
        if selection is not None:  # run config may only name the selected assets
            names = {a.key.to_user_string() for a in selection}
            run_config = {"ops": {k: v for k, v in run_config["ops"].items() if k in names}}
        return dg.materialize(
            CHAIN,
            selection=selection,
            partition_key=skill,
            instance=instance,
            resources=self.resources,
            run_config=run_config,
            raise_on_error=raise_on_error,
        )

    def versions(self):
        client = self.registry.client()  # search results leave aliases out: fetch each version
        found = client.search_model_versions(f"name = '{self.registry.model_name}'")
        return [client.get_model_version(v.name, v.version) for v in sorted(found, key=lambda v: int(v.version))]

    def champion(self) -> int | None:
        version = self.registry.version_by_alias("champion")
        return int(version.version) if version else None


def metadata(result, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in events[-1].step_materialization_data.materialization.metadata.items()}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """One skill trained, evaluated and registered from the base model; the instance lives for the module."""
    env = Env(tmp_path_factory.mktemp("pipeline"))
    write_skill(env.data / "skills" / "toy", toy_skill_rows(24))
    with dg.instance_for_test() as instance:
        env.instance = instance
        env.first = env.materialize(instance, "toy")
        yield env


def test_definitions_load_and_dg_check_passes():
    from pipelines.definitions import defs

    definitions = defs()
    dg.Definitions.validate_loadable(definitions)
    assert {k.to_user_string() for k in definitions.resolve_all_asset_keys()} == {a.key.to_user_string() for a in CHAIN}
    assert definitions.resolve_job_def("retrain_skill") and definitions.resolve_job_def("change_champion")
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "check", "defs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr


def test_chain_registers_a_champion_with_lineage(chain):
    assert chain.first.success
    checks = {c.check_name: c for c in chain.first.get_asset_check_evaluations()}
    assert checks["rejected_share_within_limit"].passed and checks["teacher_prompts_keep_question"].passed
    teacher = checks["teacher_beats_student"]
    assert teacher.severity == dg.AssetCheckSeverity.WARN and "training records" in teacher.description
    signal = checks["teacher_signal_on_student_samples"]  # a random model has no signal: a warning, not a stop
    assert signal.severity == dg.AssetCheckSeverity.WARN and not signal.passed and "signal" in signal.description
    folder = chain.data / "skills" / "toy"
    (version,) = chain.versions()
    tags = version.tags
    run = chain.registry.client().get_run(version.run_id)
    assert tags["skill"] == "toy" and tags["mlflow_run_id"] == version.run_id
    assert tags["dvc_skill_md5"] == dvc_dir_md5(folder) == run.data.tags["dvc_skill_md5"]
    assert tags["dvc_data_md5"] == "untracked"  # this test's data folder has no data.dvc
    assert tags["git_commit"] == git_commit(ROOT) and len(tags["git_commit"].removesuffix("-dirty")) == 40
    assert tags["parent"] == f"base:{chain.model}" and tags["parent_version"] == ""
    config = json.loads(tags["train_config"])
    assert config["max_steps"] == 2 and config["rollout"]["max_new_tokens"] == 8  # run config + skill.yaml
    assert config["model"] == str(chain.model)
    assert set(version.aliases) == {"candidate", "champion"} and tags["gate.passed"] == "true"
    # MLflow's own lineage: the source and commit tags, and the data as datasets whose digest is the DVC hash
    assert run.data.tags["mlflow.source.git.commit"] == tags["git_commit"]
    assert run.data.tags["mlflow.source.name"] == "dagster:__ephemeral_asset_job__/sdft_model"
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"toy", "toy-eval"}
    assert inputs["toy"].dataset.digest == tags["dvc_skill_md5"] and inputs["toy"].dataset.source_type == "dvc"
    assert json.loads(inputs["toy"].dataset.source)["path"] == str(folder)
    assert json.loads(inputs["toy"].dataset.profile)["num_rows"] > 0
    assert {t.key: t.value for t in inputs["toy"].tags}["mlflow.data.context"] == "training"
    assert {t.key: t.value for t in inputs["toy-eval"].tags}["mlflow.data.context"] == "eval"
    # the MLflow run streamed the training metrics and holds the model the version points at
    history = chain.registry.client().get_metric_history(version.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    # the version is an MLflow chat model: pyfunc answers chat messages, the card says where it came from
    assert version.source.startswith("models:/m-")
    import mlflow

    mlflow.set_tracking_uri(chain.registry.tracking_uri)
    answer = mlflow.pyfunc.load_model("models:/sdft@champion").predict(
        {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 4}
    )
    assert answer[0]["object"] == "chat.completion" and answer[0]["choices"][0]["message"]["role"] == "assistant"
    card = version.description
    assert card.startswith("# sdft/1: toy") and tags["dvc_skill_md5"] in card and "**Gate:** passed" in card
    logged = chain.registry.client().get_logged_model(version.source.removeprefix("models:/"))
    requirements = Path(logged.artifact_location.removeprefix("file://"), "requirements.txt").read_text()
    assert "torch==" in requirements and "torchvision" not in requirements and "+cpu" not in requirements
    linked = {m.key for m in logged.metrics or []}
    assert "eval/toy" in linked  # the candidate's scores are the logged model's metrics
    evaluation = metadata(chain.first, "benchmark_evaluation")
    assert 0.0 <= evaluation["new_skill_candidate"] <= 1.0
    deltas = {record.data["benchmark"]: record.data for record in evaluation["deltas"].records}  # table metadata
    assert set(deltas) == {"toy (new skill)", "arc_easy", "boolq", "prior average"}
    assert deltas["toy (new skill)"]["candidate"] == round(100 * evaluation["new_skill_candidate"], 2)
    for picture in ("plot", "skill_vs_prior"):
        assert "data:image/png;base64," in evaluation[picture]
    assert "data:image/png;base64," in metadata(chain.first, "sdft_model")["training_curve"]
    client = chain.registry.client()
    assert "plots/training_curve.png" in {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert "evaluation/skill_vs_prior.png" in {a.path for a in client.list_artifacts(version.run_id, "evaluation")}
    for asset in ("demonstrations", "curated_demonstrations", "sdft_model", "sft_baseline", "registered_model"):
        assert metadata(chain.first, asset)["dvc_skill_md5"] == dvc_dir_md5(folder)


@pytest.mark.slow  # trains version 1 again in accelerate launch, ~20 s
def test_reproduce_trains_the_registered_version_again_to_the_same_weights(chain, tmp_path):
    """`sdft-pipeline reproduce 1`: from the version's recorded data hash, parent, curation and training configs,
    in the pipeline's own accelerate launch, the weights come out identical, tensor for tensor."""
    from pipelines.reproduce import compare_weights, reproduce

    (version,) = [v for v in chain.versions() if str(v.version) == "1"]
    assert json.loads(version.tags["curation_config"])["min_demonstration_chars"] == 1
    model, comparison = reproduce(chain.registry, chain.skill_data, chain.resources["compute"], 1, tmp_path / "again")
    assert comparison.tensors > 0 and comparison.identical == comparison.tensors and comparison.matches()
    assert not comparison.missing and comparison.max_abs_diff == 0.0
    assert not compare_weights(model, chain.model).matches()  # training moved the base model's weights


@pytest.mark.slow  # an MLflow scoring server loading the model, ~1 min
def test_the_champion_is_served_over_http_on_loopback(chain, tmp_path):
    """`mlflow models serve -m models:/sdft@champion` answers chat messages on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/sdft@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=os.environ  # it starts `uvicorn` by name: the environment's bin folder on PATH, as when activated
        | {
            "MLFLOW_TRACKING_URI": chain.registry.tracking_uri,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(answers, lambda: server.poll() is None, "mlflow models serve", log)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 4}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        completion = answer[0] if isinstance(answer, list) else answer
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["role"] == "assistant"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def test_the_sft_baseline_trains_the_same_budget_is_evaluated_beside_the_candidate_and_is_never_registered(chain):
    client = chain.registry.client()
    trained = metadata(chain.first, "sdft_model")
    baseline = metadata(chain.first, "sft_baseline")
    assert baseline["enabled"] is True and baseline["method"] == "sft"
    assert baseline["mlflow_run_id"] != trained["mlflow_run_id"] and baseline["run_dir"] != trained["run_dir"]
    run, sdft_run = client.get_run(baseline["mlflow_run_id"]), client.get_run(trained["mlflow_run_id"])
    assert run.data.tags["role"] == "baseline" and run.data.tags["method"] == "sft"
    assert sdft_run.data.tags["role"] == "candidate" and sdft_run.data.tags["method"] == "sdft"
    assert run.data.params["method"] == "sft" and sdft_run.data.params["method"] == "sdft"
    differing = {k for k in run.data.params if run.data.params[k] != sdft_run.data.params.get(k)}
    assert differing == {"method", "output_dir"}  # same parent, data budget, rate and overrides
    assert run.data.params["max_steps"] == "2" and run.data.params["rollout.max_new_tokens"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]

    evaluation = metadata(chain.first, "benchmark_evaluation")
    assert evaluation["baseline_run_id"] == run.info.run_id
    assert 0.0 <= evaluation["new_skill_baseline"] <= 1.0 and 0.0 <= evaluation["prior_average_baseline"] <= 1.0
    kl = {who: d["mean"] for who, d in evaluation["kl_to_base"].items()}
    assert set(kl) == {"base", "parent", "candidate", "baseline"}
    assert abs(kl["base"]) < 1e-5 and kl["parent"] == kl["base"]  # the first skill's parent is the base model
    assert kl["candidate"] >= 0 and kl["baseline"] >= 0 and evaluation["kl_to_base_candidate"] == kl["candidate"]
    models = {record.data["model"]: record.data for record in evaluation["models"].records}
    assert set(models) == {"base (parent)", "SDFT candidate", "SFT baseline"}
    assert models["SFT baseline"]["new_skill"] == round(100 * evaluation["new_skill_baseline"], 2)
    deltas = {record.data["benchmark"]: record.data for record in evaluation["deltas"].records}
    assert deltas["toy (new skill)"]["sft_baseline"] == round(100 * evaluation["new_skill_baseline"], 2)
    comparison = json.loads(Path(evaluation["comparison"]).read_text())
    assert comparison["new_skill"]["baseline"] == evaluation["new_skill_baseline"]
    assert set(comparison["kl_to_base"]) == set(kl) and "candidate_minus_baseline_ci" in comparison["rows"][0]
    assert comparison["new_skill_ci"] == comparison["rows"][0]["delta_ci"]
    # on the candidate's MLflow run: the baseline's scores and every model's drift
    metrics = client.get_run(trained["mlflow_run_id"]).data.metrics
    assert metrics["baseline_eval/toy"] == evaluation["new_skill_baseline"]
    assert {f"kl_to_base/{who}" for who in kl} <= set(metrics) and "baseline_eval/boolq" in metrics
    assert client.get_run(run.info.run_id).data.metrics["eval/toy"] == evaluation["new_skill_baseline"]

    # one registered version, from the SDFT run; the baseline's run has none and holds no alias
    (version,) = chain.versions()
    assert version.run_id == trained["mlflow_run_id"]
    assert not client.search_model_versions(f"name = 'sdft' and run_id = '{run.info.run_id}'")
    assert version.tags["baseline.mlflow_run_id"] == run.info.run_id
    gate = metadata(chain.first, "registered_model")["gate"]
    assert "the interval's lower bound must be >=" in gate and "SFT baseline (new skill" in gate


def test_rematerializing_reuses_the_run_and_registers_once(chain):
    before = chain.versions()
    again = chain.materialize(
        chain.instance, "toy", selection=[assets.sdft_model, assets.benchmark_evaluation, assets.registered_model]
    )
    assert again.success
    after = chain.versions()
    assert [int(v.version) for v in after] == [int(v.version) for v in before] == [1]
    assert metadata(again, "sdft_model")["mlflow_run_id"] == before[0].run_id
    assert "trained_steps" not in metadata(again, "sdft_model")  # no second training process
    assert metadata(again, "registered_model")["outcome"].startswith("already champion")
    assert chain.champion() == 1


@pytest.mark.slow  # trains again from a checkpoint in accelerate launch, ~30 s
def test_a_crashed_training_resumes_from_its_last_checkpoint(chain):
    run_dir = Path(metadata(chain.first, "sdft_model")["run_dir"])
    trained = (run_dir / "model" / "model.safetensors").read_bytes()
    # the state a crash after step 1's checkpoint leaves behind
    from sdft_core.checkpoint import list_checkpoints

    shutil.rmtree(run_dir / "model")
    first, last = list_checkpoints(run_dir)
    shutil.rmtree(last)
    again = chain.materialize(chain.instance, "toy", selection=[assets.sdft_model])
    reported = metadata(again, "sdft_model")
    assert reported["resumed_from_step"] == 1 and reported["trained_steps"] == 2
    assert reported["mlflow_run_id"] == chain.versions()[0].run_id
    assert (run_dir / "model" / "model.safetensors").read_bytes() == trained  # exact resume


@pytest.mark.slow  # a second skill's whole chain, ~45 s; five tests below use its version 2
def test_failed_gate_keeps_the_champion_and_next_skill_trains_from_it(chain):
    write_skill(chain.data / "skills" / "second", toy_skill_rows(16, offset=30))
    strict = json.loads(json.dumps(RUN_CONFIG))
    strict["ops"]["registered_model"] = {"config": {"min_gain": 0.5}}
    strict["ops"]["sft_baseline"] = {"config": {"enabled": False}}  # the chain runs without the baseline too
    result = chain.materialize(chain.instance, "second", run_config=strict, raise_on_error=False)
    assert not result.success  # a failed gate is a failed (blocking) check, so a failed run
    gate = next(c for c in result.get_asset_check_evaluations() if c.check_name == "promotion_gate")
    assert not gate.passed and gate.description.startswith("sdft/2: champion unchanged (1): keep the champion")
    chain.failed_gate_run = result.run_id
    assert metadata(result, "sft_baseline")["enabled"] is False
    evaluation = metadata(result, "benchmark_evaluation")
    assert (
        "new_skill_baseline" not in evaluation
        and "baseline_eval/second" not in chain.registry.client().get_run(evaluation["mlflow_run_id"]).data.metrics
    )
    kl = {who: d["mean"] for who, d in evaluation["kl_to_base"].items()}
    assert set(kl) == {"base", "parent", "candidate"} and abs(kl["base"]) < 1e-5  # the base evaluated on its own
    assert {record.data["model"] for record in evaluation["models"].records} == {
        "base",
        "parent sdft/1",
        "SDFT candidate",
    }
    registered = metadata(result, "registered_model")
    assert registered["model_version"] == 2 and registered["gate_passed"] is False
    assert registered["outcome"].startswith("champion unchanged (1)") and "FAILED" in registered["gate"]
    assert chain.champion() == 1
    version = chain.registry.client().get_model_version("sdft", "2")
    assert set(version.aliases) == {"candidate"}
    assert version.tags["parent_version"] == "1" and version.tags["parent"] == "sdft/1"
    assert "SFT baseline" not in registered["gate"] and "baseline.mlflow_run_id" not in version.tags
    # one version per SDFT training run, none for the first skill's baseline
    runs = [v.run_id for v in chain.versions()]
    assert runs == [metadata(chain.first, "sdft_model")["mlflow_run_id"], evaluation["mlflow_run_id"]]
    assert metadata(chain.first, "sft_baseline")["mlflow_run_id"] not in runs


@pytest.mark.slow  # needs the failed gate's run
def test_a_failed_gate_reaches_the_webhook_as_a_failed_check_and_a_failed_run(chain):
    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        notifier = Notifier(webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        checks = notify_on_failed_checks(
            dg.build_sensor_context(instance=chain.instance, resources={"notifier": notifier})
        )
        assert checks is None
        gate = [m for m in received if m["event"] == "check_failed" and m["check"] == "promotion_gate"]
        assert len(gate) == 1 and gate[0]["partition"] == "second" and gate[0]["severity"] == "ERROR"
        assert gate[0]["text"].startswith("sdft: check registered_model.promotion_gate (second) failed (ERROR): ")
        assert all(not m["passed"] for m in received)  # passed checks are not sent

        run = chain.instance.get_run_by_id(chain.failed_gate_run)
        (failure,) = chain.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="notify_on_run_failure",
            dagster_instance=chain.instance,
            dagster_run=run,
            dagster_event=failure.dagster_event,
            resources={"notifier": notifier},
        ).for_run_failure()
        received.clear()
        notify_on_run_failure(context)
        (message,) = received
        assert message["event"] == "run_failure" and message["run_id"] == run.run_id
        assert message["partition"] == "second"
        assert "promotion_gate" in {c["check"] for c in message["failed_checks"]}
        assert "check promotion_gate failed: sdft/2: champion unchanged (1)" in message["text"]
    finally:
        server.shutdown()
    # without a webhook the sensors skip, saying how to turn them on
    skipped = notify_on_failed_checks(
        dg.build_sensor_context(instance=chain.instance, resources={"notifier": Notifier()})
    )
    assert "set SDFT_WEBHOOK_URL" in skipped.skip_message


@pytest.mark.slow  # needs the failed gate's version 2
def test_change_champion_job_promotes_and_rolls_back(chain):
    def change(**config):
        return change_champion.execute_in_process(
            run_config={"ops": {"set_champion": {"config": config}}},
            resources={"registry": chain.registry},
            instance=chain.instance,
            raise_on_error=False,
        )

    assert chain.champion() == 1
    assert change(version=2, reason="reviewed").success and chain.champion() == 2
    assert change(rollback=True).success and chain.champion() == 1
    assert not change(version=2, rollback=True).success and chain.champion() == 1
    assert not change(version=99).success and chain.champion() == 1


@pytest.mark.slow  # needs the failed gate's version 2
def test_champion_ancestry_knows_which_skills_it_holds(chain):
    toy, second = (dvc_dir_md5(chain.data / "skills" / name) for name in ("toy", "second"))
    assert chain.registry.champion_has("toy", toy) == 1
    assert chain.registry.champion_has("toy", "another-version.dir") is None
    assert chain.registry.champion_has("second", second) is None  # version 2 failed its gate
    chain.registry.promote(2, "test")
    assert chain.registry.champion_has("second", second) == 2 and chain.registry.champion_has("toy", toy) == 1
    chain.registry.rollback()
    assert chain.champion() == 1


def test_main_command_does_not_retrain_a_skill_the_champion_holds(chain, monkeypatch, capsys, tmp_path):
    from pipelines.cli import main

    monkeypatch.setenv("SDFT_DATA_DIR", str(chain.data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain.registry.tracking_uri)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    assert main(["run", "--skill", "toy"]) == 0
    out = capsys.readouterr().out
    assert "already in the champion: sdft/1 was trained on it" in out
    assert re.search(r"^\s+1\s+\S*champion\S*\s+toy\s+true", out, re.M) and "make ui" in out, out
    from pipelines.dagster_home import DAGSTER_YAML

    assert (tmp_path / "dagster" / "dagster.yaml").read_text() == DAGSTER_YAML  # the instance is made on first use
    assert main(["run", "--skill", "nope"]) == 2


@pytest.mark.slow  # needs the failed gate's version 2
def test_status_prints_per_skill_the_champion_version_that_learned_it_its_data_hash_and_scores(
    chain, monkeypatch, capsys
):
    from pipelines.cli import main

    monkeypatch.setenv("SDFT_DATA_DIR", str(chain.data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain.registry.tracking_uri)
    toy = dvc_dir_md5(chain.data / "skills" / "toy")
    champion = chain.registry.client().get_model_version(chain.registry.model_name, "1")
    capsys.readouterr()
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "champion: sdft/1"
    assert lines[1].split()[:3] == ["skill", "learned", "by"]
    rows = {line.split()[0]: line for line in lines[2:]}
    new_skill = f"{100 * float(champion.tags['eval.new_skill']):.1f}"
    prior = f"{100 * float(champion.tags['eval.prior_average']):.1f}"
    assert rows["toy"].split() == ["toy", "sdft/1", toy, toy, new_skill, prior, "up", "to", "date"]
    assert rows["second"].split()[0:2] == ["second", dvc_dir_md5(chain.data / "skills" / "second")]
    assert rows["second"].endswith("not in champion (a candidate was registered)")  # version 2 failed its gate


def test_sensor_adds_new_skills_and_requests_each_data_version_once(tmp_path):
    skill_data = SkillData(root=str(tmp_path / "data"), work_dir=str(tmp_path / "work"))
    write_skill(tmp_path / "data" / "skills" / "alpha", toy_skill_rows(4))
    (tmp_path / "data" / "skills" / "not_a_skill").mkdir()  # no demonstrations: ignored
    with dg.instance_for_test() as instance:

        def tick(cursor):
            return skill_data_sensor(
                dg.build_sensor_context(instance=instance, cursor=cursor, resources={"skill_data": skill_data})
            )

        first = tick(None)
        assert first.dynamic_partitions_requests[0].partition_keys == ["alpha"]
        instance.add_dynamic_partitions("skill", ["alpha"])  # what the daemon does with the request
        (request,) = first.run_requests
        alpha_version = dvc_dir_md5(tmp_path / "data" / "skills" / "alpha")
        assert request.partition_key == "alpha" and request.run_key == f"alpha:{alpha_version}"
        assert request.tags[DATA_VERSION_TAG] == alpha_version

        second = tick(first.cursor)
        assert not second.run_requests and not second.dynamic_partitions_requests

        write_skill(tmp_path / "data" / "skills" / "beta", toy_skill_rows(4))
        third = tick(second.cursor)
        assert third.dynamic_partitions_requests[0].partition_keys == ["beta"]
        assert [r.partition_key for r in third.run_requests] == ["beta"]
        instance.add_dynamic_partitions("skill", ["beta"])

        write_skill(tmp_path / "data" / "skills" / "alpha", toy_skill_rows(5))  # new demonstrations
        fourth = tick(third.cursor)
        assert not fourth.dynamic_partitions_requests
        assert [r.partition_key for r in fourth.run_requests] == ["alpha"]
        assert fourth.run_requests[0].run_key != request.run_key


@pytest.mark.slow  # needs the failed gate's version 2
def test_schedule_retrains_only_skills_changed_since_their_registered_version(chain):
    write_skill(chain.data / "skills" / "fresh", toy_skill_rows(4, offset=60))
    chain.instance.add_dynamic_partitions("skill", ["fresh"])

    def scheduled() -> list[str]:
        context = dg.build_schedule_context(
            instance=chain.instance, resources={"skill_data": chain.skill_data, "registry": chain.registry}
        )
        return sorted(r.partition_key for r in nightly_retrain(context))

    assert scheduled() == ["fresh"]  # toy and second are registered at their current data version
    write_skill(chain.data / "skills" / "toy", toy_skill_rows(25))
    assert scheduled() == ["fresh", "toy"]


def test_bad_rows_are_quarantined_and_the_blocking_check_stops_the_chain(tmp_path):
    env = Env(tmp_path)
    good = toy_skill_rows(6)
    bad_lines = [
        '{"id": "b1", "prompt": "What?"}',
        "{not json",
        '{"id": "b2", "prompt": "", "demonstration": "x"}',
        json.dumps(good[0]),
    ]  # the last one repeats an id
    folder = write_skill(env.data / "skills" / "broken", good, bad_lines)
    with dg.instance_for_test() as instance:
        result = env.materialize(instance, "broken", selection=CHAIN[:3], raise_on_error=False)
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "rejected_share_within_limit" and not check.passed
    assert "4 of 10 rows rejected (40.0%, limit 20%)" in check.description
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "teacher_contexts" not in materialized  # the blocking check held the chain back
    curated = metadata(result, "curated_demonstrations")
    assert curated["rows_read"] == curated["rows_accepted"] + curated["rows_eval"] + curated["rows_rejected"] == 10
    quarantine = pd.read_parquet(curated["quarantine"])
    assert list(quarantine["location"]) == ["line 7", "line 8", "line 9", "line 10"]
    assert all(quarantine["source"] == str(folder / "demonstrations.jsonl"))
    assert list(quarantine["field"].fillna("")) == ["demonstration", "", "prompt", "id"]
    assert quarantine["reason"].str.len().min() > 0
