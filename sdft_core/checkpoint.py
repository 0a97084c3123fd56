"""Checkpoints of a training run: written whole or not at all, read back for a resume.

A checkpoint is a folder `<output_dir>/checkpoints/step-NNNNNN/` holding the student's trainable tensors
(`model.safetensors`), the EMA teacher's (`teacher.safetensors`), the optimizer, scheduler and RNG states, and
`state.json` (the step, the config's fingerprint, the number of examples). It is written into a hidden staging
folder and renamed into place, so a crash while writing leaves the previous checkpoints as they were; the newest
`keep` are kept. The metrics log beside it is cut back to the checkpoint's step on resume, since the steps after
it run again.
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
    path: Path
    state: dict[str, Any]  # state.json: step, fingerprint, examples, ...

    @classmethod
    def latest(cls, output_dir: str | Path) -> Checkpoint | None:
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            return None
        return cls(checkpoints[-1], json.loads((checkpoints[-1] / "state.json").read_text()))

    @property
    def step(self) -> int:
        return self.state["step"]

    def student(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path / "model.safetensors")

    def teacher(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path / "teacher.safetensors")

    def optimizer(self) -> dict:
        return torch.load(self.path / "optimizer.pt", map_location="cpu", weights_only=True)

    def scheduler(self) -> dict:
        return torch.load(self.path / "scheduler.pt", weights_only=True)

    def restore_rng(self) -> None:
        rng = torch.load(self.path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


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
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)  # a checkpoint either exists whole or not at all
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
    os.replace(staging, path)


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
