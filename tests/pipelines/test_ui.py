"""`make ui`: the real Dagster webserver, daemon and MLflow UI, on loopback, stopped by one Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses (hex, as the kernel lists them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_ui_serves_dagster_and_mlflow_on_loopback_and_one_ctrl_c_stops_every_process(tmp_path):
    dagster_port, mlflow_port = free_port(), free_port()
    env = os.environ | {"DAGSTER_HOME": str(tmp_path / "dagster"),
                        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                        "SDFT_WORK_DIR": str(tmp_path / "work"), "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--dagster-port", str(dagster_port),
                                 "--mlflow-port", str(mlflow_port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    output, pids = [], {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = launcher.stdout.readline()
            if not line:
                break
            output.append(line)
            started = re.match(r"started (\S+) \(pid (\d+)\)", line)
            if started:
                pids[started.group(1)] = int(started.group(2))
            if "Ctrl-C stops both" in line:
                break
        text = "".join(output)
        assert f"Dagster UI: http://127.0.0.1:{dagster_port}" in text, text[-3000:]
        assert f"MLflow UI:  http://127.0.0.1:{mlflow_port}" in text
        assert set(pids) == {"dagster-webserver", "dagster-daemon", "mlflow"}
        with urllib.request.urlopen(f"http://127.0.0.1:{dagster_port}/server_info", timeout=10) as response:
            assert b"dagster_webserver_version" in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=10) as response:
            assert response.status == 200
        assert (tmp_path / "dagster" / ".nux" / "nux.yaml").exists()  # no community pop-up over the UI
        for port in (dagster_port, mlflow_port):
            assert listening_addresses(port) == {"0100007F"}, port  # 127.0.0.1 only

        launcher.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to the foreground process
        rest, _ = launcher.communicate(timeout=60)
        assert launcher.returncode == 0, rest
        assert "stopped" in rest
        for name, pid in pids.items():
            assert not group_alive(pid), f"{name}'s process group outlived the launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in pids.values():
            if group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
