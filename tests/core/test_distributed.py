"""FSDP's loading and sharded checkpoints in two CPU processes (gloo), below the trainer: rank-0 loading gives the
weights of a plain load, and a sharded checkpoint reads back what was saved, or is refused when torn.

One pair of processes runs every check (starting processes that import torch and transformers is most of the cost);
the trainer's own use of both is tested end to end in `test_cli.py`.
"""

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _worker(rank: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        root, lm, teacher = _check_rank0_loading(rank, model_dir)
        _check_sharded_checkpoint(rank, root, lm, teacher, Path(out))
    finally:
        dist.destroy_process_group()


def _check_rank0_loading(rank: int, model_dir: str):
    from sdft_core import distributed
    from sdft_core.models import HiddenStates, load_model
    from sdft_core.teacher import Teacher

    plain = load_model(model_dir)  # the reference; in training only rank 0 loads it
    lm = distributed.meta_model(model_dir)
    assert all(p.is_meta for p in lm.parameters())
    root = HiddenStates(lm)
    teacher = Teacher(lm)  # copied from the meta model, as the trainer does: no weights yet either
    distributed.shard_from_rank0(root, lm, plain if rank == 0 else None, torch.device("cpu"))
    teacher.shard(lm)

    sharded, teacher_params = dict(lm.named_parameters()), dict(teacher.lm.named_parameters())
    assert sharded.keys() == dict(plain.named_parameters()).keys()
    for name, param in plain.named_parameters():
        assert type(sharded[name]).__name__ == "DTensor", name  # sharded, not replicated
        assert torch.equal(distributed.full(sharded[name]), param), name
        assert torch.equal(distributed.full(teacher_params[name]), param), name
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # the tiny model ties its embeddings
    assert teacher.lm.lm_head.weight is teacher.lm.model.embed_tokens.weight
    plain_buffers = dict(plain.named_buffers())
    for model in (lm, teacher.lm):  # non-persistent (rotary inv_freq): not in the state dict, so broadcast
        for name, buffer in model.named_buffers():
            assert torch.equal(buffer, plain_buffers[name]), name
    assert lm.generation_config.eos_token_id == plain.generation_config.eos_token_id

    ids = torch.tensor([[5, 9, 12, 7, 3]])
    mask, positions = torch.ones_like(ids), torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        want = HiddenStates(plain)(ids, mask, positions)
        got = root(ids, mask, positions)
        root.reshard()
        got_teacher = teacher.hidden_states(ids, mask, positions)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_teacher, want)
    return root, lm, teacher


def _check_sharded_checkpoint(rank: int, root, lm, teacher, out: Path) -> None:
    from sdft_core import distributed
    from sdft_core.checkpoint import Checkpoint, save_sharded_checkpoint

    optimizer = torch.optim.AdamW(list(lm.parameters()), lr=1e-2, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))

    def step() -> None:
        ids = torch.tensor([[5, 9, 12, 7, 3], [4, 4, 8, 1, 2]])[rank : rank + 1]
        hidden = root(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
        hidden.pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        teacher.update()

    def tensors() -> dict:
        model, optim = distributed.sharded_state(root, optimizer)
        return {"model": model, "optimizer": optim, "teacher": teacher.sharded_state_dict()}

    def snapshot() -> dict[str, torch.Tensor]:
        state = {f"student.{n}": distributed.full(p).clone() for n, p in lm.named_parameters()}
        state |= {f"teacher.{n}": distributed.full(p).clone() for n, p in teacher.lm.named_parameters()}
        for param in lm.parameters():
            for key, value in optimizer.state[param].items():
                state[f"optimizer.{id(param)}.{key}"] = distributed.full(value).clone()
        return state

    step()
    saved = snapshot()
    path = save_sharded_checkpoint(
        out, 1, tensors=tensors(), scheduler=scheduler.state_dict(), state={"fingerprint": "x"}, keep=2
    )
    files = sorted(p.name for p in path.iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "rng.pt", "scheduler.pt", "state.json"], files
    assert json.loads((path / "state.json").read_text()) == {"step": 1, "fingerprint": "x", "format": "dcp"}
    assert not list(out.glob("checkpoints/.*.tmp"))  # the staging folder was renamed into place

    step()  # the live state moves on; loading must bring back the saved one
    assert not torch.equal(distributed.full(lm.lm_head.weight), saved["student.model.embed_tokens.weight"])
    checkpoint = Checkpoint.read(path)
    assert checkpoint.sharded and checkpoint.step == 1 and checkpoint.student is None
    loaded = tensors()
    checkpoint.load_shards(loaded)
    distributed.load_sharded_state(root, optimizer, loaded["model"], loaded["optimizer"])
    now = snapshot()
    assert now.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(now[key], value), key

    # Torn copies (rank 0 makes them; the folder is shared): each is refused, on every rank.
    torn = {
        "shard missing": lambda p: (p / "__1_0.distcp").unlink(),
        "shard cut short": lambda p: (p / "__0_0.distcp").write_bytes((p / "__0_0.distcp").read_bytes()[:-100]),
        "index missing": lambda p: (p / ".metadata").unlink(),
        "index cut short": lambda p: (p / ".metadata").write_bytes((p / ".metadata").read_bytes()[:50]),
    }
    copies = {what: out / "torn" / what.replace(" ", "-") for what in [*torn, "shard corrupt"]}
    if rank == 0:
        for what, copy in copies.items():
            shutil.copytree(path, copy)
            if what in torn:
                torn[what](copy)
        with (copies["shard corrupt"] / "__1_0.distcp").open("r+b") as shard:  # same length, bytes overwritten
            shard.write(b"\0" * 64)
    dist.barrier()
    for what in torn:
        with pytest.raises(Exception):  # noqa: B017 - whichever a torn file gives (I/O, unpickling, ours)
            Checkpoint.read(copies[what])
    # A corrupt shard of the right length passes the check, and fails while loading: on both ranks alike.
    corrupt = Checkpoint.read(copies["shard corrupt"])
    with pytest.raises(RuntimeError, match=r"loading its shards failed on rank .*UnpicklingError"):
        corrupt.load_shards(tensors())
    dist.barrier()


@pytest.mark.slow  # two processes with a process group, ~15 s
def test_rank0_loading_and_sharded_checkpoints_in_two_processes(tiny_model_dir, tmp_path):
    """(1) With the model built on the meta device and only rank 0 loading it, every sharded parameter, buffer and
    tie equals a plain load's, the teacher starts equal to the student, and both compute what the plain model does.
    (2) A sharded checkpoint holds one shard file per rank and the index, no whole tensors, and loads back the
    student, teacher and optimizer as saved. (3) A missing or cut-short shard or index is refused before loading;
    a corrupt shard of the right length fails the load on every rank at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tiny_model_dir), str(tmp_path)), nprocs=WORLD, join=True)
    assert not list((tmp_path / "checkpoints").glob("*/model.safetensors"))
