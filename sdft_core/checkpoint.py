"""Checkpoints of a training run: written whole or not at all, read back for a resume.

A checkpoint is a folder `<output_dir>/checkpoints/step-NNNNNN/` holding the student's trainable tensors
(`model.safetensors`), the EMA teacher's (`teacher.safetensors`), the optimizer, scheduler and RNG states, and
`state.json` (the step, the config's fingerprint, the number and digest of the training examples). It is written
into a hidden staging folder, flushed to disk (files and folder), and renamed into place, so a crash while
writing leaves the previous checkpoints as they were; the newest `keep` are kept. A resume reads the newest
checkpoint whole before using any of it, and falls back to the one before when a file is torn or corrupt (a disk
that lied about a flush, a copy cut short), saying so. The metrics log beside it is cut back to the checkpoint's
step on resume, atomically, since the steps after it run again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PREFIX = "step-"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read whole: every file parsed before any of it is used."""

    path: Path
    state: dict[str, Any]  # state.json: step, fingerprint, examples, examples_digest, ...
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor] | None
    optimizer: dict
    scheduler: dict
    rng: dict

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        from safetensors.torch import load_file

        teacher = path / "teacher.safetensors"
        return cls(
            path,
            json.loads((path / "state.json").read_text()),
            load_file(path / "model.safetensors"),
            load_file(teacher) if teacher.exists() else None,
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
            torch.load(path / "scheduler.pt", weights_only=True),
            torch.load(path / "rng.pt", weights_only=True),
        )

    @property
    def step(self) -> int:
        return self.state["step"]

    def restore_rng(self) -> None:
        torch.set_rng_state(self.rng["cpu"])
        if self.rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.rng["cuda"])


def newest_readable(output_dir: str | Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that reads whole, and why each newer one did not (torn or corrupt files)."""
    unreadable = []
    for path in reversed(list_checkpoints(output_dir)):
        try:
            return Checkpoint.read(path), unreadable
        except Exception as err:  # noqa: BLE001 - any torn file (JSON, safetensors, pickle, I/O) means: the one before
            unreadable.append(f"{path.name} is unreadable ({type(err).__name__}: {err})")
    return None, unreadable


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    student: dict[str, torch.Tensor],
    teacher: dict[str, torch.Tensor] | None,
    optimizer: dict,
    scheduler: dict,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write the checkpoint of `step` atomically, then drop all but the newest `keep`; returns its folder."""
    from safetensors.torch import save_file

    final = checkpoint_dir(output_dir, step)
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(unshared(student), staging / "model.safetensors")
    if teacher is not None:
        save_file(unshared(teacher), staging / "teacher.safetensors")
    torch.save(optimizer, staging / "optimizer.pt")
    torch.save(scheduler, staging / "scheduler.pt")
    torch.save(
        {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        staging / "rng.pt",
    )
    (staging / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    for file in staging.iterdir():  # on disk before the rename makes the checkpoint visible
        _fsync(file)
    _fsync(staging)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)  # a checkpoint either exists whole or not at all
    _fsync(final.parent)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics logged after `step` (those steps run again), replacing the file atomically."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("".join(line + "\n" for line in kept))
    _fsync(staging)
    os.replace(staging, path)  # a kill leaves the old log or the new one, never half of one


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): keep the first name of each."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.shape)
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.contiguous()
    return out
