"""The local Dagster instance that `sdft-pipeline run` and `sdft-pipeline ui` share: $DAGSTER_HOME, or .sdft/dagster.

Its own module so that the command line and the UI launcher both read it without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

HEADER = "# Written by sdft-pipeline"
DAGSTER_YAML = f"""\
{HEADER} (and rewritten by it while this line is here: delete the line to keep your own edits).
# Runs launched from the UI are queued; the daemon starts them and runs the sensors and schedules (`make ui` runs
# dagster-daemon beside dagster-webserver). `sdft-pipeline run` runs the chain in its own process.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 4
    # never two runs of one skill at once (they would share its run folder; the trainer's lock is the second line)
    tag_concurrency_limits:
      - key: dagster/partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
  pools:
    # sdft_compute: one step at a time loads a model (the machine's CPUs or GPUs are shared);
    # sdft_registry: one registration at a time reads the champion and moves it (a compare-and-set)
    default_limit: 1
# A run that dies outside its steps (a killed worker, a lost node) is started again; a step that fails (a failed
# gate, bad data) is not: training retries its own step (RetryPolicy) and resumes from its checkpoint.
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
telemetry:
  enabled: false
# sdft_core's own log lines (e.g. preparing the embedded model) go to the run's log too
python_logs:
  managed_python_loggers:
    - sdft_core
  python_log_level: INFO
"""


def dagster_home() -> Path:
    """$DAGSTER_HOME, or .sdft/dagster; its dagster.yaml is written when missing, and rewritten when an older
    sdft-pipeline wrote it (a file without the header is the user's own and is left alone)."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".sdft/dagster").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    written = config.read_text() if config.exists() else HEADER
    if written.startswith(HEADER) and written != DAGSTER_YAML:
        config.write_text(DAGSTER_YAML)
    (home / ".nux").mkdir(exist_ok=True)
    (home / ".nux" / "nux.yaml").touch()  # the UI's community pop-up otherwise covers the page on first visit
    return home
