"""The real worker process: runs land in the database, SIGTERM exits 0, a restart continues where it stopped."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from agent.scheduler import RunStatus, ScheduleStore
from tests.system.worker_process import WorkerProcess, wait_for

pytestmark = pytest.mark.system


def ledger_keys(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def succeeded(db: Path) -> list[str]:
    with ScheduleStore(db) as store:
        return [r.occurrence_key for r in store.runs(schedule="ledger_every_second", status=RunStatus.SUCCEEDED)]


def test_worker_runs_stops_on_sigterm_and_restarts_without_rerunning(tmp_path: Path) -> None:
    db, ledger = tmp_path / "worker.db", tmp_path / "ledger.txt"
    env = {"SAMPLE_LEDGER": str(ledger), "SAMPLE_SCHEDULES": "ledger_every_second"}
    worker = WorkerProcess(db, tmp_path / "worker.log", env).start()
    try:
        wait_for(lambda: db.exists() and len(succeeded(db)) >= 3, 30, "three succeeded runs")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0, worker.log()
        first_life = succeeded(db)
        with ScheduleStore(db) as store:
            marker = store.get_state("worker:system-test")
            next_run_at = store.get("ledger_every_second").next_run_at
        assert marker is not None and marker["clean"] is True
        assert next_run_at is not None

        worker = WorkerProcess(db, tmp_path / "worker.log", env).start()
        wait_for(lambda: len(succeeded(db)) >= len(first_life) + 3, 30, "three more runs after the restart")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0, worker.log()
    finally:
        worker.kill()

    with ScheduleStore(db) as store:
        runs = store.runs(schedule="ledger_every_second")
        report = store.reports(limit=1)[0].report
    assert report["previous_shutdown"] == "clean"
    intended = sorted(r.intended_run_at for r in runs)
    # Every second from the first occurrence to the last has exactly one run: no gap across the
    # restart (the downtime was within the grace) and no occurrence run twice.
    assert intended == [intended[0] + timedelta(seconds=i) for i in range(len(intended))]
    assert all(r.status is RunStatus.SUCCEEDED for r in runs if r.intended_run_at < next_run_at)
    keys = ledger_keys(ledger)
    assert Counter(keys).most_common(1)[0][1] == 1
    assert set(keys) == {r.idempotency_key for r in runs if r.status is RunStatus.SUCCEEDED}
