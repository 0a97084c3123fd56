"""The local Dagster instance that `sdft-pipeline run` and `sdft-pipeline ui` share: $DAGSTER_HOME, or .sdft/dagster.

Its own module so that the command line and the UI launcher both read it without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

DAGSTER_YAML = """\
# Written by sdft-pipeline. Runs launched from the UI start at once (no daemon needed); sensors and
# schedules still need the daemon (`make ui` runs dagster-daemon beside dagster-webserver).
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
# sdft_core's own log lines (e.g. preparing the embedded model) go to the run's log too
python_logs:
  managed_python_loggers:
    - sdft_core
  python_log_level: INFO
"""


def dagster_home() -> Path:
    """$DAGSTER_HOME, or .sdft/dagster (created with a daemon-free run coordinator)."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".sdft/dagster").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    (home / ".nux").mkdir(exist_ok=True)
    (home / ".nux" / "nux.yaml").touch()  # the UI's community pop-up otherwise covers the page on first visit
    return home
