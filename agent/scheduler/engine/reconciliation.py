"""What a start finds and repairs, orphans, lifecycle runs and the worker's state row (database thread).

Every method runs on the engine's database thread. The only thing kept between calls is the id of
this start's stored report, adopted once the transaction that wrote it has committed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from ..definition import ScheduleDefinition
from ..enums import MissedRunPolicy, RunStatus, TriggerType
from ..errors import SchedulerError, WorkerIdInUse
from ..policies.missed_run import DuePlan
from ..policies.retry import ORPHANED
from ..reconciliation import ReconciliationReport
from ..scheduled_run import ScheduledRun
from ..store import EngineStore
from .breakers import Breakers
from .due import plan_schedule

log = logging.getLogger(__name__)

#: Worker liveness is written to ``engine_state`` this often.
HEARTBEAT_SECONDS = 10.0
#: A worker is up while its last heartbeat is younger than this many heartbeat intervals (and it did not stop).
UP_AFTER_HEARTBEATS = 3
#: ``previous_shutdown`` of a dry run beside a worker of the same id that is up: nothing ended.
RUNNING = "running"


def worker_is_up(state: dict[str, Any] | None, now: datetime) -> bool:
    """Whether the worker of this ``worker:<id>`` state row is up: not stopped cleanly, heartbeat fresh.

    A worker ticking less often than the heartbeat interval beats at its tick (its row says so).
    """
    if state is None or state.get("clean"):
        return False
    try:
        beat = datetime.fromisoformat(str(state.get("heartbeat_at")))
        every = max(HEARTBEAT_SECONDS, float(state.get("tick_seconds") or 0))
    except (TypeError, ValueError):
        return False
    return now - beat <= timedelta(seconds=UP_AFTER_HEARTBEATS * every)


Finished = tuple[ScheduledRun, str, dict[str, Any]]


class Reconciler:
    """Start-up reconciliation, orphan sweeps, lifecycle runs and the ``worker:<id>`` state row."""

    def __init__(
        self, store: EngineStore, breakers: Breakers, *, worker_id: str, boot_id: str, tick_seconds: float
    ) -> None:
        self.store = store
        self.breakers = breakers
        self.worker_id = worker_id
        self.boot_id = boot_id
        self.tick_seconds = tick_seconds
        self.started_at: datetime | None = None
        self._report_id: str | None = None
        """The stored row of this start's report, once the transaction that wrote it committed."""

    # ------------------------------------------------------------------ start

    def reconcile(self, now: datetime) -> tuple[ReconciliationReport, tuple[ScheduledRun, ...]]:
        """Reconcile what the previous life left, in one transaction; the report is stored with it.

        Returns the report and the running runs it found orphaned: the startup tick fires
        ``orphan`` on them, decides their retry and tells each attempt, in one transaction."""
        report, report_id, orphaned = self.store.atomic_kept(self._reconcile, now)
        self.started_at = now
        self._report_id = report_id
        return report, orphaned

    def preview(self, now: datetime) -> ReconciliationReport:
        """The report a start would produce now, computed without changing anything."""
        report, previous = self._survey(now, dry_run=True)
        if worker_is_up(previous, now):
            # Its runs in flight are its own, not orphans: only lapsed leases would be taken over.
            report.previous_shutdown = RUNNING
            report.actions.append(f"worker {self.worker_id} is up: a start beside it would find what follows")
            previous = None
        orphans = self._orphans(now, previous)
        report.orphans_found = len(orphans)
        paused = self.store.runs(status=RunStatus.PAUSED)
        report.paused_resumed = len(paused)
        report.actions.append(f"would orphan {len(orphans)} run(s) and resume {len(paused)} paused run(s)")
        for schedule in self.store.due_schedules(now):
            plan, _ = plan_schedule(schedule, now)
            if plan.missed is not None:
                count_missed(report, schedule.name, plan)
                report.actions.append(f"{schedule.name}: {plan.missed.reason}")
        return report

    def _survey(self, now: datetime, *, dry_run: bool) -> tuple[ReconciliationReport, dict[str, Any] | None]:
        report = ReconciliationReport(worker_id=self.worker_id, started_at=now, dry_run=dry_run)
        previous = self.store.get_state(self.state_key)
        if not dry_run:
            self._refuse_a_live_twin(previous)
        if previous is None:
            report.previous_shutdown = "first_start"
        else:
            report.previous_shutdown = "clean" if previous.get("clean") else "crash"
            seen = previous.get("heartbeat_at")
            if seen:
                report.downtime_seconds = (now - datetime.fromisoformat(seen)).total_seconds()
        report.schedules_loaded = self.store.count_schedules()
        return report, previous

    def _reconcile(self, now: datetime) -> tuple[ReconciliationReport, str, tuple[ScheduledRun, ...]]:
        report, previous = self._survey(now, dry_run=False)
        # Failed over by the startup tick, which counts them (orphans_found) as it writes them.
        orphans = self._orphans(now, previous)
        paused = self.store.runs(status=RunStatus.PAUSED)
        for moved in self.store.transition_many(
            ((r, "resume", {"reason": "resumed after restart"}) for r in paused), now=now
        ):
            if isinstance(moved, ScheduledRun):
                report.paused_resumed += 1
        report.breakers_half_opened += self.breakers.half_open_after_restart(now)
        if report.paused_resumed:
            report.actions.append(f"resumed {report.paused_resumed} paused run(s)")
        self.create_lifecycle_runs("startup", now)
        stored = self.store.save_report(
            worker_id=self.worker_id, started_at=report.started_at, finished_at=None, report=report.to_dict()
        )
        report.keep()
        return report, stored.id, tuple(orphans)

    def save_report(self, report: ReconciliationReport) -> None:
        """Bring this start's stored report up to date (the row ``reconcile`` wrote)."""
        if self._report_id is None:
            raise SchedulerError("no reconciliation report to update: reconcile() writes it first")
        self.store.update_report(self._report_id, finished_at=report.finished_at, report=report.to_dict())

    def _refuse_a_live_twin(self, previous: dict[str, Any] | None) -> None:
        """Two live workers with one id would orphan each other's runs: refuse to start the second."""
        if previous is None or previous.get("clean") or previous.get("boot_id") == self.boot_id:
            return
        pid = previous.get("pid")
        if previous.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # its previous life is gone: reconcile what it left
        except PermissionError:
            pass
        raise WorkerIdInUse(
            f"worker id {self.worker_id!r} is in use by a running worker (pid {pid} on this host); "
            "give each worker its own --worker-id (or ACTP_WORKER_ID)"
        )

    # ------------------------------------------------------------------ orphans

    def _orphans(
        self, now: datetime, previous: dict[str, Any] | None, mine: frozenset[str] = frozenset()
    ) -> list[ScheduledRun]:
        """Running runs whose lease expired, or that this worker's previous life held (not ``mine``)."""
        mine_before = previous is not None and previous.get("boot_id") != self.boot_id
        return [
            r
            for r in self.store.runs(status=RunStatus.RUNNING)
            if r.run_id not in mine
            and (
                (r.lease_expires_at is not None and r.lease_expires_at <= now)
                or (mine_before and r.owner == self.worker_id)
            )
        ]

    def fire_orphans(self, orphans: list[ScheduledRun], now: datetime) -> tuple[ScheduledRun, ...]:
        """Fire ``orphan`` on these runs (their attempt failed when their owner died); returns those it moved."""
        items: list[Finished] = []
        for run in orphans:
            died = run.lease_expires_at if run.lease_expires_at and run.lease_expires_at <= now else now
            why = f"orphaned: owner {run.owner} stopped renewing its lease (expired {died.isoformat()})"
            # The run failed when its owner died, not now: backoff counts from then.
            changes = {"reason": why, "completed_at": died, "error_type": ORPHANED, "error": f"{ORPHANED}: {why}"}
            items.append((run, "orphan", changes))
        return tuple(moved for moved in self.store.transition_many(items, now=now) if isinstance(moved, ScheduledRun))

    def find_orphans(self, now: datetime, mine: frozenset[str]) -> tuple[ScheduledRun, ...]:
        """The running runs whose lease lapsed (not ``mine``), read only: a tick fires ``orphan`` on them."""
        return tuple(self._orphans(now, None, mine))

    def fire_found(self, found: Iterable[ScheduledRun], now: datetime, *, startup: bool) -> tuple[ScheduledRun, ...]:
        """Fire ``orphan`` on the runs found earlier (``find_orphans``, or the start's survey) that are
        still as they were found; returns those it moved.

        A run whose owner renewed its lease since, or that another worker took or ended, is left
        alone: its owner is alive, or it is someone else's now. Outside the start, a run whose lease
        has not lapsed by ``now`` is left alone too.
        """
        current = {r.run_id: r for r in self.store.runs(status=RunStatus.RUNNING)}
        still = []
        for run in found:
            now_row = current.get(run.run_id)
            if now_row is None or _hold(now_row) != _hold(run):
                continue
            if not startup and (run.lease_expires_at is None or run.lease_expires_at > now):
                continue
            still.append(now_row)
        return self.fire_orphans(still, now)

    def sweep_orphans(self, now: datetime, mine: frozenset[str]) -> tuple[ScheduledRun, ...]:
        """Fire ``orphan`` on runs whose lease lapsed (not ``mine``); returns those it moved (the same
        tick retries or dead-letters them, and tells each failed attempt with that decision)."""
        return self.fire_orphans(self._orphans(now, None, mine), now)

    # ------------------------------------------------------------------ lifecycle runs and the state row

    def create_lifecycle_runs(self, phase: str, now: datetime) -> list[ScheduledRun]:
        created = []
        for schedule in self.store.list(enabled=True, trigger_type=TriggerType.LIFECYCLE):
            if schedule.expression == phase:
                run = self.store.create_run(
                    schedule, now, occurrence_key=f"{phase}:{self.boot_id}", origin="lifecycle", reason=f"{phase}"
                )
                if run is not None:
                    created.append(run)
        return created

    @property
    def state_key(self) -> str:
        return f"worker:{self.worker_id}"

    def put_state(self, now: datetime, *, clean: bool, in_flight: int) -> None:
        """Write this worker's liveness (and, with ``clean``, its clean stop) to ``engine_state``."""
        self.store.put_state(self.state_key, self.state_value(now, clean=clean, in_flight=in_flight))

    def state_value(self, now: datetime, *, clean: bool, in_flight: int) -> dict[str, Any]:
        started = self.started_at or now
        return {
            "worker_id": self.worker_id,
            "boot_id": self.boot_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": started.isoformat(),
            "heartbeat_at": now.isoformat(),
            "clean": clean,
            "stopped_at": now.isoformat() if clean else None,
            "in_flight": in_flight,
            "tick_seconds": self.tick_seconds,
            "heartbeat_seconds": HEARTBEAT_SECONDS,
        }


def _hold(run: ScheduledRun) -> tuple[Any, ...]:
    """Who holds a running run, and until when: what a renewal or a takeover changes."""
    return (run.attempt, run.starts, run.owner, run.lease_expires_at)


def count_late_prepared(
    report: ReconciliationReport, run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, *, skipped: bool
) -> None:
    """A run an earlier life prepared and never started is one more missed occurrence in the report."""
    if now - run.intended_run_at <= schedule.grace:
        return
    report.missed_detected += 1
    if not skipped:
        report.missed_caught_up += 1
    elif schedule.missed_run_policy is MissedRunPolicy.CATCH_UP_ONCE:
        report.missed_coalesced += 1
    else:
        report.missed_skipped += 1


def count_missed(report: ReconciliationReport, name: str, plan: DuePlan) -> None:
    missed = plan.missed
    if missed is None:
        return
    report.missed_detected += missed.detected
    report.missed_caught_up += missed.caught_up
    report.missed_skipped += missed.skipped
    report.missed_coalesced += missed.coalesced
    if missed.warning:
        report.warnings.append(f"{name}: {missed.warning}")
