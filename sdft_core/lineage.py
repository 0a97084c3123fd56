"""Where a model came from: content hashes of its data (DVC's own, through `dvc_data`) and the code's git commit.

A skill folder's version is what `dvc add data/skills/<skill>` would record, computed by DVC's hashing library
with the repository's `.dvcignore` rules (dry run: nothing is written to a cache); `data.dvc` is read as the
plain YAML it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import yaml


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_dir_manifest(folder: str | Path) -> list[dict[str, str]]:
    """Every file under `folder` that DVC tracks, as {"md5", "relpath"} sorted by path: DVC's `.dir` object.
    Files a `.dvcignore` of the enclosing DVC repository (or of `folder`, outside one) ignores are left out."""
    from dvc.fs import LocalFileSystem
    from dvc.ignore import DvcIgnoreFilter
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.memory import MemoryFileSystem

    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"not a directory: {folder}")
    fs = LocalFileSystem()
    ignore = DvcIgnoreFilter(fs, str(_dvc_root(folder)))
    staging = HashFileDB(MemoryFileSystem(), "/staging")  # dry run: the objects are hashed, never stored
    _, _, tree = build(staging, str(folder), fs, "md5", ignore=ignore, dry_run=True)
    return tree.as_list()


def _dvc_root(folder: Path) -> Path:
    """The DVC repository holding `folder` (whose .dvcignore files apply), else the folder itself."""
    return next((parent for parent in (folder, *folder.parents) if (parent / ".dvc").is_dir()), folder)


def dvc_dir_md5(folder: str | Path, manifest: list[dict[str, str]] | None = None) -> str:
    """DVC 3's hash of a directory: md5 of its sorted (relpath, md5) manifest, with the `.dir` suffix (what
    `dvc_data`'s Tree computes from `dvc_dir_manifest`; given the manifest, no file is read again)."""
    manifest = dvc_dir_manifest(folder) if manifest is None else manifest
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode()).hexdigest() + ".dir"


def content_key(*parts) -> str:
    """A short key of what a result depends on (a run's data, parent and config; an evaluation's plan), for the
    folder it is kept in: a rerun with the same inputs finds it, any change gets a folder of its own."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tracked_md5(dvc_file: str | Path) -> str | None:
    """The md5 a `.dvc` file records for its output (None when the file is missing)."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    if len(outs) != 1 or "md5" not in outs[0]:
        raise ValueError(f"{dvc_file}: expected one output with an md5, got {outs!r}")
    return outs[0]["md5"]


def git_commit(repo: str | Path = ".") -> str | None:
    """HEAD's commit, with '-dirty' when tracked files differ from it; outside a git checkout (a container image)
    $SDFT_GIT_COMMIT, else None."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SDFT_GIT_COMMIT")
    return commit + ("-dirty" if dirty else "")
