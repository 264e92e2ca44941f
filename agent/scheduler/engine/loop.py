"""ScheduleEngine: the public API, the loop, its waiting and waking, outages and alert delivery.

The engine composes its rooms: ``TickWork`` (the database work of a tick, on the database thread),
``Execution`` (the runs in flight, on the loop), ``Reconciler`` and ``Breakers`` (database
thread). Work crosses from the loop to the database thread as the immutable arguments of one
call, and comes back as its immutable result; notifications from other threads reach the loop
through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from ..alerts import AlertDispatcher, Notifier
from ..clock import Clock, SystemClock
from ..db_health import DatabaseHealth, Outage, outage_wait, report_replaced_database
from ..enums import RunStatus
from ..errors import DatabaseReplaced, DatabaseUnavailable
from ..identity import HOST_ID
from ..inbox import new_event
from ..reconciliation import ReconciliationReport
from ..records import InboxEvent
from ..scheduled_run import ScheduledRun
from ..settings import Settings, load_settings
from ..store import EngineStore
from ..tasks import RunContext, TaskRegistry, TaskSpec
from .breakers import Breakers
from .due import blocked
from .execution import Execution, LoopWatch
from .feed import ChangeFeed, open_feed
from .outcomes import log as outcome_log
from .outcomes import tell
from .pacing import ClaimLead, collection_held
from .reconciliation import HEARTBEAT_SECONDS, Reconciler
from .tick import EVERYTHING, SAFETY_NET_SECONDS, Asks, Prepared, TickInputs, TickResult, TickState, TickWork

log = logging.getLogger(__name__)
T = TypeVar("T")
Committed = tuple[TickResult, tuple[Prepared, ...]]

#: A run's claim lapses this long after its last renewal; survivors then treat it as orphaned.
LEASE_SECONDS = 30.0
#: An outbox pass that left alerts behind (Telegram down) is repeated after this long (clock time).
ALERT_RETRY = timedelta(seconds=60)
#: The outbox is looked at this often even when this process queued nothing: alerts that
#: another process (the CLI, a worker that died) left behind go out within this time.
ALERT_SWEEP = timedelta(minutes=5)
#: stop() gives the last outbox pass this many real seconds.
DELIVERY_ON_STOP_SECONDS = 5.0
#: The engine checkpoints SQLite's WAL itself, after dispatching, at most this often (real seconds).
CHECKPOINT_SECONDS = 1.0
#: The engine checks that its SQLite file is still the one it opened at most this often (real
#: seconds): one ``stat``, so that at most this long of work goes into a deleted file.
IDENTITY_CHECK_SECONDS = 0.2
#: The engine's loop sleeps at most this long of real time, so that its heartbeat is written on
#: time whatever the clock does (a FakeClock that jumps ahead writes it at each wake instead).
HEARTBEAT_WAKE_SECONDS = HEARTBEAT_SECONDS
#: Who emitted an event that ``engine.emit`` (host code in the worker's process) fired, as the inbox records it.
EMITTED_BY_HOST = HOST_ID
#: The built-in task of reconciliation-type schedules: sweep runs whose lease expired.
RECONCILE_TASK = "scheduler.reconcile"


def default_worker_id(settings: Settings | None = None) -> str:
    """``ACTP_WORKER_ID`` of ``settings`` (default: read now) or this machine's host name: stable across restarts."""
    return (settings or load_settings(only=("ACTP_WORKER_ID",))).effective_worker_id


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

    Everything on this object belongs to the event loop's thread, except ``wake()``, which any
    thread may call.
    """

    def __init__(
        self,
        store: EngineStore,
        tasks: TaskRegistry,
        *,
        clock: Clock | None = None,
        tick_seconds: float = 10.0,
        worker_id: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        notifier: Notifier | None = None,
        settings: Settings | None = None,
    ) -> None:
        if tick_seconds <= 0:
            raise ValueError(f"tick_seconds must be more than 0, got {tick_seconds}")
        self.store = store
        self.tasks = tasks
        self.clock: Clock = clock or store.clock
        self._lead = ClaimLead() if isinstance(self.clock, SystemClock) else None  # a FakeClock wakes on time
        self.tick_seconds = tick_seconds
        self.worker_id = worker_id or default_worker_id(settings)
        self.settings = settings
        """The settings the worker read once (None: a library use; what a task requires is then read when needed)."""
        self.lease = timedelta(seconds=lease_seconds)
        self.boot_id = uuid.uuid4().hex[:12]
        builtins: dict[str, TaskSpec] = {
            RECONCILE_TASK: TaskSpec(name=RECONCILE_TASK, fn=self._reconcile_task, description="sweep orphaned runs"),
        }
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-db")
        self._watch = LoopWatch(lambda: self._execution.due_meanwhile(self.clock.now(), self._state.schedule_due))
        self._execution = Execution(
            store=store,
            clock=self.clock,
            tasks=tasks,
            builtins=builtins,
            worker_id=self.worker_id,
            lease=self.lease,
            db=self._db,
            wake=self._set_wake,
            watch=self._watch,
            settings=settings,
        )
        breakers = Breakers(store)
        self._reconciler = Reconciler(
            store, breakers, worker_id=self.worker_id, boot_id=self.boot_id, tick_seconds=tick_seconds
        )
        self._work = TickWork(
            store,
            self._reconciler,
            breakers,
            worker_id=self.worker_id,
            lease=self.lease,
            tick_seconds=tick_seconds,
            has_task=self._execution.has_task,
            task_tier=self._execution.task_tier,
        )
        # Owned by the loop thread.
        self._state = TickState()
        """The database side's state as the last committed tick handed it back (read-only here)."""
        self._asks = EVERYTHING
        """What the next tick owes, whatever the instants say (the first one looks at everything)."""
        self._events: list[InboxEvent] = []
        self._orphans: tuple[ScheduledRun, ...] = ()
        """Orphans found outside a tick (startup, the reconcile task): the next tick fails them over."""
        self._ticking: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._feed: ChangeFeed | None = None
        self._last_checkpoint = time.monotonic()
        self._draining = False
        self._stopped = False
        self._report: ReconciliationReport | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_alerts: Callable[[], None] | None = None
        self._runner: asyncio.Task[Any] | None = None
        self.alerts = AlertDispatcher(store, notifier, self.clock, run_db=self._db)
        self._alerts_due = True  # leftovers of an earlier life go out on the first pass
        self._last_delivery: datetime | None = None
        self._delivery: asyncio.Task[int] | None = None
        self._health = DatabaseHealth()
        self._quiet_until: datetime | None = None
        """After an outage, runs whose lease lapsed are not taken over before this instant."""
        self._identity_checked = time.monotonic()

    # ------------------------------------------------------------------ public API

    @property
    def in_flight(self) -> list[ScheduledRun]:
        """Runs this engine is executing now."""
        return [f.run for f in self._execution.in_flight.values()]

    @property
    def report(self) -> ReconciliationReport | None:
        """The report of the last ``start()``."""
        return self._report

    async def start(self) -> ReconciliationReport:
        """Reconcile what the previous life left (orphans, paused runs, missed runs) and run startup schedules."""
        self._bind(asyncio.get_running_loop())
        self._wake = asyncio.Event()
        self._ticking = asyncio.Lock()
        self._unsubscribe = self.store.subscribe(self.wake)
        if self._feed is None:
            self._feed = open_feed(self.store)
            self._feed.start(self._changed_elsewhere)
        self._unsubscribe_alerts = self.store.subscribe_alerts(self._alert_queued)
        assert self._loop is not None
        self._watch.start(self._loop)
        try:
            return await self._reconcile_and_start()
        except BaseException:
            # A start refused (a live twin, a database too new) or cut short leaves nothing running:
            # no feed thread or timer, no loop watch, no subscription on the store.
            self._stop_feed()
            self._watch.stop()
            for unsubscribe in (self._unsubscribe, self._unsubscribe_alerts):
                if unsubscribe is not None:
                    unsubscribe()
            raise

    async def _reconcile_and_start(self) -> ReconciliationReport:
        now = self.clock.now()
        await self._db(self.store.defer_checkpoints)
        await self._db(self.store.disable_out_of_bounds)
        # The report is written in the same transaction as the first changes it counts, brought up
        # to date by the startup tick's, and closed at the end: a start cut short leaves it true.
        report, orphans = await self._db(self._reconciler.reconcile, now)
        self._orphans += orphans
        await self.tick(report=report)
        report.finished_at = self.clock.now()
        await self._db(self._reconciler.save_report, report)
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
        return await self._db(self._reconciler.preview, self.clock.now())

    async def tick(self, *, report: ReconciliationReport | None = None) -> None:
        """One pass: record finished runs, materialize due occurrences, retry, start and dispatch."""
        if self._loop is None:
            self._bind(asyncio.get_running_loop())
        if self._ticking is None:
            self._ticking = asyncio.Lock()
        async with self._ticking:  # one tick at a time (the loop's, wait_idle's, stop's)
            await self._tick(report)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._execution.loop = loop

    async def _tick(self, report: ReconciliationReport | None) -> None:
        ex = self._execution
        real = self.clock.now()
        ex.enforce_deadlines(real)
        at = self._lead.instant(real, ex.due_next()) if self._lead is not None and report is None else None
        now = at or real
        with collection_held(self._loop if at is not None else None):  # a claim ahead: until its tasks begin
            result, prepared = await self._commit(real, at, report)
            for run, schedule in result.started:
                ex.dispatch(run, schedule)
            ex.disarm(p.run.run_id for p in prepared)  # due now but not started: skipped, or another's
            for schedule_id in result.replace:
                ex.request_stop(schedule_id, now)
            if at is not None and result.started:
                await asyncio.sleep(0)  # the tasks take their first step before more database work
        soon, lot = self._state.ahead(ex.earliest_prepared())
        if not self._draining and soon is not None and soon <= self.clock.now():
            ahead = await self._db(self._work.prepare, self.clock.now(), lot)
            self._state = ahead.state
            ex.adopt_prepared(ahead.prepared)
            ex.arm()
        if report is None and time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self._last_checkpoint = time.monotonic()
            await self._db(self.store.checkpoint)
        self._maybe_deliver(now)

    async def _commit(self, real: datetime, at: datetime | None, report: ReconciliationReport | None) -> Committed:
        """The tick's transaction, as of ``at`` (a claim begun ahead, committed at it) or ``real``:
        what the loop hands over, and the committed result with the due prepared runs it was given."""
        ex, now = self._execution, at or real
        finished = ex.take_finished()
        events, self._events = tuple(self._events), []
        renewed_before = ex.last_renewal
        renew = ex.renewal(now)
        asks, self._asks = self._asks, Asks()
        orphans, self._orphans = self._orphans, ()
        if self._feed is not None and self._feed.changed():
            asks = asks | Asks(full_scan=True)  # another process wrote: look at everything
        prepared = ex.take_due_prepared(now)
        inputs = TickInputs(
            now=now,
            finished=finished,
            events=events,
            renew=renew,
            mine=frozenset(ex.in_flight),
            in_flight=len(ex.in_flight),
            prepared=prepared,
            earliest_prepared=ex.earliest_prepared(),
            report=report,
            asks=asks,
            draining=self._draining,
            polling=self._polling,
            may_sweep=not self._health.down,
            quiet_until=self._quiet_until,
            tell=outcome_log.isEnabledFor(logging.INFO),
            orphans=orphans,
            release=None if at is None else time.monotonic() + (at - real).total_seconds(),
        )
        try:
            result = await self._db(self._work.tick, inputs)
        except BaseException:
            # Nothing was written: what the tick was to write waits for the next one, which looks at
            # everything, since the database may have changed in ways this engine did not see.
            ex.give_back(finished, prepared, renewed_before)
            self._events[:0] = events
            self._orphans = orphans + self._orphans
            self._asks = self._asks | asks | EVERYTHING
            raise
        self._state = result.state
        if self._lead is not None and prepared:
            self._lead.observe(result.busy, len(prepared))
        self._asks = self._asks | result.asks
        if result.told or result.notes:
            tell(result.told, result.notes)  # committed: now they are facts
        ex.waiting = result.state.waiting
        return result, prepared

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
        ex = self._execution
        while True:
            while ex.in_flight or ex.finished:
                tasks = [f.task for f in ex.in_flight.values()]
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

    async def stop(self) -> None:
        """Stop dispatching, run shutdown schedules, apply each running run's shutdown policy, mark a clean stop."""
        if self._stopped or self._draining:
            if self._draining and self._runner is None:
                self._stop_feed()  # the loop ended on its own (a replaced database)
            return
        self._set_draining()
        self._wake.set()
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            await asyncio.wait([runner])
        # Every shutdown timeout counts from here, the shutdown schedules' runs' too: the stop takes
        # the longest of them, not their sum.
        began = self.clock.now()
        self._execution.apply_shutdown_policies(began)
        await self._run_shutdown_schedules(began)
        await self._execution.drain()
        await self.tick()
        try:
            await asyncio.wait_for(self.deliver_alerts(), timeout=DELIVERY_ON_STOP_SECONDS)
        except TimeoutError:
            log.warning("alerts still undelivered at shutdown stay in the outbox for the next start")
        now = self.clock.now()
        await self._db(self._reconciler.put_state, now, clean=True, in_flight=len(self._execution.in_flight))
        await self._db(self.store.checkpoint)
        self._stopped = True
        self._stop_feed()
        self._watch.stop()
        for unsubscribe in (self._unsubscribe, self._unsubscribe_alerts):
            if unsubscribe is not None:
                unsubscribe()
        self._executor.shutdown(wait=True)
        log.info("engine %s stopped cleanly", self.worker_id)

    def hurry(self) -> None:
        """Cut a running shutdown short (a second signal): ``stop`` is fired on every run still in flight
        now, and its guards requeue it (or pause it, under checkpoint_and_stop with a checkpoint)."""
        self._execution.hurry(self.clock.now())
        self._wake.set()

    def emit(self, name: str, payload: dict[str, Any] | None = None) -> str:
        """Fire event ``name``: every enabled event schedule on it gets one run with ``payload`` in its params.

        Returns the event id. The next tick, which this wakes at once, writes the event to the inbox
        (as the command line's ``emit`` does) and consumes it there, so it is recorded like any
        other. A name or payload the inbox refuses (``inbox.check_event``) raises InvalidSchedule
        here, before anything is queued.
        """
        event = new_event(name, payload, emitted_by=EMITTED_BY_HOST, emitted_at=self.clock.now())
        self._events.append(event)
        self.wake()
        return event.id

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

    def wake(self) -> None:
        """Make the loop look at the database now (thread-safe)."""
        self._on_loop(self._woken)

    def _woken(self) -> None:
        self._asks = self._asks | Asks(full_scan=True)
        self._wake.set()

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread: now if this is it (or no loop runs yet), else soon."""
        loop = self._loop
        if loop is None:
            fn()
            return
        if loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn)

    def _set_wake(self) -> None:
        self._wake.set()

    def _changed_elsewhere(self) -> None:
        # Called by the change feed from its thread; the next tick asks it what changed.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake.set)

    def _alert_queued(self) -> None:
        # Called by the store from any thread (the database thread in a tick); the next tick starts
        # an outbox pass.
        self._on_loop(self._note_alert)

    def _note_alert(self) -> None:
        self._alerts_due = True

    def _stop_feed(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.stop()

    def _set_draining(self) -> None:
        """No more dispatching: prepared runs' tasks are cancelled, the tick starts nothing new."""
        self._draining = True
        self._execution.draining = True
        self._execution.disarm()

    # ------------------------------------------------------------------ outages

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
            self._set_draining()  # no more dispatching, and no write into the lost file
            log.error("%s", exc)
            report_replaced_database(self.store, self.worker_id, exc)
            raise

    # ------------------------------------------------------------------ the loop's waiting

    @property
    def _polling(self) -> bool:
        """Whether the engine must look for changes itself, every ``tick_seconds`` (no live change feed)."""
        return self._feed is None or not self._feed.live

    def _real_wait(self) -> float:
        """The longest real time the loop may sleep: until the heartbeat, or the safety-net scan."""
        wait = HEARTBEAT_WAKE_SECONDS
        if not self._polling:
            net = max(self.tick_seconds, SAFETY_NET_SECONDS)
            wait = min(wait, self._state.last_full_scan_real + net - time.monotonic())
        return max(wait, 0.0)

    def _wake_at(self, now: datetime) -> datetime | None:
        """The next instant on the clock at which there is something to do; None if there is none."""
        st = self._state
        candidates = [now + timedelta(seconds=self.tick_seconds)] if self._polling else []
        candidates += [d for d in (st.next_due, st.pending_due) if d is not None]
        if st.lease_due is not None:
            candidates.append(max(st.lease_due, self._quiet_until or st.lease_due))
        if (prepared := self._execution.earliest_prepared()) is not None:
            candidates.append(prepared)
        soon, lot = st.ahead(prepared)
        if lot is not None and soon is not None and soon > now:
            candidates.append(soon)  # a batch: wake to prepare it before its time
        candidates += self._execution.next_instants(now)
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
        owed = self._asks
        if owed.full_scan or owed.retry or owed.pending or owed.events:
            # The last tick left work for the next (a scan it put off for prepared runs, a change
            # the feed reported meanwhile): that tick is now, not at the next due instant.
            return
        now = self.clock.now()
        instant = self._wake_at(now)
        if self._lead is not None and instant is not None and instant == (due := self._execution.due_next())[0]:
            instant = max(now, instant - self._lead.ahead(due[1]))  # the tick begins ahead, commits on time
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

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the database thread; the only way work crosses to it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ runs the engine starts itself

    async def _reconcile_task(self, ctx: RunContext) -> str:
        mine = frozenset(self._execution.in_flight)
        found = await self._db(self._reconciler.find_orphans, self.clock.now(), mine)
        if found:  # the next tick fails them over, decides their retry and tells each, in one transaction
            self._orphans += found
            self._wake.set()
        return f"{len(found)} orphaned run(s) found; the next tick fails them over"

    async def _run_shutdown_schedules(self, began: datetime) -> None:
        """Start the shutdown schedules' runs; each may finish until its shutdown timeout after ``began``."""
        now = self.clock.now()
        runs = await self._db(self._reconciler.create_lifecycle_runs, "shutdown", now)
        if not runs:
            return
        schedules = await self._db(self.store.schedules_by_id, [r.schedule_id for r in runs])
        # The same guard as every start: a shutdown run whose task is missing is skipped, with why.
        items: list[tuple[ScheduledRun, str, dict[str, Any]]] = []
        has_task, me = self._execution.has_task, self.worker_id
        for run in runs:
            if why := blocked(run, schedules.get(run.schedule_id), now, has_task=has_task, worker_id=me):
                items.append((run, "skip", {"reason": why}))
                log.warning("shutdown run %s of %s skipped: %s", run.run_id, run.schedule_name, why)
            else:
                items.append((run, "due", {"owner": self.worker_id, "lease_expires_at": now + self.lease}))
        for moved in await self._db(self.store.transition_many, items, now=now, schedules=schedules):
            if isinstance(moved, ScheduledRun) and moved.status is RunStatus.RUNNING:
                flight = self._execution.dispatch(moved, schedules[moved.schedule_id])
                # Started by the stop itself, it is not stopped by a policy: it has its timeout.
                flight.kill_at = began + schedules[moved.schedule_id].shutdown_timeout
