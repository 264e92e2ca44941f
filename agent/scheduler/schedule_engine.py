"""ScheduleEngine: start (reconcile), tick, dispatch, stop (drain).

The engine fires triggers on run and breaker machines and nothing else: which runs exist,
which may start, retry or be skipped is decided by the guards in ``policies/``. All database
work of one tick runs as one call on a dedicated thread, so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from . import limits
from .alerts import AlertDispatcher, Notifier, dead_letter_text
from .change_feed import ChangeFeed, open_feed
from .clock import Clock
from .db_health import DatabaseHealth, Outage, outage_wait, report_replaced_database
from .definition import ScheduleDefinition
from .enums import BreakerState, ConcurrencyPolicy, MissedRunPolicy, RunStatus, TriggerType
from .errors import (
    DatabaseReplaced,
    DatabaseUnavailable,
    GuardRejected,
    SchedulerError,
    StaleState,
    TaskNotConfigured,
    WorkerIdInUse,
)
from .execution import Outcome, ended, run_in_thread, thread_ended, timed_out
from .machines.run_lifecycle import fire_run
from .policies.concurrency import Action, decide_starts
from .policies.missed_run import DueFacts, DuePlan, PlannedRun, is_prepared, plan_due, prepared_blocked
from .policies.retry import ORPHANED, retry_at
from .policies.shutdown import CHECKPOINT_WAIT, STILL_RUNNING, Stopping, asks_the_task, cutoff
from .reconciliation import ReconciliationReport
from .schedule_store import BATCH_MIN, Materialization, ScheduleStore
from .scheduled_run import ScheduledRun
from .tasks import RunContext, TaskRegistry, TaskSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A run's claim lapses this long after its last renewal; survivors then treat it as orphaned.
LEASE_SECONDS = 30.0
#: Worker liveness is written to ``engine_state`` this often.
HEARTBEAT_SECONDS = 10.0
#: A run asked to stop (replace) that has not stopped after this long is cancelled.
STOP_GRACE_SECONDS = 5.0
#: checkpoint_and_stop waits at most this long (within the shutdown timeout) for the checkpoint.
CHECKPOINT_WAIT_SECONDS = CHECKPOINT_WAIT.total_seconds()
#: Granularity of clock-driven waits (shutdown drains, stop grace).
WAIT_STEP_SECONDS = 0.05
#: While draining, cutoffs (shutdown timeouts, hurry()) are re-checked at least this often.
DRAIN_POLL_SECONDS = 0.25
#: A task cancelled at its shutdown cutoff that has not ended this long after (it swallowed the
#: cancel) is left behind: its run is recorded, and the stop goes on without it.
CUT_GRACE_SECONDS = 1.0
#: An outbox pass that left alerts behind (Telegram down) is repeated after this long (clock time).
ALERT_RETRY = timedelta(seconds=60)
#: The outbox is looked at this often even when this process queued nothing: alerts that
#: another process (the CLI, a worker that died) left behind go out within this time.
ALERT_SWEEP = timedelta(minutes=5)
#: stop() gives the last outbox pass this many real seconds.
DELIVERY_ON_STOP_SECONDS = 5.0
#: A run that succeeded with nothing waiting behind it is recorded by the next tick, at most this
#: many real seconds later, so completions close together share one transaction. Any other
#: outcome (a failure, a skip, a run others wait for) wakes the loop at once.
RECORD_WINDOW_SECONDS = 0.02
#: Outcomes that end a run; the moment the task ended is recorded as its completion.
_ENDINGS = frozenset({"succeed", "fail", "skip", "cancel"})
#: Right after a tick's runs are dispatched, occurrences due within this long are prepared (stored
#: as pending runs), so that at their time only a claim stands between them and their start.
PREPARE_AHEAD = timedelta(seconds=1)
#: The engine checkpoints SQLite's WAL itself, after dispatching, at most this often (real seconds).
CHECKPOINT_SECONDS = 1.0
#: The engine checks that its SQLite file is still the one it opened at most this often (real
#: seconds): one ``stat``, so that at most this long of work goes into a deleted file.
IDENTITY_CHECK_SECONDS = 0.2
#: An event loop blocked this long (an async task that does not yield) is logged (real seconds).
LOOP_STALL_SECONDS = 1.0
#: While the engine runs, it notes this often that its event loop is running (real seconds): a late
#: note means the loop was blocked, and a task that ends long after the last note blocked it.
LOOP_BEAT_SECONDS = 0.1
#: With a live change feed, a full scan still runs at least this often (real seconds; or every
#: ``tick_seconds`` if that is longer). The feed reports every write made through a ScheduleStore;
#: the safety net is for what it cannot see: a write made around the store, a PostgreSQL
#: notification lost in the instant a connection drops, a SQLite commit by another process in the
#: instant after one of this store's own. Rare enough to cost nothing while idle, frequent enough
#: that such a change is not left waiting long.
SAFETY_NET_SECONDS = 60.0
#: The engine's loop sleeps at most this long of real time, so that its heartbeat is written on
#: time whatever the clock does (a FakeClock that jumps ahead writes it at each wake instead).
HEARTBEAT_WAKE_SECONDS = HEARTBEAT_SECONDS
#: The built-in task of reconciliation-type schedules: sweep runs whose lease expired.
RECONCILE_TASK = "scheduler.reconcile"

Finished = tuple[ScheduledRun, str, dict[str, Any]]
#: What a tick's database work changes in the engine besides the database. A transaction that runs
#: again (a lock, a deadlock, a dropped connection) starts from these as they were before it.
_TICK_STATE = (
    "_last_full_scan",
    "_last_full_scan_real",
    "_lease_due",
    "_scan_postponed",
    "_maybe_pending",
    "_maybe_failed",
    "_retry_due",
    "_pending_due",
    "_last_heartbeat",
    "_breaker_due",
    "_schedule_due",
    "_schedule_batch",
    "_waiting",
)


def default_worker_id() -> str:
    """``ACTP_WORKER_ID`` or this machine's host name: stable across restarts of the same worker."""
    return os.environ.get("ACTP_WORKER_ID") or socket.gethostname()


@dataclass(eq=False)
class _InFlight:
    """A run this engine is executing."""

    run: ScheduledRun
    schedule: ScheduleDefinition
    ctx: RunContext
    task: asyncio.Task[None]
    deadline: datetime | None
    outcome: tuple[str, dict[str, Any]] | None = None
    """Decided by whoever interrupts the task (timeout, replace, shutdown) before it ends."""
    kill_at: datetime | None = None
    cut: bool = False
    """Cancelled at its shutdown cutoff; at ``kill_at`` again it is left behind."""
    checkpoint_saved: bool = False
    thread: asyncio.Future[Any] | None = None
    """A sync task's thread (``run_in_thread``): done only once the thread has ended."""
    overran: bool = False
    """A sync task passed its timeout: asked to stop, it is recorded failed when its thread ends."""
    stopping: Stopping | None = None
    """Set when the worker's stop reached this run: the facts its ``stop`` guards read."""

    @property
    def in_thread(self) -> bool:
        """Whether a thread is still running this run's code (it cannot be cancelled)."""
        return self.thread is not None and not self.thread.done()


@dataclass
class _TickResult:
    started: list[tuple[ScheduledRun, ScheduleDefinition]] = field(default_factory=list)
    replace: set[str] = field(default_factory=set)
    """Schedule ids whose in-flight runs must stop for a replacing run."""
    next_due: datetime | None = None


class ScheduleEngine:
    """Turns schedules into runs and runs into outcomes, through the machines.

    ``store`` and ``tasks`` are required; ``clock`` defaults to the store's clock (give both
    the same FakeClock in simulations). The loop sleeps until the next due instant (a run, a
    retry, a breaker probe, a deadline, a lease to renew or to take over); changes made
    elsewhere (other workers, the CLI) wake it within a fraction of a second through the change
    feed, and ``emit()``, ``wake()`` and in-process schedule changes at once. ``tick_seconds``
    is how often the engine scans the database on its own while the feed cannot see changes (its
    connection is lost, or the database is in memory); with a live feed, a full scan runs on each
    change and, as a safety net, at least every ``max(tick_seconds, SAFETY_NET_SECONDS)`` real seconds.
    """

    def __init__(
        self,
        store: ScheduleStore,
        tasks: TaskRegistry,
        *,
        clock: Clock | None = None,
        tick_seconds: float = 10.0,
        worker_id: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        notifier: Notifier | None = None,
    ) -> None:
        if tick_seconds <= 0:
            raise ValueError(f"tick_seconds must be more than 0, got {tick_seconds}")
        self.store = store
        self.tasks = tasks
        self.clock: Clock = clock or store.clock
        self.tick_seconds = tick_seconds
        self.worker_id = worker_id or default_worker_id()
        self.lease = timedelta(seconds=lease_seconds)
        self.boot_id = uuid.uuid4().hex[:12]
        self._builtins: dict[str, TaskSpec] = {
            RECONCILE_TASK: TaskSpec(name=RECONCILE_TASK, fn=self._reconcile_task, description="sweep orphaned runs"),
        }
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-db")
        self._in_flight: dict[str, _InFlight] = {}
        self._finished: list[Finished] = []
        self._stops: dict[str, tuple[Stopping, ScheduleDefinition]] = {}
        """Runs a stop ended and not yet recorded: the facts and the schedule their ``stop`` guards read."""
        self._record_timer: asyncio.TimerHandle | None = None
        self._ticking: asyncio.Lock | None = None
        self._events: list[tuple[str, dict[str, Any], str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._next_due: datetime | None = None
        self._retry_due: datetime | None = None
        self._schedule_due: datetime | None = None
        self._schedule_batch = 0
        """How many schedules share ``_schedule_due`` (counted up to BATCH_MIN)."""
        self._pending_due: datetime | None = None
        """The earliest pending run not yet due that this engine did not prepare (seen by full scans)."""
        self._prepared: dict[str, _Prepared] = {}
        self._armed: dict[str, _Armed] = {}
        """Runs this engine prepared ahead of their time, with their schedule as it was then."""
        self._changes = 0
        """Schedule changes made in this process (``wake()``): a prepared run's copy of its schedule
        is trusted only if none happened since, whatever the timestamps say."""
        self._waiting: set[str] = set()
        self._fresh: dict[str, ScheduleDefinition] = {}
        self._maybe_pending = True
        self._maybe_failed = True
        self._scan_postponed = False
        self._last_checkpoint = time.monotonic()
        self._last_full_scan: datetime | None = None
        self._last_full_scan_real = 0.0
        """``time.monotonic()`` at the last full scan (the safety net counts real time)."""
        self._lease_due: datetime | None = None
        """When the earliest lease of another worker's run lapses (seen by full scans): its owner may be gone."""
        self._feed: ChangeFeed | None = None
        self._last_heartbeat: datetime | None = None
        self._last_renewal: datetime | None = None
        self._started_at: datetime | None = None
        self._draining = False
        self._stopped = False
        self._report: ReconciliationReport | None = None
        self._report_id: str | None = None
        """The stored row of this start's report, once written."""
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_alerts: Callable[[], None] | None = None
        self._runner: asyncio.Task[Any] | None = None
        self.alerts = AlertDispatcher(store, notifier, self.clock, run_db=self._db)
        self._alerts_due = True  # leftovers of an earlier life go out on the first pass
        self._last_delivery: datetime | None = None
        self._delivery: asyncio.Task[int] | None = None
        self._breaker_due: datetime | None = None
        self._health = DatabaseHealth()
        self._beat_at = time.monotonic()
        self._beat_handle: asyncio.TimerHandle | None = None
        self._quiet_until: datetime | None = None
        """After an outage, runs whose lease lapsed are not taken over before this instant."""
        self._identity_checked = time.monotonic()

    # ------------------------------------------------------------------ public API

    @property
    def in_flight(self) -> list[ScheduledRun]:
        """Runs this engine is executing now."""
        return [f.run for f in self._in_flight.values()]

    @property
    def report(self) -> ReconciliationReport | None:
        """The report of the last ``start()``."""
        return self._report

    async def start(self) -> ReconciliationReport:
        """Reconcile what the previous life left (orphans, paused runs, missed runs) and run startup schedules."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ticking = asyncio.Lock()
        self._unsubscribe = self.store.subscribe(self.wake)
        if self._feed is None:
            self._feed = open_feed(self.store)
            self._feed.start(self._changed_elsewhere)
        self._unsubscribe_alerts = self.store.subscribe_alerts(self._alert_queued)
        self._beat_at = time.monotonic()
        self._beat_handle = self._loop.call_later(LOOP_BEAT_SECONDS, self._beat)
        now = self.clock.now()
        self._started_at = now
        await self._db(self.store.defer_checkpoints)
        await self._db(self.store.disable_out_of_bounds)
        # The report is written in the same transaction as the first changes it counts, brought up
        # to date by the startup tick's, and closed at the end: a start cut short leaves it true.
        report: ReconciliationReport = await self._db(self.store.atomic_kept, self._reconcile_db, now, False)
        await self.tick(report=report)
        report.finished_at = self.clock.now()
        await self._db(self._save_report, report)
        log.info("%s", report.summary())
        if report.has_problems:
            await self._db(
                self.store.add_alert,
                "reconciliation",
                f"Worker {self.worker_id} started: {report.summary()}",
                report.to_dict(),
            )
        self._report = report
        return report

    async def reconcile_dry_run(self) -> ReconciliationReport:
        """The report a start would produce now, computed without changing anything."""
        return await self._db(self._reconcile_db, self.clock.now(), True)

    async def tick(self, *, report: ReconciliationReport | None = None) -> None:
        """One pass: record finished runs, materialize due occurrences, retry, start and dispatch."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._ticking is None:
            self._ticking = asyncio.Lock()
        async with self._ticking:  # one tick at a time (the loop's, wait_idle's, stop's)
            await self._tick(report)

    async def _tick(self, report: ReconciliationReport | None) -> None:
        now = self.clock.now()
        self._enforce_deadlines(now)
        finished, self._finished = self._finished, []
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        events, self._events = self._events, []
        renew: list[str] = []
        renewed_before = self._last_renewal
        if self._in_flight and (self._last_renewal is None or now - self._last_renewal >= self.lease / 3):
            renew = list(self._in_flight)
            self._last_renewal = now
        mine = frozenset(self._in_flight)
        if self._feed is not None and self._feed.changed():
            self._last_full_scan = None  # another process wrote: look at everything
        prepared = [p for p in self._prepared.values() if p.run.intended_run_at <= now]
        for p in prepared:
            del self._prepared[p.run.run_id]
        before: dict[str, Any] = {}
        try:
            result = await self._db(
                self.store.atomic_kept,
                self._tick_db,
                now,
                before=before,
                finished=finished,
                events=events,
                renew=renew,
                report=report,
                mine=mine,
                prepared=prepared,
            )
        except BaseException:
            self._restore(before)
            self._requeue_tick(finished, events, prepared, renewed_before)
            raise
        for run, _, _ in finished:
            self._stops.pop(run.run_id, None)  # recorded
        for run, schedule in result.started:
            self._dispatch(run, schedule)
        self._disarm(p.run.run_id for p in prepared)  # due now but not started: skipped, or another's
        for schedule_id in result.replace:
            self._request_stop(schedule_id, now)
        self._next_due = result.next_due
        soon = self._schedule_due
        if not self._draining and soon is not None and soon <= self.clock.now() + PREPARE_AHEAD:
            self._next_due = await self._db(self.store.atomic_kept, self._prepare_db, self.clock.now())
            self._arm()
        if report is None and time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self._last_checkpoint = time.monotonic()
            await self._db(self.store.checkpoint)
        self._maybe_deliver(now)

    def _restore(self, before: dict[str, Any]) -> None:
        for name, value in before.items():
            setattr(self, name, value)

    def _requeue_tick(
        self,
        finished: list[Finished],
        events: list[tuple[str, dict[str, Any], str]],
        prepared: list[_Prepared],
        renewed_before: datetime | None,
    ) -> None:
        """A tick's transaction did not commit: what it was to write is kept for the next tick.

        Outcomes of finished runs, events and due prepared runs go back in front of whatever
        arrived since; leases count as not renewed; the next tick makes a full scan, since the
        database may have changed in ways this engine did not see while it was away.
        """
        self._finished[:0] = finished
        self._events[:0] = events
        for p in prepared:
            self._prepared.setdefault(p.run.run_id, p)
        self._last_renewal = renewed_before
        self._last_full_scan = None
        self._maybe_pending = self._maybe_failed = True

    def _maybe_deliver(self, now: datetime) -> None:
        """Start an outbox pass when alerts were queued here, to retry what a pass left, or to sweep now and then."""
        if self._delivery is not None and not self._delivery.done():
            return
        since = None if self._last_delivery is None else now - self._last_delivery
        retry = self.alerts.left_over and (since is None or since >= ALERT_RETRY)
        if self._alerts_due or retry or since is None or since >= ALERT_SWEEP:
            self._alerts_due = False
            self._last_delivery = now
            self._delivery = asyncio.get_running_loop().create_task(self.alerts.deliver(), name="alerts")

    async def deliver_alerts(self) -> int:
        """Wait for any outbox pass in progress, then make one more; returns how many were delivered."""
        if self._delivery is not None and not self._delivery.done():
            await asyncio.wait([self._delivery])
        self._alerts_due = False
        self._last_delivery = self.clock.now()
        self._delivery = asyncio.get_running_loop().create_task(self.alerts.deliver(), name="alerts")
        return await self._delivery

    async def wait_idle(self) -> None:
        """Until this engine has no run in flight and every finished run is recorded."""
        while True:
            while self._in_flight or self._finished:
                tasks = [f.task for f in self._in_flight.values()]
                if tasks:
                    await asyncio.wait(tasks)
                await self.tick()
            if self._ticking is None or not self._ticking.locked():
                return
            async with self._ticking:  # the loop's tick in progress may be recording the last ones
                pass

    async def run_until(self, instant: datetime) -> None:
        """Run the loop until the clock reaches ``instant`` (simulated days take milliseconds on a FakeClock)."""
        self._runner = asyncio.current_task()
        try:
            while not self._draining:
                if not await self._tick_through_outages():
                    continue
                now = self.clock.now()
                if now >= instant:
                    return
                await self._sleep(until=instant)
        finally:
            self._runner = None

    async def run_forever(self) -> None:
        """Run the loop until ``stop()``.

        A database that becomes unavailable pauses dispatching until it is back (see
        ``_tick_through_outages``); DatabaseReplaced ends the loop without another write.
        """
        self._runner = asyncio.current_task()
        try:
            while not self._draining:
                if await self._tick_through_outages():
                    await self._sleep()
        finally:
            self._runner = None

    async def _tick_through_outages(self) -> bool:
        """One tick of the loop, riding out a database outage; False when stop() came first.

        While ticks fail with DatabaseUnavailable, they are retried with a jittered exponential
        backoff (capped at OUTAGE_BACKOFF_MAX_SECONDS, without end); one line is logged when the
        database is lost, one every OUTAGE_REPORT_EVERY while it stays away and one when it is
        back, and an alert saying how long it was down is queued on recovery. Runs in flight go
        on; their outcomes wait in memory for the tick that can write them.
        """
        if self._draining:
            return False
        if not self._health.down and self._health.unreported is None:
            try:  # the usual case, without the retry machinery around it
                self._check_database_identity()
                await self.tick()
                return True
            except DatabaseUnavailable as exc:
                self._note_outage(exc)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DatabaseUnavailable),
            wait=outage_wait(),
            sleep=self._outage_sleep,
            before_sleep=self._outage_attempt_failed,
        )
        async for attempt in retrying:
            with attempt:
                if self._draining:
                    return False
                self._check_database_identity()
                await self.tick()
        outage = self._health.succeeded(self.clock.now())
        if outage is not None:
            # Every lease lapsed while nobody could reach the database, the owners' included: they
            # get one lease to renew them and record what ended before anyone takes their runs over.
            self._quiet_until = self.clock.now() + self.lease
            log.warning(
                "database back after %.1f s (%d failed attempts); dispatching resumed", outage.seconds, outage.attempts
            )
        if self._health.unreported is not None:
            await self._queue_outage_alert(self._health.unreported)
        return True

    def _outage_attempt_failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self._note_outage(exc or DatabaseUnavailable("unknown"))

    def _note_outage(self, exc: BaseException) -> None:
        line = self._health.failed(self.clock.now(), exc)
        if line is not None:
            log.warning("%s", line)

    async def _outage_sleep(self, seconds: float) -> None:
        """The backoff between attempts, on the engine's clock; stop() cuts it short."""
        if not self._draining:
            await self._nap(seconds)

    async def _queue_outage_alert(self, outage: Outage) -> None:
        try:
            await self._db(self.store.add_alert, "database_outage", outage.text(self.worker_id), outage.payload())
        except DatabaseUnavailable as exc:
            log.info("the outage alert waits for the database to come back: %s", exc)
            return
        self._health.alert_queued()

    def _check_database_identity(self) -> None:
        """At most every IDENTITY_CHECK_SECONDS: the SQLite file is still the one opened (one stat)."""
        at = time.monotonic()
        if at - self._identity_checked < IDENTITY_CHECK_SECONDS:
            return
        self._identity_checked = at
        try:
            self.store.check_identity()
        except DatabaseReplaced as exc:
            self._draining = True  # no more dispatching, and no write into the lost file
            self._disarm(list(self._armed))
            log.error("%s", exc)
            report_replaced_database(self.store, self.worker_id, exc)
            raise

    async def stop(self) -> None:
        """Stop dispatching, run shutdown schedules, apply each running run's shutdown policy, mark a clean stop."""
        if self._stopped or self._draining:
            if self._draining and self._runner is None:
                self._stop_feed()  # the loop ended on its own (a replaced database)
            return
        self._draining = True
        self._wake.set()
        self._disarm(list(self._armed))
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            await asyncio.wait([runner])
        # Every shutdown timeout counts from here, the shutdown schedules' runs' too: the stop takes
        # the longest of them, not their sum.
        began = self.clock.now()
        self._apply_shutdown_policies(began)
        await self._run_shutdown_schedules(began)
        await self._drain()
        await self.tick()
        try:
            await asyncio.wait_for(self.deliver_alerts(), timeout=DELIVERY_ON_STOP_SECONDS)
        except TimeoutError:
            log.warning("alerts still undelivered at shutdown stay in the outbox for the next start")
        now = self.clock.now()
        await self._db(self.store.put_state, self._state_key, self._state_value(now, clean=True))
        await self._db(self.store.checkpoint)
        self._stopped = True
        self._stop_feed()
        if self._beat_handle is not None:
            self._beat_handle.cancel()
        for unsubscribe in (self._unsubscribe, self._unsubscribe_alerts):
            if unsubscribe is not None:
                unsubscribe()
        self._executor.shutdown(wait=True)
        log.info("engine %s stopped cleanly", self.worker_id)

    def hurry(self) -> None:
        """Cut a running shutdown short (a second signal): ``stop`` is fired on every run still in flight
        now, and its guards requeue it (or pause it, under checkpoint_and_stop with a checkpoint)."""
        now = self.clock.now()
        for flight in self._in_flight.values():
            began = now if flight.stopping is None else flight.stopping.began
            flight.stopping = Stopping(began=began, hurried=True, in_thread=flight.in_thread)
            flight.outcome = ("stop", {})
            flight.kill_at = now
        self._wake.set()

    def emit(self, name: str, payload: dict[str, Any] | None = None) -> str:
        """Fire event ``name``: every enabled event schedule on it gets one run with ``payload`` in its params.

        Returns the event id. Runs are created on the next tick, which this wakes at once. A name or
        payload no store could hold raises InvalidSchedule here, before anything is queued.
        """
        limits.check_text("name", name, limits.NAME_CHARS, single_line=True)
        payload = limits.check_params("payload", dict(payload or {}))
        event_id = uuid.uuid4().hex
        self._events.append((name, payload, event_id))
        self.wake()
        return event_id

    async def run_now(self, name: str) -> ScheduledRun:
        """Create a manual run of schedule ``name`` (through the same machine as every run) and wake the loop."""
        schedule = await self._db(self.store.get, name)
        run = await self._db(
            self.store.create_run,
            schedule,
            self.clock.now(),
            occurrence_key=f"manual:{uuid.uuid4().hex}",
            origin="manual",
        )
        assert run is not None
        self.wake()
        return run

    def _stop_feed(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.stop()

    def _changed_elsewhere(self) -> None:
        # Called by the change feed from its thread; the next tick asks it what changed.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake.set)

    def _alert_queued(self) -> None:
        # Called by the store from any thread; the next tick starts an outbox pass.
        self._alerts_due = True

    def wake(self) -> None:
        """Make the loop look at the database now (thread-safe)."""
        self._last_full_scan = None
        self._changes += 1
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ the loop's waiting

    @property
    def _polling(self) -> bool:
        """Whether the engine must look for changes itself, every ``tick_seconds`` (no live change feed)."""
        return self._feed is None or not self._feed.live

    def _scan_due(self, now: datetime) -> bool:
        """Whether this tick makes a full scan: asked for (a change, a wake), or the safety net is due."""
        if self._last_full_scan is None:
            return True
        if self._polling:
            return (now - self._last_full_scan).total_seconds() >= self.tick_seconds
        if self._lease_due is not None and self._lease_due <= now and not self._sweep_quiet(now):
            return True  # another worker's lease lapsed: take its run over if it is gone
        return time.monotonic() - self._last_full_scan_real >= max(self.tick_seconds, SAFETY_NET_SECONDS)

    def _real_wait(self) -> float:
        """The longest real time the loop may sleep: until the heartbeat, or the safety-net scan."""
        wait = HEARTBEAT_WAKE_SECONDS
        if not self._polling:
            net = max(self.tick_seconds, SAFETY_NET_SECONDS)
            wait = min(wait, self._last_full_scan_real + net - time.monotonic())
        return max(wait, 0.0)

    def _wake_at(self, now: datetime) -> datetime | None:
        """The next instant on the clock at which there is something to do; None if there is none."""
        candidates = [now + timedelta(seconds=self.tick_seconds)] if self._polling else []
        candidates += [d for d in (self._next_due, self._pending_due) if d is not None]
        if self._lease_due is not None:
            candidates.append(max(self._lease_due, self._quiet_until or self._lease_due))
        if self._prepared:
            candidates.append(min(p.run.intended_run_at for p in self._prepared.values()))
        due = self._schedule_due
        if due is not None and self._schedule_batch >= BATCH_MIN and due - PREPARE_AHEAD > now:
            candidates.append(due - PREPARE_AHEAD)  # a batch: wake to prepare it before its time
        for f in self._in_flight.values():
            candidates += [t for t in (None if f.overran else f.deadline, f.kill_at) if t is not None]
        if self._in_flight:
            candidates.append((self._last_renewal or now) + self.lease / 3)
        return max(min(candidates), now) if candidates else None

    async def _sleep(self, until: datetime | None = None) -> None:
        """Wait for the next thing to do (a due instant, a change elsewhere, a wake), but not past ``until``.

        One wait, however far the next instant: on a FakeClock, whose sleep skips time, an idle
        simulated day is a handful of steps.
        """
        await asyncio.sleep(0)  # let dispatched tasks run at this instant before time moves on
        if self._events or self._wake.is_set():
            self._wake.clear()
            return
        now = self.clock.now()
        instant = self._wake_at(now)
        if until is not None:
            instant = until if instant is None else min(instant, until)
        delay = None if instant is None else (instant - now).total_seconds()
        if delay is None or delay > 0:
            await self._nap(delay, real_limit=self._real_wait())

    async def _nap(self, seconds: float | None, *, real_limit: float | None = None) -> None:
        """Sleep ``seconds`` of clock time (None: no limit on the clock), or until ``wake()``, or
        ``real_limit`` real seconds, whichever comes first."""
        waker = asyncio.ensure_future(self._wake.wait())
        waits: set[asyncio.Future[Any]] = {waker}
        if seconds is not None:
            waits.add(asyncio.ensure_future(self.clock.sleep(seconds)))
        try:
            await asyncio.wait(waits, timeout=real_limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in waits:
                f.cancel()
            self._wake.clear()

    async def _wait_tasks(self, tasks: Iterable[asyncio.Task[None]], seconds: float) -> set[asyncio.Task[None]]:
        """Wait until ``tasks`` end or ``seconds`` of clock time pass; return those still running."""
        pending = {t for t in tasks if not t.done()}
        deadline = self.clock.now() + timedelta(seconds=seconds)
        while pending and self.clock.now() < deadline:
            step = min(WAIT_STEP_SECONDS, (deadline - self.clock.now()).total_seconds())
            sleeper = asyncio.ensure_future(self.clock.sleep(step))
            await asyncio.wait({*pending, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            pending = {t for t in pending if not t.done()}
        return pending

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ database work of a tick (DB thread)

    def _tick_db(
        self,
        now: datetime,
        *,
        finished: list[Finished],
        events: list[tuple[str, dict[str, Any], str]],
        renew: list[str],
        report: ReconciliationReport | None,
        mine: frozenset[str] = frozenset(),
        prepared: list[_Prepared] | None = None,
        before: dict[str, Any] | None = None,
    ) -> _TickResult:
        """The database work of one tick, in one transaction; ``before`` keeps the engine's state as the
        first attempt found it, so that an attempt that runs again does the same work."""
        before = {} if before is None else before
        result = _TickResult()
        self._fresh = {}
        if before:
            self._restore(before)  # this transaction runs again: as the first attempt found things
        else:
            before.update({name: getattr(self, name) for name in _TICK_STATE})
        if report is not None:
            # The whole transaction may run again (a lock, a lost connection): count from the start.
            report.restore()
        # A full scan looks at everything; between full scans only what this engine knows changed.
        full = self._scan_due(now)
        if full and prepared and report is None and not self._scan_postponed:
            # Prepared runs are waiting for their start: the full scan waits for the next tick (once).
            full, self._scan_postponed = False, True
        if full:
            self._last_full_scan = now
            self._last_full_scan_real = time.monotonic()
            self._scan_postponed = False
        if finished:
            self._record_finished(finished, now)
            # A finished run frees its schedule: runs waiting behind it (forbid, enqueue_one) may start.
            self._maybe_pending |= any(run.schedule_id in self._waiting for run, _, _ in finished)
            self._maybe_failed |= any(trigger == "fail" for _, trigger, _ in finished)
        if full and report is None and not self._health.down and not self._sweep_quiet(now):
            # A worker that died mid-run stops renewing its leases: its runs are taken over here.
            # Ours are excluded: those in flight, and those just recorded above.
            self._sweep_orphans(now, mine | {run.run_id for run, _, _ in finished})
        if full or report is not None:
            self._lease_due = self.store.next_lease_expiry(now, owner=self.worker_id)
        if events and not self._draining:
            self._create_event_runs(events, now)
            self._maybe_pending = True
        if renew:
            self.store.renew_leases(renew, owner=self.worker_id, until=now + self.lease, now=now)
        due = self._next_due is not None and self._next_due <= now
        created: list[ScheduledRun] = []
        if not self._draining and (full or report is not None or due):
            created = self._materialize(now, report)
        if full or report is not None or self._maybe_failed or (self._retry_due is not None and self._retry_due <= now):
            self._maybe_failed = False
            waiting = self._retry_failed(now, report)
            self._retry_due = min(waiting) if waiting else None
            self._maybe_pending = True
        if full or report is not None:
            # Runs prepared elsewhere (another worker, an earlier life) wake this loop at their time;
            # from the time of this engine's own prepared runs on, its own ticks look anyway.
            self._pending_due = self.store.next_pending_at(now)
            ours = [p.run.intended_run_at for p in self._prepared.values()]
            if self._pending_due is not None and ours and self._pending_due >= min(ours):
                self._pending_due = None
        elif self._pending_due is not None and self._pending_due <= now:
            self._pending_due = None
            self._maybe_pending = True  # another worker's prepared runs (or an earlier life's) are due
        if not self._draining and (full or self._maybe_pending or prepared or created):
            # Runs left waiting (forbid, enqueue_one) are only found by a scan.
            scan, self._maybe_pending = full or self._maybe_pending or bool(self._waiting), False
            known = [p.run for p in prepared or []] + created
            self._start_due(now, result, known, prepared or [], scan=scan, report=report)
        if self._last_heartbeat is None or (now - self._last_heartbeat).total_seconds() >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            self.store.put_state(self._state_key, self._state_value(now, clean=False))
        if full or report is not None or (self._breaker_due is not None and self._breaker_due <= now):
            self._breaker_due = self._probe_breakers(now)
        if full or due or report is not None or self._next_due is None:
            self._schedule_due, self._schedule_batch = self.store.next_due(count_up_to=BATCH_MIN)
        if report is not None:
            self._save_report(report)  # in this tick's transaction, with the changes it counts
        result.next_due = self._earliest_due()
        return result

    def _earliest_due(self) -> datetime | None:
        dues = [d for d in (self._schedule_due, self._retry_due, self._breaker_due) if d is not None]
        return min(dues) if dues else None

    def _prepare_db(self, now: datetime) -> datetime | None:
        """Store the occurrences due within PREPARE_AHEAD as pending runs; return the next due time.

        Only each schedule's next occurrence, and only one on the clock (not a one-shot delay):
        one that is already due is left to the next tick, where the missed-run policy sees it.
        """
        batch: list[Materialization] = []
        for schedule in self.store.due_schedules(now + PREPARE_AHEAD):
            first = schedule.next_run_at
            if first is None or first <= now or schedule.trigger_type is TriggerType.DELAY:
                continue
            upcoming = schedule.trigger().next_after(first)
            batch.append(Materialization(schedule, [PlannedRun(first)], upcoming, prepared=True))
        if batch:
            for m, created in zip(batch, self.store.materialize_many(batch, now=now), strict=True):
                if not created:
                    continue
                # The schedule as materialize_many left it: current until someone else writes it.
                snapshot = m.schedule.with_state(
                    next_run_at=m.next_run_at, last_run_at=m.schedule.next_run_at, updated_at=now
                )
                for run in created:
                    self._prepared[run.run_id] = _Prepared(run, snapshot, self._changes)
            self._schedule_due, self._schedule_batch = self.store.next_due(count_up_to=BATCH_MIN)
        return self._earliest_due()

    def _record_finished(self, finished: list[Finished], now: datetime) -> None:
        # Runs a stop ended go through ``stop`` with the facts its guards read; the rest as they ended.
        stops = [f for f in finished if f[1] == "stop" and f[0].run_id in self._stops]
        ended = [f for f in finished if not (f[1] == "stop" and f[0].run_id in self._stops)]
        facts = {run.run_id: self._stops[run.run_id][0] for run, _, _ in stops}
        schedules = {self._stops[run.run_id][1].id: self._stops[run.run_id][1] for run, _, _ in stops}
        results = self.store.finish_many(ended, now=now)
        if stops:
            results += self.store.transition_many(stops, now=now, schedules=schedules, facts=facts)
        succeeded: set[str] = set()
        for (run, trigger, _), moved in zip(ended + stops, results, strict=True):
            if isinstance(moved, SchedulerError):
                log.warning("could not record %s of run %s: %s", trigger, run.run_id, moved)
            elif moved.status is RunStatus.SUCCEEDED:
                succeeded.add(run.schedule_id)
        # A success resets the breaker's count; a half-open breaker's trial succeeded: close it.
        for schedule in self.store.reset_failures(succeeded):
            if schedule.breaker_state is BreakerState.HALF_OPEN:
                self._close_breaker(schedule, now)

    def _count_outcome(self, schedule_id: str, *, failed: bool, now: datetime, error: str | None = None) -> None:
        """Feed the breaker: a success resets the count, a terminal failure adds one and may trip it."""
        schedule = self.store.record_outcome(schedule_id, failed=failed)
        if schedule is None:
            return
        try:
            if failed and schedule.breaker_state in (BreakerState.CLOSED, BreakerState.HALF_OPEN):
                trigger = "trip" if schedule.breaker_state is BreakerState.CLOSED else "reopen"
                opened = self.store.transition_breaker(schedule, trigger, now=now)
                # Written in the same transaction as the trip: no open breaker without its alert.
                self.store.add_alert(
                    "breaker_opened",
                    _breaker_text(opened, error),
                    {
                        "schedule": opened.name,
                        "failures": opened.consecutive_failures,
                        "last_error": error,
                    },
                )
                if opened.breaker_cooldown is not None and opened.breaker_opened_at is not None:
                    probe_at = opened.breaker_opened_at + opened.breaker_cooldown
                    self._breaker_due = min(probe_at, self._breaker_due or probe_at)
                log.warning(
                    "breaker of %s opened after %d consecutive failures", opened.name, opened.consecutive_failures
                )
            elif not failed and schedule.breaker_state is BreakerState.HALF_OPEN:
                self._close_breaker(schedule, now)
        except GuardRejected as exc:
            log.debug("breaker of %s stays %s: %s", schedule.name, schedule.breaker_state, exc.reason)
        except StaleState as exc:
            log.info("breaker of %s moved elsewhere: %s", schedule.name, exc)

    def _close_breaker(self, schedule: ScheduleDefinition, now: datetime) -> None:
        try:
            self.store.transition_breaker(schedule, "close", now=now)
            log.info("breaker of %s closed: the trial run succeeded", schedule.name)
        except (GuardRejected, StaleState) as exc:
            log.info("breaker of %s not closed: %s", schedule.name, exc)

    def _probe_breakers(self, now: datetime) -> datetime | None:
        """Fire ``probe`` on open breakers (the guard waits for the cooldown); return the next cooldown end."""
        waiting = []
        for schedule in self.store.open_breakers():
            if schedule.breaker_cooldown is None:
                continue
            try:
                self.store.transition_breaker(schedule, "probe", now=now)
                log.info("breaker of %s half-open: one trial run allowed", schedule.name)
                # Its next occurrence is computed afresh by a full scan, right away.
                self._last_full_scan = None
                waiting.append(now)
            except GuardRejected:
                if schedule.breaker_opened_at is not None:
                    waiting.append(schedule.breaker_opened_at + schedule.breaker_cooldown)
            except StaleState:
                pass
        return min(waiting) if waiting else None

    def _create_event_runs(self, events: list[tuple[str, dict[str, Any], str]], now: datetime) -> None:
        schedules = [s for s in self.store.list(enabled=True, trigger_type=TriggerType.EVENT)]
        for name, payload, event_id in events:
            matching = [s for s in schedules if s.expression == name and s.breaker_state is not BreakerState.OPEN]
            for schedule in matching:
                params = {**schedule.params, "event": name, "payload": payload}
                self.store.create_run(
                    schedule,
                    now,
                    occurrence_key=f"event:{event_id}",
                    origin="event",
                    params=params,
                    reason=f"event {name}",
                )
            log.info("event %s (%s): %d run(s)", name, event_id, len(matching))

    def _materialize(self, now: datetime, report: ReconciliationReport | None) -> list[ScheduledRun]:
        """Materialize every due schedule; return the runs created that wait to start."""
        plans: list[tuple[ScheduleDefinition, DuePlan]] = []
        batch: list[Materialization] = []
        for schedule in self.store.due_schedules(now):
            self._fresh[schedule.id] = schedule
            plan, anchor = self._plan(schedule, now)
            disable = None
            if schedule.trigger_type is TriggerType.DELAY and plan.runs:
                disable = f"delay fired at {plan.runs[-1].intended_at.isoformat()}"
            plans.append((schedule, plan))
            batch.append(Materialization(schedule, plan.runs, plan.next_run_at, anchor, disable))
        if not batch:
            return []
        waiting: list[ScheduledRun] = []
        for (schedule, plan), created in zip(plans, self.store.materialize_many(batch, now=now), strict=True):
            if created is None:
                continue
            waiting += [run for run in created if run.status is RunStatus.PENDING]
            if plan.missed is not None:
                log.info("schedule %s: %s", schedule.name, plan.missed.reason)
                if report is not None:
                    _count_missed(report, schedule.name, plan)
        return waiting

    def _plan(self, schedule: ScheduleDefinition, now: datetime) -> tuple[DuePlan, datetime | None]:
        """The due plan of a schedule; a schedule seen for the first time gets its anchor and first occurrence."""
        if schedule.next_run_at is not None:
            return plan_due(schedule, schedule.trigger(), now), None
        anchor = schedule.anchor_at or schedule.created_at or now
        trigger = schedule.trigger(anchor)
        if schedule.trigger_type is TriggerType.DELAY:
            first = trigger.next_after(datetime.min.replace(tzinfo=now.tzinfo))
        else:
            first = trigger.next_after(now)
        if first is None:
            return DuePlan(), anchor
        return plan_due(schedule.with_state(next_run_at=first, anchor_at=anchor), trigger, now), anchor

    def _retry_failed(self, now: datetime, report: ReconciliationReport | None) -> list[datetime]:
        """Fire ``retry`` on failed runs, ``dead_letter`` where retry is refused; return when the rest are due."""
        failed = self.store.runs(status=RunStatus.FAILED)
        if not failed:
            return []
        schedules = self.store.schedules_by_id(r.schedule_id for r in failed)
        failed = [r for r in failed if r.schedule_id in schedules]
        retried = self.store.transition_many(((r, "retry", {}) for r in failed), now=now, schedules=schedules)
        refused = [r for r, moved in zip(failed, retried, strict=True) if isinstance(moved, GuardRejected)]
        dead = self.store.transition_many(((r, "dead_letter", {}) for r in refused), now=now, schedules=schedules)
        waiting: list[datetime] = []
        lettered = [moved for moved in dead if isinstance(moved, ScheduledRun)]
        if lettered:
            lines = [f"{r.schedule_name} run {r.run_id} ({r.attempt} attempts): {r.error}" for r in lettered]
            self.store.add_alert(
                "dead_letter", dead_letter_text(lines), {"runs": [r.run_id for r in lettered], "lines": lines}
            )
        for run, moved in zip(refused, dead, strict=True):
            if isinstance(moved, ScheduledRun):
                log.warning("run %s of %s dead-lettered: %s", run.run_id, run.schedule_name, moved.reason)
                self._count_outcome(run.schedule_id, failed=True, now=now, error=run.error)
                if report is not None and run.error_type == ORPHANED:
                    report.orphans_dead_lettered += 1
            elif (when := retry_at(run, schedules[run.schedule_id])) is not None:
                waiting.append(when)
        if report is not None:
            report.orphans_requeued += sum(
                1
                for run, moved in zip(failed, retried, strict=True)
                if isinstance(moved, ScheduledRun) and run.error_type == ORPHANED
            )
        return waiting

    def _start_due(
        self,
        now: datetime,
        result: _TickResult,
        known: list[ScheduledRun],
        prepared: list[_Prepared],
        *,
        scan: bool,
        report: ReconciliationReport | None = None,
    ) -> None:
        """Fire ``due`` on what is due: ``known`` (this tick's new runs and the prepared ones due), or
        with ``scan`` every pending due run in the database.

        A run held back whatever its time (schedule removed or disabled, breaker open, task missing)
        is skipped. For the others, the machine's ``due`` guards (the missed-run policy) give the
        fate: skipped as missed or coalesced, written at once; or started, once the concurrency
        policy lets it, by ``due`` again in the claim.
        """
        # Without a reason to look for other pending runs, the due ones are those this engine knows.
        if scan:
            pending = self.store.pending_due(now)
        else:
            pending = sorted(known, key=lambda r: (r.intended_run_at, r.created_at or now))
        if not pending:
            return
        wanted = {r.schedule_id for r in pending}
        # Schedules read earlier in this same transaction are current; so are the copies kept
        # with prepared runs whose row nobody wrote since. Read only the others.
        schedules = {sid: self._fresh[sid] for sid in wanted if sid in self._fresh}
        kept = {
            p.schedule.id: p.schedule
            for p in prepared
            if p.changes == self._changes and p.schedule.id in wanted and p.schedule.id not in schedules
        }
        verified: set[str] = set()
        if kept:
            versions = self.store.schedule_versions(kept)
            verified = {sid for sid, s in kept.items() if versions.get(sid) == s.updated_at}
            schedules.update({sid: kept[sid] for sid in verified})
        schedules.update(self.store.schedules_by_id(wanted - set(schedules)))
        by_schedule: dict[str, list[ScheduledRun]] = {}
        skips: list[Finished] = []
        facts = _due_facts(pending)
        for run in pending:
            schedule = schedules.get(run.schedule_id)
            blocked = self._blocked(run, schedule, now, current=run.schedule_id in verified)
            missed = False
            if blocked:
                skips.append((run, "skip", {"reason": blocked}))
            elif schedule is not None and _fate(run, schedule, now, facts.get(run.run_id)) is RunStatus.SKIPPED:
                missed = True
                skips.append((run, "due", {}))
            else:
                by_schedule.setdefault(run.schedule_id, []).append(run)
            if report is not None and schedule is not None and is_prepared(run):
                _count_late_prepared(report, run, schedule, now, skipped=bool(blocked) or missed)
        # Another worker may be deciding for the same schedules: take turns, then count what runs.
        turns = [sid for sid, runs in by_schedule.items() if _needs_turns(schedules[sid], runs)]
        self.store.lock_schedules(turns)
        counts = self.store.running_counts(turns)
        starts: dict[str, ScheduledRun] = {}
        reasons: dict[str, str] = {}
        self._waiting = set()
        for schedule_id, runs in by_schedule.items():
            schedule = schedules[schedule_id]
            for decision in decide_starts(schedule.concurrency_policy, runs, counts.get(schedule_id, 0)):
                if decision.action is Action.START:
                    starts[decision.run.run_id] = decision.run
                    reasons[decision.run.run_id] = decision.reason
                elif decision.action is Action.SKIP:
                    skips.append((decision.run, "skip", {"reason": decision.reason}))
                else:
                    self._waiting.add(schedule_id)
                    if decision.action is Action.REPLACE:
                        result.replace.add(schedule_id)
        if skips:
            moved_all = self.store.transition_many(skips, now=now, schedules=schedules, facts=facts)
            for (run, _, _), moved in zip(skips, moved_all, strict=True):
                if isinstance(moved, ScheduledRun):
                    log.info("run %s of %s skipped: %s", run.run_id, run.schedule_name, moved.reason)
        if starts:
            won = self.store.start_many(
                starts.values(),
                owner=self.worker_id,
                lease_until=now + self.lease,
                reasons=reasons,
                now=now,
                trigger="due",
                schedules=schedules,
                facts=facts,
            )
            result.started.extend((moved, schedules[moved.schedule_id]) for moved in won)
            if len(won) < len(starts):
                log.debug("%d run(s) were started by another worker first", len(starts) - len(won))

    def _blocked(
        self, run: ScheduledRun, schedule: ScheduleDefinition | None, now: datetime, *, current: bool = False
    ) -> str | None:
        """Why a due pending run must not start at all, whatever its lateness, or None (lateness is for
        the ``due`` guards).

        ``current``: ``schedule`` is the copy kept since this engine prepared ``run``, unchanged since.
        """
        # Disabling a schedule stops new occurrences (see _materialize); runs that already exist,
        # retries included, still run. An open breaker holds back all but an operator's runs
        # (run-now, a replay the operator forced).
        if schedule is None:
            return "schedule removed"
        if schedule.breaker_state is BreakerState.OPEN and run.origin not in ("manual", "replay"):
            return "circuit breaker open"
        if schedule.target not in self._builtins and schedule.target not in self.tasks:
            return f"task {schedule.target!r} is not registered in worker {self.worker_id}"
        if is_prepared(run):
            return prepared_blocked(run, schedule, now, current=current)
        return None

    # ------------------------------------------------------------------ reconciliation (DB thread)

    def _reconcile_db(self, now: datetime, dry_run: bool) -> ReconciliationReport:
        report = ReconciliationReport(worker_id=self.worker_id, started_at=now, dry_run=dry_run)
        previous = self.store.get_state(self._state_key)
        if not dry_run:
            self._refuse_a_live_twin(previous)
            self._report_id = None  # this transaction may be a retry of one that wrote nothing
        if previous is None:
            report.previous_shutdown = "first_start"
        else:
            report.previous_shutdown = "clean" if previous.get("clean") else "crash"
            seen = previous.get("heartbeat_at")
            if seen:
                report.downtime_seconds = (now - datetime.fromisoformat(seen)).total_seconds()
        report.schedules_loaded = len(self.store.list())
        orphans = self._orphans(now, previous)
        report.orphans_found = len(orphans)
        paused = self.store.runs(status=RunStatus.PAUSED)
        if dry_run:
            report.paused_resumed = len(paused)
            report.actions.append(f"would orphan {len(orphans)} run(s) and resume {len(paused)} paused run(s)")
            self._preview_missed(now, report)
            return report
        self._fire_orphans(orphans, now)
        for moved in self.store.transition_many(
            ((r, "resume", {"reason": "resumed after restart"}) for r in paused), now=now
        ):
            if isinstance(moved, ScheduledRun):
                report.paused_resumed += 1
        for schedule in self.store.list():
            if schedule.breaker_state is BreakerState.OPEN and schedule.breaker_cooldown is not None:
                try:
                    self.store.transition_breaker(schedule, "probe", now=now)
                    report.breakers_half_opened += 1
                except (GuardRejected, StaleState):
                    pass
        if report.orphans_found:
            report.actions.append(f"orphaned {report.orphans_found} run(s)")
        if report.paused_resumed:
            report.actions.append(f"resumed {report.paused_resumed} paused run(s)")
        self._create_lifecycle_runs("startup", now)
        self._save_report(report)
        report.keep()
        return report

    def _save_report(self, report: ReconciliationReport) -> None:
        """Write the start's report: the first time as a new row, then over it."""
        data = report.to_dict()
        if self._report_id is None:
            stored = self.store.save_report(
                worker_id=self.worker_id, started_at=report.started_at, finished_at=None, report=data
            )
            self._report_id = stored.id
        else:
            self.store.update_report(self._report_id, finished_at=report.finished_at, report=data)

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

    def _fire_orphans(self, orphans: list[ScheduledRun], now: datetime) -> None:
        items: list[Finished] = []
        for run in orphans:
            died = run.lease_expires_at if run.lease_expires_at and run.lease_expires_at <= now else now
            why = f"orphaned: owner {run.owner} stopped renewing its lease (expired {died.isoformat()})"
            # The run failed when its owner died, not now: backoff counts from then.
            changes = {"reason": why, "completed_at": died, "error_type": ORPHANED, "error": f"{ORPHANED}: {why}"}
            items.append((run, "orphan", changes))
        for (run, _, _), moved in zip(items, self.store.transition_many(items, now=now), strict=True):
            if isinstance(moved, ScheduledRun):
                log.warning("run %s of %s %s", run.run_id, run.schedule_name, moved.reason)

    def _preview_missed(self, now: datetime, report: ReconciliationReport) -> None:
        for schedule in self.store.due_schedules(now):
            plan, _ = self._plan(schedule, now)
            if plan.missed is not None:
                _count_missed(report, schedule.name, plan)
                report.actions.append(f"{schedule.name}: {plan.missed.reason}")

    def _create_lifecycle_runs(self, phase: str, now: datetime) -> list[ScheduledRun]:
        created = []
        for schedule in self.store.list(enabled=True, trigger_type=TriggerType.LIFECYCLE):
            if schedule.expression == phase:
                run = self.store.create_run(
                    schedule, now, occurrence_key=f"{phase}:{self.boot_id}", origin="lifecycle", reason=f"{phase}"
                )
                if run is not None:
                    created.append(run)
        return created

    def _sweep_quiet(self, now: datetime) -> bool:
        return self._quiet_until is not None and now < self._quiet_until

    def _sweep_orphans(self, now: datetime, mine: frozenset[str]) -> int:
        orphans = [r for r in self._orphans(now, None, mine) if r.run_id not in mine]
        self._fire_orphans(orphans, now)
        if orphans:
            self._maybe_failed = True  # the next tick retries or dead-letters them
        return len(orphans)

    async def _reconcile_task(self, ctx: RunContext) -> str:
        swept = await self._db(self._sweep_orphans, self.clock.now(), frozenset(self._in_flight))
        return f"{swept} orphaned run(s) swept"

    # ------------------------------------------------------------------ dispatch and execution (loop thread)

    def _dispatch(self, run: ScheduledRun, schedule: ScheduleDefinition) -> None:
        spec = self._spec(schedule.target)
        armed = self._armed.pop(run.run_id, None)
        if armed is not None and armed.schedule is schedule:
            ctx, task = armed.ctx, armed.task
            armed.claimed.set_result(run)
        else:
            if armed is not None:
                armed.task.cancel()
            ctx = self._context(run, schedule)
            task = asyncio.get_running_loop().create_task(self._execute(run, spec, ctx), name=f"run:{run.run_id}")
        started = run.started_at or self.clock.now()
        deadline = started + schedule.timeout if schedule.timeout else None
        self._in_flight[run.run_id] = _InFlight(run=run, schedule=schedule, ctx=ctx, task=task, deadline=deadline)
        task.add_done_callback(partial(self._cut_before_it_began, run.run_id))
        log.info("run %s of %s started (attempt %d) -> task %s", run.run_id, schedule.name, run.attempt, spec.name)

    def _spec(self, target: str) -> TaskSpec:
        return self._builtins.get(target) or self.tasks.get(target)

    def _context(self, run: ScheduledRun, schedule: ScheduleDefinition) -> RunContext:
        return RunContext(
            run_id=run.run_id,
            schedule=schedule,
            intended_run_at=run.intended_run_at,
            attempt=run.attempt,
            params=dict(run.params),
            checkpoint=run.checkpoint,
            idempotency_key=run.idempotency_key,
            logger=logging.getLogger(f"agent.scheduler.task.{schedule.target}"),
            _save=partial(self._save_checkpoint, run.run_id),
            _beat=partial(self._heartbeat, run.run_id),
            _loop=self._loop,
        )

    def _arm(self) -> None:
        """Make the task of every prepared run ahead of its time; it waits for the claim (or a cancel).

        At a prepared run's time only the claim and a ``set_result`` stand before its task runs:
        creating a thousand tasks takes 10 ms that would otherwise come after the claim.
        """
        loop = asyncio.get_running_loop()
        for p in self._prepared.values():
            run_id = p.run.run_id
            if run_id in self._armed or not (p.schedule.target in self._builtins or p.schedule.target in self.tasks):
                continue
            ctx = self._context(p.run, p.schedule)
            claimed: asyncio.Future[ScheduledRun] = loop.create_future()
            task = loop.create_task(
                self._when_claimed(claimed, self._spec(p.schedule.target), ctx), name=f"run:{run_id}"
            )
            self._armed[run_id] = _Armed(p.schedule, ctx, task, claimed)

    async def _when_claimed(self, claimed: asyncio.Future[ScheduledRun], spec: TaskSpec, ctx: RunContext) -> None:
        await self._execute(await claimed, spec, ctx)

    def _disarm(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            armed = self._armed.pop(run_id, None)
            if armed is not None:
                armed.task.cancel()

    async def _execute(self, run: ScheduledRun, spec: TaskSpec, ctx: RunContext) -> None:
        outcome: Outcome
        thread: asyncio.Future[Any] | None = None
        cut = False
        try:
            missing = spec.missing_configuration()
            if missing:
                raise TaskNotConfigured(", ".join(missing))
            if spec.is_async:
                value = await spec.fn(ctx)
            else:
                thread = run_in_thread(spec.fn, ctx, name=f"run:{run.run_id}")
                if (flying := self._in_flight.get(run.run_id)) is not None:
                    flying.thread = thread
                value = await asyncio.shield(thread)  # a cancel stops the wait, never the thread
            outcome = ended(value)
        except asyncio.CancelledError:
            cut = True
            outcome = ("requeue", {"reason": "cancelled"})
        except Exception as exc:
            outcome = ended(error=exc)
        # A thread that ended on its own did its work, even if a cancel came after: that is the outcome.
        thread_done = thread is not None and thread.done()
        if thread is not None and thread_done:
            outcome = thread_ended(thread)
        flight = self._in_flight.pop(run.run_id, None)
        if flight is None:
            return  # left behind at shutdown, and recorded then
        held = self._held_since_beat() if spec.is_async and not cut else None
        on_its_own = thread_done if thread is not None else not cut
        trigger = self._note_finished(flight, self._decide_outcome(flight, outcome, held=held, on_its_own=on_its_own))
        if trigger == "succeed" and run.schedule_id not in self._waiting and not self._draining:
            self._record_soon()
        else:
            self._wake.set()

    def _note_finished(self, flight: _InFlight, outcome: Outcome) -> str:
        """Queue ``outcome`` of a run no longer in flight for the next tick to record; returns its trigger."""
        trigger, changes = outcome
        if trigger in ("checkpoint", "requeue", "stop") and flight.checkpoint_saved:
            changes = {**changes, "checkpoint": flight.ctx.checkpoint}
        if trigger in _ENDINGS:
            changes = {**changes, "completed_at": self.clock.now()}
        if trigger == "stop" and flight.stopping is not None:
            facts = replace(flight.stopping, checkpoint_saved=flight.checkpoint_saved)
            self._stops[flight.run.run_id] = (facts, flight.schedule)
        self._finished.append((flight.run, trigger, changes))
        return trigger

    def _cut_before_it_began(self, run_id: str, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never ran ``_execute``: its run is recorded here.

        A stop that requeues a run dispatched moments before cancels a task that has not begun.
        """
        flight = self._in_flight.pop(run_id, None)
        if flight is None:
            return  # _execute recorded it
        cut: Outcome = ("requeue", {"reason": "cancelled before it began"})
        self._note_finished(flight, self._decide_outcome(flight, cut, held=None, on_its_own=False))
        self._wake.set()

    def _decide_outcome(self, flight: _InFlight, outcome: Outcome, *, held: float | None, on_its_own: bool) -> Outcome:
        """The outcome to record for a run that ended with ``outcome``, given what happened around it.

        Whoever interrupted the run (timeout, replace, shutdown) decides, except that a task that
        ended ``on_its_own`` (its thread ended, or its coroutine returned or raised without being
        cut) before it was requeued or cancelled, or without a checkpoint to pause at, did its
        work: that is its outcome, whether or not it saw the stop request. An async task that held
        the loop past its deadline failed by timeout.
        """
        if held is not None and held >= LOOP_STALL_SECONDS:
            outcome = self._held_the_loop(flight, held, outcome)
        interruption = flight.outcome
        if interruption is None:
            return outcome
        if interruption[0] == "stop":
            # The stop decides, through the machine's guards: paused with a checkpoint, whatever the
            # task did; requeued if it was cut; a task that ended on its own otherwise did its work.
            verdict = self._stop_verdict(flight, self.clock.now())
            if verdict is None or (on_its_own and verdict.status is not RunStatus.PAUSED):
                return outcome
            return interruption
        unsaved_checkpoint = interruption[0] == "checkpoint" and not flight.checkpoint_saved
        if on_its_own and (interruption[0] in ("requeue", "cancel") or unsaved_checkpoint):
            trigger, changes = outcome
            if trigger == "succeed" and interruption[0] == "cancel" and (why := interruption[1].get("reason")):
                changes = {**changes, "reason": f"asked to stop ({why}); ended on its own"}
            return trigger, changes
        if unsaved_checkpoint:
            return ("requeue", {"reason": "shutdown: no checkpoint saved, requeued"})
        return interruption

    def _beat(self) -> None:
        """Every LOOP_BEAT_SECONDS while the engine runs; a late beat means the loop was blocked."""
        at = time.monotonic()
        stalled = at - self._beat_at - LOOP_BEAT_SECONDS
        self._beat_at = at
        if stalled >= LOOP_STALL_SECONDS:
            log.warning(
                "the event loop was blocked for %.1fs (blocking code in a task or a callback); due meanwhile: %s",
                stalled,
                self._due_meanwhile(),
            )
        if self._loop is not None and not self._stopped:
            self._beat_handle = self._loop.call_later(LOOP_BEAT_SECONDS, self._beat)

    def _held_since_beat(self) -> float | None:
        """How long the loop has run this task's code since its last beat (None without beats).

        An async task that ends long after the last beat blocked the loop in its last step: that
        is the stall, and it is blamed on this task here (the next beat then finds nothing late).
        """
        if self._beat_handle is None:
            return None
        held = time.monotonic() - self._beat_at
        if held >= LOOP_STALL_SECONDS:
            self._beat_at = time.monotonic()
        return held

    def _due_meanwhile(self) -> str:
        now = self.clock.now()
        late = sorted({p.run.schedule_name for p in self._prepared.values() if p.run.intended_run_at <= now})
        if not late and self._schedule_due is not None and self._schedule_due <= now:
            late = [f"schedules due since {self._schedule_due.isoformat()}"]
        return ", ".join(late) or "none"

    def _held_the_loop(self, flight: _InFlight, held: float, outcome: Outcome) -> Outcome:
        """An async task that blocked the event loop for ``held`` seconds: say so; past its timeout,
        it failed by timeout (its deadline could not be enforced while it held the loop)."""
        log.warning(
            "run %s of %s held the event loop for %.1fs without yielding (blocking code in an async task); "
            "every other run waited meanwhile, due: %s",
            flight.run.run_id,
            flight.schedule.name,
            held,
            self._due_meanwhile(),
        )
        if flight.outcome is not None or flight.deadline is None or self.clock.now() < flight.deadline:
            return outcome
        limit = flight.schedule.timeout.total_seconds() if flight.schedule.timeout else 0
        log.warning("run %s of %s timed out after %gs", flight.run.run_id, flight.schedule.name, limit)
        return timed_out(limit, f"; it held the event loop for {held:.1f}s without yielding")

    def _record_soon(self) -> None:
        if self._record_timer is None and self._loop is not None:
            self._record_timer = self._loop.call_later(RECORD_WINDOW_SECONDS, self._wake.set)

    async def _save_checkpoint(self, run_id: str, data: Any) -> None:
        await self._db(self.store.save_checkpoint, run_id, data, owner=self.worker_id)
        flight = self._in_flight.get(run_id)
        if flight is not None:
            flight.checkpoint_saved = True

    def _heartbeat(self, run_id: str) -> None:
        self._last_renewal = None  # renew (and record the heartbeat) on the next tick

    def _enforce_deadlines(self, now: datetime) -> None:
        for flight in list(self._in_flight.values()):
            if flight.deadline is not None and now >= flight.deadline and flight.outcome is None:
                limit = flight.schedule.timeout.total_seconds() if flight.schedule.timeout else 0
                if flight.in_thread:
                    # A thread cannot be cancelled: it is asked to stop, and the run is recorded failed
                    # by timeout when the thread has ended, so that its retry never runs beside it.
                    flight.overran = True
                    flight.ctx.stop_requested.set()
                    flight.outcome = timed_out(limit, " (its thread was asked to stop; recorded when it ended)")
                    log.warning(
                        "run %s of %s passed its timeout of %gs; its thread cannot be cancelled: asked to stop, "
                        "it is recorded failed when it ends",
                        flight.run.run_id,
                        flight.schedule.name,
                        limit,
                    )
                    continue
                flight.outcome = timed_out(limit)
                flight.task.cancel()
                log.warning("run %s of %s timed out after %gs", flight.run.run_id, flight.schedule.name, limit)
            elif flight.kill_at is not None and now >= flight.kill_at and not flight.task.done():
                if flight.in_thread:
                    # A thread cannot be cut: its run stays in flight, so that the run replacing it
                    # waits instead of running beside it, and is recorded for what it did when it ends.
                    flight.kill_at = None
                    log.warning(
                        "run %s of %s was asked to stop and is still running; its thread cannot be "
                        "cancelled: the run is recorded when it ends, and the newer run waits until then",
                        flight.run.run_id,
                        flight.schedule.name,
                    )
                    continue
                flight.task.cancel()

    def _request_stop(self, schedule_id: str, now: datetime) -> None:
        for flight in self._in_flight.values():
            if flight.schedule.id == schedule_id and flight.outcome is None:
                flight.outcome = ("cancel", {"reason": "replaced by a newer occurrence"})
                flight.kill_at = now + timedelta(seconds=STOP_GRACE_SECONDS)
                flight.ctx.stop_requested.set()

    # ------------------------------------------------------------------ shutdown

    async def _run_shutdown_schedules(self, began: datetime) -> None:
        """Start the shutdown schedules' runs; each may finish until its shutdown timeout after ``began``."""
        now = self.clock.now()
        runs = await self._db(self._create_lifecycle_runs, "shutdown", now)
        if not runs:
            return
        schedules = await self._db(self.store.schedules_by_id, [r.schedule_id for r in runs])
        # The same guard as every start: a shutdown run whose task is missing is skipped, with why.
        items: list[Finished] = []
        for run in runs:
            blocked = self._blocked(run, schedules.get(run.schedule_id), now)
            if blocked:
                items.append((run, "skip", {"reason": blocked}))
                log.warning("shutdown run %s of %s skipped: %s", run.run_id, run.schedule_name, blocked)
            else:
                items.append((run, "due", {"owner": self.worker_id, "lease_expires_at": now + self.lease}))
        for moved in await self._db(self.store.transition_many, items, now=now, schedules=schedules):
            if isinstance(moved, ScheduledRun) and moved.status is RunStatus.RUNNING:
                self._dispatch(moved, schedules[moved.schedule_id])
                # Started by the stop itself, it is not stopped by a policy: it has its timeout.
                self._in_flight[moved.run_id].kill_at = began + schedules[moved.schedule_id].shutdown_timeout

    def _apply_shutdown_policies(self, began: datetime) -> None:
        """Fire ``stop`` on every run in flight; its guards (the shutdown policy) requeue it at once, or
        refuse, and the run keeps running until its cutoff (counted from ``began``), when ``stop`` is
        fired again (``_drain``). Under checkpoint_and_stop the task is asked to stop meanwhile."""
        for flight in self._in_flight.values():
            flight.stopping = Stopping(began=began, in_thread=flight.in_thread)
            if asks_the_task(flight.schedule):
                # Whatever the task does next, the stop decides how the run ends (paused if it checkpoints).
                flight.outcome = ("stop", {})
                flight.ctx.stop_requested.set()
            verdict = self._stop_verdict(flight, began)
            if verdict is not None and verdict.status is RunStatus.PENDING:
                flight.outcome = ("stop", {})
                flight.task.cancel()
            else:
                # It may end on its own (or save a newer checkpoint) until its cutoff; a thread, which
                # cannot be cut, has until then too, and its ending is the outcome.
                flight.kill_at = cutoff(flight.schedule, flight.stopping)

    def _stop_verdict(self, flight: _InFlight, now: datetime) -> ScheduledRun | None:
        """What ``stop`` makes of ``flight``'s run at ``now``, as the machine's guards decide (nothing is
        written), or None while they refuse: the run keeps running."""
        if flight.stopping is None:
            return None
        facts = replace(flight.stopping, checkpoint_saved=flight.checkpoint_saved)
        try:
            return fire_run(flight.run, "stop", now=now, persist=_nowhere, schedule=flight.schedule, facts=facts)
        except GuardRejected:
            return None

    async def _drain(self) -> None:
        """Wait for every run in flight to end, or cut it off at its cutoff (see _apply_shutdown_policies)."""
        while self._in_flight:
            await self._renew_while_draining()
            cutoffs = [f.kill_at for f in self._in_flight.values() if f.kill_at is not None and not f.task.done()]
            if cutoffs:
                # Bounded, so that hurry() (a second signal) is noticed within a fraction of a second.
                horizon = min(max((min(cutoffs) - self.clock.now()).total_seconds(), 0.0), DRAIN_POLL_SECONDS)
                await self._wait_tasks([f.task for f in self._in_flight.values()], horizon)
            now = self.clock.now()
            for flight in list(self._in_flight.values()):
                if flight.task.done() or (flight.kill_at is not None and now < flight.kill_at):
                    continue
                if flight.cut:
                    self._leave_behind(flight)
                    continue
                if flight.outcome is None and flight.stopping is not None:
                    # Its cutoff: ``stop`` again, the guards now let it go.
                    flight.stopping = replace(flight.stopping, in_thread=flight.in_thread)
                    flight.outcome = ("stop", {})
                elif flight.outcome is None:
                    # A shutdown schedule's run, started by the stop itself: no policy, its timeout.
                    flight.outcome = ("requeue", {"reason": STILL_RUNNING})
                flight.task.cancel()
                flight.cut = True
                flight.kill_at = now + timedelta(seconds=CUT_GRACE_SECONDS)
            await asyncio.wait([f.task for f in self._in_flight.values()], timeout=0) if self._in_flight else None
            await asyncio.sleep(0)

    def _leave_behind(self, flight: _InFlight) -> None:
        """Record a run whose task was cancelled at its cutoff and did not end: the stop goes on without it."""
        del self._in_flight[flight.run.run_id]
        trigger, changes = self._decide_outcome(flight, ("requeue", {}), held=None, on_its_own=False)
        verdict = self._stop_verdict(flight, self.clock.now()) if trigger == "stop" else None
        why = changes.get("reason") or (verdict.reason if verdict is not None else None) or "shutdown"
        changes = {**changes, "reason": f"{why}; it did not end when cancelled and is left to end with the process"}
        self._note_finished(flight, (trigger, changes))
        log.warning(
            "run %s of %s did not end %gs after it was cancelled (the task swallows cancellation); "
            "recorded %s, and left to end with the process",
            flight.run.run_id,
            flight.schedule.name,
            CUT_GRACE_SECONDS,
            trigger,
        )

    # ------------------------------------------------------------------ engine state

    async def _renew_while_draining(self) -> None:
        """Runs finishing gracefully still hold their leases, or another worker would take them over."""
        now = self.clock.now()
        if self._last_renewal is not None and now - self._last_renewal < self.lease / 3:
            return
        self._last_renewal = now
        await self._db(
            self.store.renew_leases, list(self._in_flight), owner=self.worker_id, until=now + self.lease, now=now
        )

    @property
    def _state_key(self) -> str:
        return f"worker:{self.worker_id}"

    def _state_value(self, now: datetime, *, clean: bool) -> dict[str, Any]:
        started = self._started_at or now
        return {
            "worker_id": self.worker_id,
            "boot_id": self.boot_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": started.isoformat(),
            "heartbeat_at": now.isoformat(),
            "clean": clean,
            "stopped_at": now.isoformat() if clean else None,
            "in_flight": len(self._in_flight),
            "tick_seconds": self.tick_seconds,
            "heartbeat_seconds": HEARTBEAT_SECONDS,
        }


@dataclass(frozen=True, slots=True)
class _Armed:
    """The task made ahead for a prepared run, with the schedule copy its context was built from."""

    schedule: ScheduleDefinition
    ctx: RunContext
    task: asyncio.Task[None]
    claimed: asyncio.Future[ScheduledRun]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A run this engine prepared, its schedule as the preparing transaction left it, and ``_changes`` then."""

    run: ScheduledRun
    schedule: ScheduleDefinition
    changes: int


def _due_facts(pending: list[ScheduledRun]) -> dict[str, DueFacts]:
    """For each run, whether a later occurrence of its schedule is pending and due too (stored rows)."""
    latest: dict[str, datetime] = {}
    for run in pending:
        if run.origin in ("schedule", "catch_up"):
            at = latest.get(run.schedule_id)
            latest[run.schedule_id] = run.intended_run_at if at is None else max(at, run.intended_run_at)
    out: dict[str, DueFacts] = {}
    for run in pending:
        at = latest.get(run.schedule_id)
        out[run.run_id] = DueFacts(later_due=at is not None and at > run.intended_run_at)
    return out


def _fate(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, facts: DueFacts | None) -> RunStatus:
    """Where ``due`` takes ``run``, as the machine's guards decide, without writing anything."""
    return fire_run(run, "due", now=now, persist=_nowhere, schedule=schedule, facts=facts).status


def _nowhere(run: ScheduledRun, transition: Any, fields: dict[str, Any]) -> None:
    """The persistence of a judgement only: the write comes later, through the store, by the same trigger."""


def _needs_turns(schedule: ScheduleDefinition, due: list[ScheduledRun]) -> bool:
    """Whether starting ``due`` depends on what else of the schedule is running (any policy but allow)."""
    return schedule.concurrency_policy is not ConcurrencyPolicy.ALLOW


def _count_late_prepared(
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


def _count_missed(report: ReconciliationReport, name: str, plan: DuePlan) -> None:
    missed = plan.missed
    if missed is None:
        return
    report.missed_detected += missed.detected
    report.missed_caught_up += missed.caught_up
    report.missed_skipped += missed.skipped
    report.missed_coalesced += missed.coalesced
    if missed.warning:
        report.warnings.append(f"{name}: {missed.warning}")


def _breaker_text(schedule: ScheduleDefinition, error: str | None) -> str:
    how = (
        f"it half-opens for one trial run after {schedule.breaker_cooldown}"
        if schedule.breaker_cooldown
        else f"reset it with: python -m agent.scheduler reset {schedule.name}"
    )
    return (
        f"Circuit breaker OPEN for {schedule.name}: {schedule.consecutive_failures} consecutive failed runs "
        f"(last error: {error or 'unknown'}). No new runs until it closes; {how}."
    )
