#!/usr/bin/env sh
# First start: data/ at the version data.dvc records (rebuilt from the pinned packages and checked against that
# hash), and a Dagster instance that launches runs without waiting for a queue.
set -e
cd /app
if [ ! -d data/skills ]; then
  sdft data --out data --verify data.dvc
fi
python -c "from pipelines.cli import dagster_home; dagster_home()"
exec "$@"
