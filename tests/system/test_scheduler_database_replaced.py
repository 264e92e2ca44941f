"""The SQLite file deleted or replaced under the running worker: one error line, exit status 3, no ghost writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import worker as worker_module
from agent.scheduler import RunStatus, ScheduleStore
from tests.system.worker_process import WorkerProcess, wait_for

pytestmark = pytest.mark.system


def succeeded(db: Path) -> int:
    with ScheduleStore(db) as store:
        return len(store.runs(schedule="ledger_every_second", status=RunStatus.SUCCEEDED))


def test_a_deleted_database_file_stops_the_worker_with_status_3(tmp_path: Path) -> None:
    db, ledger = tmp_path / "worker.db", tmp_path / "ledger.txt"
    env = {"SAMPLE_LEDGER": str(ledger), "SAMPLE_SCHEDULES": "ledger_every_second"}
    worker = WorkerProcess(db, tmp_path / "worker.log", env).start()
    try:
        wait_for(lambda: db.exists() and succeeded(db) >= 2, 30, "two succeeded runs")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                os.unlink(f"{db}{suffix}")
        status = worker.wait(timeout=15)
    finally:
        worker.kill()
    log = worker.log()
    assert status == worker_module.EXIT_DATABASE_REPLACED == 3, log
    errors = [line for line in log.splitlines() if " ERROR " in line or "ERROR" in line.split(" ", 3)[:3]]
    assert len([e for e in errors if "was deleted" in e]) == 1, log
    assert not db.exists()  # nothing created a new, empty database at the path on the way out
    stops = [line for line in log.splitlines() if "stopped cleanly" in line]
    assert not stops  # no clean-stop marker written into the lost file


def test_a_replaced_database_file_stops_the_worker_and_alerts_in_the_new_file(tmp_path: Path) -> None:
    db, ledger = tmp_path / "worker.db", tmp_path / "ledger.txt"
    env = {"SAMPLE_LEDGER": str(ledger), "SAMPLE_SCHEDULES": "ledger_every_second"}
    worker = WorkerProcess(db, tmp_path / "worker.log", env).start()
    try:
        wait_for(lambda: db.exists() and succeeded(db) >= 2, 30, "two succeeded runs")
        fresh = tmp_path / "restored.db"
        ScheduleStore(fresh).close()
        os.replace(fresh, db)  # an operator restores another file over it (and drops the old journal)
        for suffix in ("-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                os.unlink(f"{db}{suffix}")
        status = worker.wait(timeout=15)
    finally:
        worker.kill()
    assert status == 3, worker.log()
    with ScheduleStore(db) as store:
        alerts = [a for a in store.alerts() if a.kind == "database_replaced"]
        assert len(alerts) == 1 and "replaced by another file" in alerts[0].text
        assert store.count_runs() == 0  # the worker wrote no run into the file it did not open
