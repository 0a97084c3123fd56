import time

import pytest

from tests.readiness import wait_until


def test_a_wait_ends_when_ready_and_fails_at_once_with_the_log_when_the_process_dies(tmp_path):
    calls = []
    wait_until(lambda: calls.append(1) or len(calls) >= 3, lambda: True, "server", poll_s=0)
    assert len(calls) == 3
    log = tmp_path / "server.log"
    log.write_text("Traceback: port in use\n")
    started = time.monotonic()
    with pytest.raises(AssertionError, match="(?s)server: its process exited.*port in use"):
        wait_until(lambda: False, lambda: False, "server", log, hang_guard_s=60)
    assert time.monotonic() - started < 5  # no deadline to wait out
    with pytest.raises(AssertionError, match="hang guard"):
        wait_until(lambda: False, lambda: True, "server", poll_s=0.01, hang_guard_s=0.05)
