"""One training run per run folder at a time.

Two runs in one folder would log into the same metrics file and resume from each other's checkpoints. The run
takes an exclusive `flock` on `<output_dir>/.lock` for as long as it trains; the operating system releases it
when the process ends, however it ends, so a crashed run never leaves a stale lock behind and its resume is not
refused. A second run on the folder fails at once, naming the process that holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunFolderBusy(RuntimeError):
    pass


@contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process"
        handle.close()
        raise RunFolderBusy(
            f"{folder}: {holder} is training in this folder; wait for it to end, or train into another output_dir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
