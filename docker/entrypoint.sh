#!/usr/bin/env sh
# First start: data/ at the version data.dvc records (rebuilt from the pinned packages and checked against that
# hash). The Dagster instance: PostgreSQL storage when DAGSTER_PG_HOST is set (docker-compose.yml), else local
# SQLite with runs launched at once.
set -e
cd /app
data="${SDFT_DATA_DIR:-data}"
mkdir -p "$(dirname "$data")"
# the webserver and the daemon share the volume: one builds, the other waits for it
flock "$data.lock" sh -c '[ -d "$1/skills" ] || sdft data --out "$1" --verify data.dvc' sh "$data"
mkdir -p "$DAGSTER_HOME"
if [ -n "${DAGSTER_PG_HOST:-}" ]; then
  cp /app/docker/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
fi
python -c "from pipelines.cli import dagster_home; dagster_home()"
exec "$@"
