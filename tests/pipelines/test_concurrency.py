"""Concurrent runs on a real Dagster instance with the project's own dagster.yaml: two skills trained from one
champion register at the same moment; one is promoted, the other is not lost but retrained from the new champion
(by `champion_moved_on_sensor`), and the champion ends holding both."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipelines.dagster_home import DAGSTER_YAML, HEADER, dagster_home
from pipelines.defs.automation import RETRAIN_REASON_TAG, champion_moved_on_sensor
from pipelines.defs.resources import COMPUTE_POOL, OUTCOME_TAG, REGISTRY_POOL
from sdft_core.lineage import dvc_dir_md5
from sdft_core.promotion import CHAMPION_MOVED_ON, PROMOTED
from tests.pipelines.chain import CHAIN, GATE_THAT_PASSES
from tests.pipelines.test_pipeline import RUN_CONFIG, Env, metadata, toy_skill_rows, write_skill
from tests.readiness import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
DOCKER_YAML = ROOT / "docker" / "dagster.yaml"


def test_only_the_resumable_training_steps_retry():
    retries = {a.key.to_user_string(): a.op.retry_policy for a in CHAIN}
    assert {key for key, policy in retries.items() if policy} == {"sdft_model", "sft_baseline"}
    assert retries["sdft_model"].max_retries == 2


def test_model_loading_steps_share_one_pool_and_registration_has_its_own():
    pools = {a.key.to_user_string(): a.op.pool for a in CHAIN}
    assert pools == {
        "demonstrations": None,
        "curated_demonstrations": None,
        "teacher_contexts": COMPUTE_POOL,
        "sdft_model": COMPUTE_POOL,
        "sft_baseline": COMPUTE_POOL,
        "benchmark_evaluation": COMPUTE_POOL,
        "registered_model": REGISTRY_POOL,
    }


@pytest.mark.parametrize("config", ["local", "docker"])
def test_both_instances_limit_runs_per_skill_and_pools_to_one_and_retry_dead_runs(config, tmp_path):
    text = DAGSTER_YAML if config == "local" else DOCKER_YAML.read_text()
    concurrency = yaml.safe_load(text)["concurrency"]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in concurrency["runs"][
        "tag_concurrency_limits"
    ]
    assert concurrency["pools"]["default_limit"] == 1
    loaded = yaml.safe_load(text)
    loaded.pop("storage", None)  # Dagster itself reads the rest (the Docker file's PostgreSQL is tested elsewhere)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(loaded))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        settings = instance.get_concurrency_config()
        assert settings.pool_config.default_pool_limit == 1
        assert settings.run_queue_config.tag_concurrency_limits == concurrency["runs"]["tag_concurrency_limits"]
        # a run that dies outside its steps is started again; a failed step (a failed gate) is not
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure


def test_the_local_dagster_yaml_is_rewritten_only_while_sdft_pipeline_owns_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    home.mkdir()
    (home / "dagster.yaml").write_text(f"{HEADER} (an older one)\nrun_coordinator: {{}}\n")
    dagster_home()
    assert (home / "dagster.yaml").read_text() == DAGSTER_YAML  # an older file of ours is brought up to date
    own = "telemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(own)
    dagster_home()
    assert (home / "dagster.yaml").read_text() == own  # the user's own file is left alone


@pytest.mark.slow
def test_two_skills_trained_from_one_champion_finish_together_and_the_champion_ends_holding_both(tmp_path):
    env = Env(tmp_path)
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)  # the instance `sdft-pipeline` makes, pools and all
    config = json.loads(json.dumps(RUN_CONFIG))
    config["ops"]["sft_baseline"] = {"config": {"enabled": False}}
    config["ops"]["registered_model"] = {"config": GATE_THAT_PASSES}
    skills = {"alpha": toy_skill_rows(16), "beta": toy_skill_rows(16, offset=30)}
    for skill, rows in skills.items():
        write_skill(env.data / "skills" / skill, rows)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for skill in skills:  # both trained and evaluated from the same parent (the base: no champion yet)
            assert env.materialize(instance, skill, selection=CHAIN[:-1], run_config=config).success
        # both register at the same moment, each in its own process
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.pipelines.chain", str(tmp_path), str(home), skill],
                cwd=ROOT,
            )
            for skill in skills
        ]
        _wait_for(lambda: all((tmp_path / f"ready-{s}").exists() for s in skills), workers)
        (tmp_path / "go").touch()
        assert [w.wait(HANG_GUARD_S) for w in workers] == [0, 0]

        client = env.registry.client()
        outcomes = {v.tags["skill"]: v.tags[OUTCOME_TAG] for v in env.versions()}
        assert sorted(outcomes.values()) == [CHAMPION_MOVED_ON, PROMOTED], outcomes
        first = next(s for s, code in outcomes.items() if code == PROMOTED)
        moved = next(s for s, code in outcomes.items() if code == CHAMPION_MOVED_ON)
        first_champion = env.champion()
        assert client.get_model_version("sdft", str(first_champion)).tags["skill"] == first

        def tick():
            context = dg.build_sensor_context(
                instance=instance, resources={"skill_data": env.skill_data, "registry": env.registry}
            )
            return champion_moved_on_sensor(context).run_requests

        (request,) = tick()  # the moved-on skill is retrained from the new champion, the promoted one is not
        assert request.partition_key == moved
        assert request.tags[RETRAIN_REASON_TAG] == f"champion moved on to {first_champion}"
        retrained = env.materialize(instance, moved, run_config=config)  # what the daemon runs for the request
        registered = metadata(retrained, "registered_model")
        assert registered["outcome_code"] == PROMOTED and registered["parent"] == f"sdft/{first_champion}"

        # the champion holds both skills at their current data, and nothing is left to retrain
        for skill in skills:
            assert env.registry.champion_has(skill, dvc_dir_md5(env.data / "skills" / skill)) is not None
        assert env.champion() == registered["model_version"] and not tick()


def _wait_for(condition, workers: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert all(w.poll() is None for w in workers), "a worker ended before it was ready"
        assert time.monotonic() < deadline, "the workers never got ready"
        time.sleep(0.05)
