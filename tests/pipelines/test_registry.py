"""The MLflow registry under concurrency (a real SQLite registry): one version per run however many register it at
once, and promotion as a compare-and-set, so that no promotion overwrites one it did not see."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

import pytest

from pipelines.defs.resources import ChampionMovedOn, MlflowRegistry
from tests.readiness import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(tmp_path) -> MlflowRegistry:
    return MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", model_cache=str(tmp_path / "models"))


def new_run(registry: MlflowRegistry, key: str) -> tuple[str, str]:
    """An MLflow run and a weights folder a version can point at: (run id, source). The registry's behaviour
    under concurrency does not depend on what the source holds (the chain registers logged chat models)."""
    run_id = registry.run_for_key(key, {"skill": "toy"}, run_name=key)
    folder = Path(registry.lock_path()).parent / f"weights-{key}"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"weights of " + key.encode())
    return run_id, str(folder)


def all_at_once(calls: list) -> list:
    """Run the calls in threads released together; returns each call's result or exception."""
    barrier, results = threading.Barrier(len(calls)), [None] * len(calls)

    def worker(i):
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as err:  # noqa: BLE001 - handed back to the test
            results[i] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD_S)
    return results


def versions_of(registry: MlflowRegistry, run_id: str) -> list[int]:
    found = registry.client().search_model_versions(f"name = '{registry.model_name}' and run_id = '{run_id}'")
    return sorted(int(v.version) for v in found)


def test_concurrent_registrations_of_one_run_make_one_version(registry):
    for trial in range(3):
        run_id, source = new_run(registry, f"run{trial}")
        results = all_at_once([lambda r=run_id, s=source: registry.register(r, s, {"skill": "toy"})] * 4)
        assert {int(r.version) for r in results} == set(versions_of(registry, run_id))
        assert len(versions_of(registry, run_id)) == 1, f"trial {trial}"


def test_registrations_the_lock_does_not_see_still_leave_one_version(registry, monkeypatch):
    """Two machines on one tracking server do not share the file lock: both may search, find nothing and create.
    Each then keeps the run's lowest version and deletes its own otherwise."""
    monkeypatch.setattr(MlflowRegistry, "registry_lock", lambda self: nullcontext())
    run_id, source = new_run(registry, "raced")
    original = MlflowRegistry._versions_of_run
    searched = threading.Barrier(2)
    first_search = threading.local()

    def search_then_wait(self, run):
        found = original(self, run)
        if not getattr(first_search, "done", False):  # both searches happen before either creates
            first_search.done = True
            searched.wait(HANG_GUARD_S)
        return found

    monkeypatch.setattr(MlflowRegistry, "_versions_of_run", search_then_wait)
    results = all_at_once([lambda: registry.register(run_id, source, {})] * 2)
    assert [int(r.version) for r in results] == [1, 1]
    assert versions_of(registry, run_id) == [1]  # version 2 was created and deleted by its creator


def test_promotion_is_a_compare_and_set_on_the_champion(registry):
    sources = [new_run(registry, f"skill{i}") for i in range(3)]
    versions = [int(registry.register(run_id, source, {}).version) for run_id, source in sources]
    assert registry.promote(versions[0], "first", expected_champion=None)["changed"]
    # two candidates trained from champion 1 are promoted at once: exactly one wins
    results = all_at_once(
        [lambda v=v: registry.promote(v, "race", expected_champion=versions[0]) for v in versions[1:]]
    )
    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if isinstance(r, ChampionMovedOn)]
    assert len(winners) == 1 and len(losers) == 1, results
    champion = int(registry.version_by_alias("champion").version)
    assert champion == winners[0]["champion"] and winners[0]["previous"] == versions[0]
    assert f"the champion is {champion}, not {versions[0]}" in str(losers[0])
    with pytest.raises(ChampionMovedOn, match="the champion is .*, not none"):
        registry.promote(versions[0], "stale", expected_champion=None)
    assert int(registry.version_by_alias("champion").version) == champion  # a refused promotion changes nothing
    assert registry.promote(versions[0], "by hand")["champion"] == versions[0]  # no expectation: plain promote


def test_the_registry_lock_is_shared_by_every_process_on_the_store(registry, tmp_path):
    """A process holding the lock holds back a promotion here until it lets go."""
    code = (
        "import sys, time\n"
        "from pipelines.defs.resources import MlflowRegistry\n"
        f"registry = MlflowRegistry(tracking_uri={registry.tracking_uri!r})\n"
        "with registry.registry_lock():\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        run_id, source = new_run(registry, "held")
        done = threading.Event()
        thread = threading.Thread(target=lambda: (registry.register(run_id, source, {}), done.set()))
        thread.start()
        assert not done.wait(1.0)  # blocked while the other process holds the lock
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert done.wait(HANG_GUARD_S)
        thread.join()
    finally:
        holder.kill()
        holder.wait()
    assert versions_of(registry, run_id) == [1]
