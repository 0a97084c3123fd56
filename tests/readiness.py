"""Waiting for a server or a run in tests without wall-clock deadlines that flake under load.

A loaded machine starts a server as slowly as it must; what a test can know for sure is whether the process it
waits on is still alive. So a wait polls until ready, fails at once (with the process's log) when the process
dies, and has only a hang guard far beyond any loaded start, for a process that lives but never answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

HANG_GUARD_S = 1800.0


def wait_until(
    ready: Callable[[], bool],
    alive: Callable[[], bool],
    what: str,
    log: Path | None = None,
    poll_s: float = 0.5,
    hang_guard_s: float = HANG_GUARD_S,
) -> None:
    """Poll `ready()` while `alive()`; raise with the log's tail if the process dies or hangs past the guard."""
    started = time.monotonic()
    while not ready():
        died = not alive()
        hung = time.monotonic() - started > hang_guard_s
        if died or hung:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            reason = "its process exited" if died else f"no answer after {hang_guard_s:.0f} s (hang guard)"
            raise AssertionError(f"{what}: {reason}\n{tail}")
        time.sleep(poll_s)
