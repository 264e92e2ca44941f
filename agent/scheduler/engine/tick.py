"""The database work of one tick: materialize, retry or dead-letter, start what is due, record what
ended, the event inbox, leases, the worker's heartbeat; and preparing the next occurrences ahead (database thread).

Everything here runs on the engine's database thread, inside one transaction per call. What the
tick needs from one call to the next (the next due instants, the last full scan) is a frozen
``TickState``; a call computes the next state from the adopted one and its ``TickInputs``, and
``TickWork`` adopts it only once the transaction has committed. A transaction that runs again (a
lock, a deadlock, a lost connection) therefore starts from exactly what the first attempt saw and
does the same work. The loop gets one frozen ``TickResult`` per tick.

The outcomes a tick records travel in its result as ``Told`` values; the loop logs them once the
transaction has committed (``outcomes.tell``), so an outcome that rolled back is never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ..alerts import dead_letter_text
from ..definition import ScheduleDefinition
from ..enums import RiskTier, RunStatus
from ..errors import GuardRejected, SchedulerError
from ..policies.concurrency import Action, decide_starts
from ..policies.missed_run import DuePlan, PlannedRun, fired_reason, is_prepared
from ..policies.retry import ORPHANED, attempts_allowed, retry_at
from ..policies.shutdown import Stopping
from ..reconciliation import ReconciliationReport
from ..records import InboxEvent
from ..scheduled_run import ScheduledRun
from ..store import BATCH_MIN, EngineStore, Materialization
from .breakers import Breakers
from .due import blocked, due_facts, fate, needs_turns, plan_schedule
from .events import consume_events
from .reconciliation import HEARTBEAT_SECONDS, Reconciler, count_late_prepared, count_missed

log = logging.getLogger(__name__)

#: Right after a tick's runs are dispatched, occurrences due within this long are prepared (stored
#: as pending runs), so that at their time only a claim stands between them and their start.
PREPARE_AHEAD = timedelta(seconds=1)
#: A batch (BATCH_MIN or more schedules due at one instant) is prepared this long ahead instead:
#: the loop wakes for it, since preparing ten thousand runs and arming their tasks takes about a second.
BATCH_AHEAD = timedelta(seconds=2)
#: With a live change feed, a full scan still runs at least this often (real seconds; or every
#: ``tick_seconds`` if that is longer). The feed reports every write made through a ScheduleStore;
#: the safety net is for what it cannot see: a write made around the store, a PostgreSQL
#: notification lost in the instant a connection drops, a SQLite commit by another process in the
#: instant after one of this store's own. Rare enough to cost nothing while idle, frequent enough
#: that such a change is not left waiting long.
SAFETY_NET_SECONDS = 60.0

Finished = tuple[ScheduledRun, str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Ended:
    """A run that ended in this process, and the trigger (with its row changes) that records it.

    A run a stop ended carries ``stopping`` and its ``schedule``: the facts its ``stop`` guards read.
    """

    run: ScheduledRun
    trigger: str
    changes: dict[str, Any]
    """The row fields the trigger sets; never changed once the run ended."""
    stopping: Stopping | None = None
    schedule: ScheduleDefinition | None = None


@dataclass(frozen=True, slots=True)
class Told:
    """A run outcome a tick recorded, for the log: the run as written, and for a failed attempt
    what follows it (a retry now or at a time, or none)."""

    run: ScheduledRun
    retry: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A run this engine prepared, and its schedule as the preparing transaction wrote it: while the
    row is unchanged, the store's reads give this very object (``EngineStore.schedules_by_id``),
    unless it forgot its mapped rows since (then the run's time is checked against the schedule)."""

    run: ScheduledRun
    schedule: ScheduleDefinition


@dataclass(frozen=True, slots=True)
class Asks:
    """Work the next tick owes, whatever the instants say: learnt by a tick, or by the loop."""

    full_scan: bool = False
    """Look at everything: something changed (a wake, the change feed, a breaker half-opened)."""
    retry: bool = False
    """Failed runs may wait for ``retry`` or ``dead_letter`` (a run failed, orphans were swept)."""
    pending: bool = False
    """Pending runs may wait to start (a run others waited behind ended, an event arrived)."""
    scan_postponed: bool = False
    """The last tick put its full scan off for prepared runs due then: this one must not again."""
    events: bool = False
    """Events may wait in the inbox (the last tick consumed a full batch)."""

    def __or__(self, other: Asks) -> Asks:
        return Asks(
            full_scan=self.full_scan or other.full_scan,
            retry=self.retry or other.retry,
            pending=self.pending or other.pending,
            scan_postponed=self.scan_postponed or other.scan_postponed,
            events=self.events or other.events,
        )


#: What a tick owes after a transaction that did not commit: the database may have changed unseen.
EVERYTHING = Asks(full_scan=True, retry=True, pending=True, events=True)


@dataclass(frozen=True, slots=True)
class TickState:
    """What the database side knows between ticks; replaced, never changed, by each committed tick."""

    last_full_scan: datetime | None = None
    last_full_scan_real: float = 0.0
    """``time.monotonic()`` at the last full scan (the safety net counts real time)."""
    lease_due: datetime | None = None
    """When the earliest lease of another worker's run lapses (seen by full scans): its owner may be gone."""
    retry_due: datetime | None = None
    pending_due: datetime | None = None
    """The earliest pending run not yet due that this engine did not prepare (seen by full scans)."""
    breaker_due: datetime | None = None
    schedule_due: datetime | None = None
    schedule_batch: int = 0
    """How many schedules share ``schedule_due`` (counted up to BATCH_MIN)."""
    last_heartbeat: datetime | None = None
    waiting: frozenset[str] = frozenset()
    """Schedules whose due runs wait behind a running one (forbid, enqueue_one, replace)."""

    def ahead(self, earliest_prepared: datetime | None) -> tuple[datetime | None, datetime | None]:
        """When to prepare the next due schedules, and the instant of a batch to prepare then too.

        Next occurrences are prepared PREPARE_AHEAD ahead, right after a tick. A batch (BATCH_MIN
        or more schedules due at one instant) is prepared BATCH_AHEAD ahead, the loop waking for
        it, unless runs this engine prepared are due before it: their schedules may be the
        batch's, and a schedule has one occurrence prepared at a time.
        """
        due = self.schedule_due
        if due is None:
            return None, None
        if self.schedule_batch >= BATCH_MIN and (earliest_prepared is None or earliest_prepared >= due):
            return due - BATCH_AHEAD, due
        return due - PREPARE_AHEAD, None

    @property
    def next_due(self) -> datetime | None:
        """The earliest instant a schedule, a retry or a breaker probe is due."""
        dues = [d for d in (self.schedule_due, self.retry_due, self.breaker_due) if d is not None]
        return min(dues) if dues else None


@dataclass(frozen=True, slots=True, kw_only=True)
class TickInputs:
    """Everything the loop hands one tick; read-only for the database side."""

    now: datetime
    finished: tuple[Ended, ...] = ()
    events: tuple[InboxEvent, ...] = ()
    """Events emitted in this process (``engine.emit``) since the last tick: written to the inbox first."""
    renew: tuple[str, ...] = ()
    mine: frozenset[str] = frozenset()
    """Runs in flight in this engine: never orphans."""
    in_flight: int = 0
    prepared: tuple[Prepared, ...] = ()
    """This engine's prepared runs that are due now."""
    earliest_prepared: datetime | None = None
    """The earliest of this engine's prepared runs not yet due."""
    report: ReconciliationReport | None = None
    asks: Asks = Asks()
    draining: bool = False
    polling: bool = True
    """No live change feed: changes elsewhere are found by scanning every ``tick_seconds``."""
    may_sweep: bool = True
    """Orphans may be swept (not in the first tick after an outage)."""
    quiet_until: datetime | None = None
    """After an outage, runs whose lease lapsed are not taken over before this instant."""
    tell: bool = True
    """Hand back successes and skips for the log (failures and dead letters always are)."""
    release: float | None = None
    """A tick begun ahead of prepared runs' time (``now``): commit no earlier than this ``time.monotonic()``."""
    orphans: tuple[ScheduledRun, ...] = ()
    """Running runs found orphaned outside a tick (at startup, by the reconcile task): this tick
    fires ``orphan`` on them, decides their retry and tells each failed attempt with that decision,
    all in its one transaction."""


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one committed tick hands the loop."""

    state: TickState
    started: tuple[tuple[ScheduledRun, ScheduleDefinition], ...] = ()
    """Runs claimed for this engine, each with its schedule: to dispatch."""
    replace: frozenset[str] = frozenset()
    """Schedule ids whose in-flight runs must stop for a replacing run."""
    asks: Asks = Asks()
    told: tuple[Told, ...] = ()
    """The outcomes this tick recorded, in the order written: the loop logs them."""
    notes: tuple[str, ...] = ()
    """Decisions about schedules to log with them (catch-up of missed occurrences)."""
    busy: float = 0.0
    """Seconds the tick's work took, a wait for ``release`` not counted (``pacing.ClaimLead.observe``)."""


@dataclass(frozen=True, slots=True)
class PrepareResult:
    """What preparing ahead hands the loop: the runs prepared, and the state after."""

    state: TickState
    prepared: tuple[Prepared, ...] = ()


class TickWork:
    """The database side of the engine. Only the database thread calls it."""

    def __init__(
        self,
        store: EngineStore,
        reconciler: Reconciler,
        breakers: Breakers,
        *,
        worker_id: str,
        lease: timedelta,
        tick_seconds: float,
        has_task: Callable[[str], bool],
        task_tier: Callable[[str], RiskTier | None],
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.breakers = breakers
        self.worker_id = worker_id
        self.lease = lease
        self.tick_seconds = tick_seconds
        self.has_task = has_task
        self.task_tier = task_tier
        self._state = TickState()

    @property
    def state(self) -> TickState:
        """The state of the last committed tick."""
        return self._state

    def tick(self, inputs: TickInputs) -> TickResult:
        """One tick in one transaction; its state is adopted once it has committed."""
        result = self.store.atomic_kept(self._attempt, inputs, self._state)
        self._state = result.state
        return result

    def prepare(self, now: datetime, lot: datetime | None = None) -> PrepareResult:
        """Store the occurrences due within PREPARE_AHEAD, and those of a batch due at ``lot``, as
        pending runs, in one transaction."""
        result = self.store.atomic_kept(self._prepare, now, lot, self._state)
        self._state = result.state
        return result

    def _attempt(self, inputs: TickInputs, state: TickState) -> TickResult:
        if inputs.report is not None:
            inputs.report.restore()  # the whole transaction may run again: count from the start
        began = time.monotonic()
        result = _Pass(self, inputs, state).run()
        done = time.monotonic()
        if inputs.release is not None:  # written as of ``now``: committed, and so seen, from then on
            time.sleep(max(0.0, inputs.release - done))
        return replace(result, busy=done - began)

    def _prepare(self, now: datetime, lot: datetime | None, state: TickState) -> PrepareResult:
        """Each schedule's next occurrence due within PREPARE_AHEAD or at ``lot``: only the next,
        only one not yet due (one that is already due is left to the next tick, where the
        missed-run policy sees it), and none of a schedule with an occurrence stored ahead already
        (another worker's prepared run). A delay is disabled as it fires, here as in the tick; its
        prepared run still starts (``prepared_blocked``)."""
        window = now + PREPARE_AHEAD
        batch: list[Materialization] = []
        for schedule in self.store.due_schedules(window if lot is None else max(window, lot)):
            first, last = schedule.next_run_at, schedule.last_run_at
            if first is None or first <= now or (first > window and first != lot) or (last and last > now):
                continue
            upcoming = schedule.trigger().next_after(first)
            fired = fired_reason(schedule, first)
            batch.append(Materialization(schedule, [PlannedRun(first)], upcoming, disable_reason=fired, prepared=True))
        if not batch:
            return PrepareResult(state=state)
        prepared = [
            Prepared(run, done.schedule)
            for done in self.store.materialize_many(batch, now=now)
            if done is not None
            for run in done.runs
        ]
        due, count = self.store.next_due(count_up_to=BATCH_MIN)
        return PrepareResult(state=replace(state, schedule_due=due, schedule_batch=count), prepared=tuple(prepared))


@dataclass(eq=False)
class _Pass:
    """One attempt at a tick's transaction: starts from the adopted state, computes the next one.

    Private to one attempt on the database thread; an attempt that rolls back is thrown away.
    """

    work: TickWork
    inputs: TickInputs
    state: TickState
    fresh: dict[str, ScheduleDefinition] = field(default_factory=dict)
    """Schedules read in this transaction: current for the rest of it."""
    started: list[tuple[ScheduledRun, ScheduleDefinition]] = field(default_factory=list)
    replace: set[str] = field(default_factory=set)
    waiting: frozenset[str] | None = None
    breaker_due: datetime | None = None
    told: list[Told] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed_now: dict[str, ScheduledRun] = field(default_factory=dict)
    """Runs this tick recorded failed: their line waits for the retry decision."""

    def run(self) -> TickResult:
        w, i, st = self.work, self.inputs, self.state
        now, report, store = i.now, i.report, w.store
        self.breaker_due = st.breaker_due
        # A full scan looks at everything; between full scans only what this engine knows changed.
        full = self._scan_due(now)
        postponed = i.asks.scan_postponed
        last_full_scan, last_full_scan_real = st.last_full_scan, st.last_full_scan_real
        if full and i.prepared and report is None and not postponed:
            # Prepared runs are waiting for their start: the full scan waits for the next tick (once).
            full, postponed = False, True
        elif full:
            if self._timed_scan(now):  # what no feed sees (a write around the store) is seen from now on
                store.forget_mapped()
            last_full_scan, last_full_scan_real, postponed = now, time.monotonic(), False
        maybe_pending, maybe_failed = i.asks.pending, i.asks.retry
        # Runs whose lease lapsed are taken over after the start, and not right after an outage.
        takes_over = report is None and i.may_sweep and not self._quiet(now)
        if i.orphans and (report is not None or takes_over):
            # Found earlier (the start, the reconcile task): those still as found are failed over here.
            orphaned = w.reconciler.fire_found(i.orphans, now, startup=report is not None)
            self.failed_now.update((r.run_id, r) for r in orphaned)
            maybe_failed |= bool(orphaned)
            if report is not None:
                report.orphans_found = len(orphaned)
                if orphaned:
                    report.actions.append(f"orphaned {len(orphaned)} run(s)")
        if i.finished:
            self._record_finished(i.finished, now)
            # A finished run frees its schedule: runs waiting behind it (forbid, enqueue_one) may start.
            maybe_pending |= any(e.run.schedule_id in st.waiting for e in i.finished)
            maybe_failed |= any(e.trigger == "fail" for e in i.finished)
        if full and takes_over:
            # A worker that died mid-run stops renewing its leases: its runs are taken over here.
            # Ours are excluded: those in flight, and those just recorded above.
            mine = i.mine | {e.run.run_id for e in i.finished}
            swept = w.reconciler.sweep_orphans(now, mine)
            self.failed_now.update((r.run_id, r) for r in swept)
            maybe_failed |= bool(swept)
        lease_due = st.lease_due
        if full or report is not None:
            lease_due = store.next_lease_expiry(now, owner=w.worker_id)
        for event in i.events:
            store.add_event(event)  # into the inbox, as every door's events; consumed below (or by another worker)
        more_events = False
        if not i.draining and (full or report is not None or i.events or i.asks.events):
            consumed = consume_events(store, now=now, worker_id=w.worker_id, task_tier=w.task_tier)
            maybe_pending |= consumed.runs > 0
            more_events = consumed.more
        if i.renew:
            store.renew_leases(list(i.renew), owner=w.worker_id, until=now + w.lease, now=now)
        due = st.next_due is not None and st.next_due <= now
        created: list[ScheduledRun] = []
        if not i.draining and (full or report is not None or due):
            created = self._materialize(now, report)
        retry_due = st.retry_due
        if full or report is not None or maybe_failed or (retry_due is not None and retry_due <= now):
            maybe_failed = False
            waiting = self._retry_failed(now, report)
            retry_due = min(waiting) if waiting else None
            maybe_pending = True
        pending_due = st.pending_due
        if full or report is not None:
            # Runs prepared elsewhere (another worker, an earlier life) wake this loop at their time;
            # from the time of this engine's own prepared runs on, its own ticks look anyway.
            pending_due = store.next_pending_at(now)
            ours = i.earliest_prepared
            if pending_due is not None and ours is not None and pending_due >= ours:
                pending_due = None
        elif pending_due is not None and pending_due <= now:
            pending_due = None
            maybe_pending = True  # another worker's prepared runs (or an earlier life's) are due
        if not i.draining and (full or maybe_pending or i.prepared or created):
            # Runs left waiting (forbid, enqueue_one) are only found by a scan.
            scan = full or maybe_pending or bool(st.waiting)
            maybe_pending = False
            self._start_due(now, [p.run for p in i.prepared], created, scan=scan)
        last_heartbeat = st.last_heartbeat
        if last_heartbeat is None or (now - last_heartbeat).total_seconds() >= HEARTBEAT_SECONDS:
            last_heartbeat = now
            w.reconciler.put_state(now, clean=False, in_flight=i.in_flight)
        probed = False
        if full or report is not None or (self.breaker_due is not None and self.breaker_due <= now):
            self.breaker_due, probed = w.breakers.probe(now)
        schedule_due, schedule_batch = st.schedule_due, st.schedule_batch
        if full or due or report is not None or st.next_due is None:
            schedule_due, schedule_batch = store.next_due(count_up_to=BATCH_MIN)
        if report is not None:
            w.reconciler.save_report(report)  # in this tick's transaction, with the changes it counts
        self.told += [Told(run) for run in self.failed_now.values()]  # no retry decision reached them
        state = TickState(
            last_full_scan=last_full_scan,
            last_full_scan_real=last_full_scan_real,
            lease_due=lease_due,
            retry_due=retry_due,
            pending_due=pending_due,
            breaker_due=self.breaker_due,
            schedule_due=schedule_due,
            schedule_batch=schedule_batch,
            last_heartbeat=last_heartbeat,
            waiting=st.waiting if self.waiting is None else self.waiting,
        )
        # A half-open breaker's schedule gets its next occurrence from a full scan, right away.
        asks = Asks(
            full_scan=probed or postponed,
            pending=maybe_pending,
            retry=maybe_failed,
            scan_postponed=postponed,
            events=more_events,
        )
        return TickResult(
            state=state,
            started=tuple(self.started),
            replace=frozenset(self.replace),
            asks=asks,
            told=tuple(self.told),
            notes=tuple(self.notes),
        )

    def _quiet(self, now: datetime) -> bool:
        quiet = self.inputs.quiet_until
        return quiet is not None and now < quiet

    def _scan_due(self, now: datetime) -> bool:
        """Whether this tick makes a full scan: asked for (a change, a wake), or the safety net is due."""
        i, st = self.inputs, self.state
        if i.asks.full_scan or st.last_full_scan is None:
            return True
        if st.lease_due is not None and st.lease_due <= now and not i.polling and not self._quiet(now):
            return True  # another worker's lease lapsed: take its run over if it is gone
        return self._timed_scan(now)

    def _timed_scan(self, now: datetime) -> bool:
        """Whether a full scan is due by time alone: every ``tick_seconds`` without a live change feed,
        else the safety net."""
        st, tick_seconds = self.state, self.work.tick_seconds
        if st.last_full_scan is None:
            return True
        if self.inputs.polling:
            return (now - st.last_full_scan).total_seconds() >= tick_seconds
        return time.monotonic() - st.last_full_scan_real >= max(tick_seconds, SAFETY_NET_SECONDS)

    def _record_finished(self, finished: tuple[Ended, ...], now: datetime) -> None:
        # Runs a stop ended go through ``stop`` with the facts its guards read; the rest as they ended.
        store = self.work.store
        stops = [e for e in finished if e.trigger == "stop" and e.stopping is not None and e.schedule is not None]
        ended: list[Finished] = [
            (e.run, e.trigger, e.changes)
            for e in finished
            if not (e.trigger == "stop" and e.stopping is not None and e.schedule is not None)
        ]
        results: list[ScheduledRun | SchedulerError] = list(store.finish_many(ended, now=now))
        items: list[Finished] = [(e.run, e.trigger, e.changes) for e in stops]
        if stops:
            facts = {e.run.run_id: e.stopping for e in stops}
            schedules = {e.schedule.id: e.schedule for e in stops if e.schedule is not None}
            results += store.transition_many(items, now=now, schedules=schedules, facts=facts)
        succeeded: set[str] = set()
        tell = self.inputs.tell
        for (run, trigger, _), moved in zip(ended + items, results, strict=True):
            if isinstance(moved, SchedulerError):
                log.warning("could not record %s of run %s: %s", trigger, run.run_id, moved)
                continue
            if moved.status is RunStatus.SUCCEEDED:
                succeeded.add(run.schedule_id)
            if moved.status is RunStatus.FAILED:
                self.failed_now[moved.run_id] = moved
            elif tell:
                self.told.append(Told(moved))
        self.work.breakers.succeeded(succeeded, now)

    def _materialize(self, now: datetime, report: ReconciliationReport | None) -> list[ScheduledRun]:
        """Materialize every due schedule; return the runs created that wait to start."""
        store = self.work.store
        plans: list[tuple[ScheduleDefinition, DuePlan]] = []
        batch: list[Materialization] = []
        for schedule in store.due_schedules(now):
            self.fresh[schedule.id] = schedule
            plan, anchor = plan_schedule(schedule, now)
            disable = fired_reason(schedule, plan.runs[-1].intended_at) if plan.runs else None
            plans.append((schedule, plan))
            batch.append(Materialization(schedule, plan.runs, plan.next_run_at, anchor, disable))
        if not batch:
            return []
        waiting: list[ScheduledRun] = []
        tell = self.inputs.tell
        for (schedule, plan), done in zip(plans, store.materialize_many(batch, now=now), strict=True):
            if done is None:
                continue
            created = done.runs
            waiting += [run for run in created if run.status is RunStatus.PENDING]
            if tell:  # missed occurrences recorded as skipped: the skipped run tells how many
                self.told += [Told(run) for run in created if run.status is RunStatus.SKIPPED]
            if plan.missed is not None:
                if tell and plan.missed.caught_up:
                    self.notes.append(f"{schedule.name}: {plan.missed.reason}")
                if report is not None:
                    count_missed(report, schedule.name, plan)
        return waiting

    def _retry_failed(self, now: datetime, report: ReconciliationReport | None) -> list[datetime]:
        """Fire ``retry`` on failed runs, ``dead_letter`` where retry is refused; return when the rest are due."""
        store = self.work.store
        failed = store.runs(status=RunStatus.FAILED)
        if not failed:
            return []
        schedules = store.schedules_by_id(r.schedule_id for r in failed)
        failed = [r for r in failed if r.schedule_id in schedules]
        retried = store.transition_many(((r, "retry", {}) for r in failed), now=now, schedules=schedules)
        refused = [r for r, moved in zip(failed, retried, strict=True) if isinstance(moved, GuardRejected)]
        dead = store.transition_many(((r, "dead_letter", {}) for r in refused), now=now, schedules=schedules)
        waiting: list[datetime] = []
        lettered = [moved for moved in dead if isinstance(moved, ScheduledRun)]
        if lettered:
            lines = [f"{r.schedule_name} run {r.run_id} ({r.attempt} attempts): {r.error}" for r in lettered]
            store.add_alert(
                "dead_letter", dead_letter_text(lines), {"runs": [r.run_id for r in lettered], "lines": lines}
            )
        self._tell_retries(failed, retried, refused, dead, schedules)
        for run, moved in zip(refused, dead, strict=True):
            if isinstance(moved, ScheduledRun):
                probe_at = self.work.breakers.failed(run.schedule_id, now=now, error=run.error)
                if probe_at is not None:
                    self.breaker_due = min(probe_at, self.breaker_due or probe_at)
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

    def _tell_retries(
        self,
        failed: list[ScheduledRun],
        retried: list[ScheduledRun | SchedulerError],
        refused: list[ScheduledRun],
        dead: list[ScheduledRun | SchedulerError],
        schedules: dict[str, ScheduleDefinition],
    ) -> None:
        """The lines of this tick's failed attempts, each with what follows it, and of the dead letters."""
        lettered = {r.run_id: moved for r, moved in zip(refused, dead, strict=True) if isinstance(moved, ScheduledRun)}
        for run, moved in zip(failed, retried, strict=True):
            attempt = self.failed_now.pop(run.run_id, None)
            letter = lettered.get(run.run_id)
            if attempt is not None:
                total = attempts_allowed(schedules[run.schedule_id])
                if isinstance(moved, ScheduledRun):
                    retry = f"retry now (attempt {moved.attempt} of {total})"
                elif letter is not None:
                    retry = "no retry: dead-lettered"
                elif (when := retry_at(run, schedules[run.schedule_id])) is not None:
                    retry = f"retry at {when.isoformat()} (attempt {run.attempt + 1} of {total})"
                else:
                    retry = f"no retry yet: {moved}"
                self.told.append(Told(attempt, retry))
            if letter is not None:
                self.told.append(Told(letter))

    def _start_due(
        self, now: datetime, prepared: list[ScheduledRun], created: list[ScheduledRun], *, scan: bool
    ) -> None:
        """Fire ``due`` on what is due: this tick's ``created`` runs and the ``prepared`` ones due, or
        with ``scan`` every pending due run in the database.

        A run held back whatever its time (schedule removed or disabled, breaker open, task missing)
        is skipped. For the others, the machine's ``due`` guards (the missed-run policy) give the
        fate: skipped as missed or coalesced, written at once; or started, once the concurrency
        policy lets it, by ``due`` again in the claim.
        """
        w, i, store, report = self.work, self.inputs, self.work.store, self.inputs.report
        # Without a reason to look for other pending runs, the due ones are those this engine knows.
        if scan:
            pending = store.pending_due(now, fresh=created)
        else:
            pending = sorted(prepared + created, key=lambda r: (r.intended_run_at, r.created_at or now))
        if not pending:
            return
        wanted = {r.schedule_id for r in pending}
        # Schedules read earlier in this same transaction are current; the others are read (a row
        # unchanged since it was last read or written here is not mapped again). A prepared run's
        # schedule is the very copy kept with it while nobody wrote its row since.
        schedules = {sid: self.fresh[sid] for sid in wanted if sid in self.fresh}
        schedules.update(store.schedules_by_id(wanted - set(schedules)))
        kept = {p.run.run_id: p.schedule for p in i.prepared}
        by_schedule: dict[str, list[ScheduledRun]] = {}
        skips: list[Finished] = []
        facts = due_facts(pending)
        for run in pending:
            schedule = schedules.get(run.schedule_id)
            why = blocked(
                run,
                schedule,
                now,
                has_task=w.has_task,
                worker_id=w.worker_id,
                current=schedule is not None and kept.get(run.run_id) is schedule,
            )
            missed = False
            if why:
                skips.append((run, "skip", {"reason": why}))
            elif schedule is not None and fate(run, schedule, now, facts.get(run.run_id)) is RunStatus.SKIPPED:
                missed = True
                skips.append((run, "due", {}))
            else:
                by_schedule.setdefault(run.schedule_id, []).append(run)
            if report is not None and schedule is not None and is_prepared(run):
                count_late_prepared(report, run, schedule, now, skipped=bool(why) or missed)
        # Another worker may be deciding for the same schedules: take turns, then count what runs.
        turns = [sid for sid in by_schedule if needs_turns(schedules[sid])]
        store.lock_schedules(turns)
        counts = store.running_counts(turns)
        starts: dict[str, ScheduledRun] = {}
        reasons: dict[str, str] = {}
        waiting: set[str] = set()
        for schedule_id, runs in by_schedule.items():
            schedule = schedules[schedule_id]
            for decision in decide_starts(schedule.concurrency_policy, runs, counts.get(schedule_id, 0)):
                if decision.action is Action.START:
                    starts[decision.run.run_id] = decision.run
                    reasons[decision.run.run_id] = decision.reason
                elif decision.action is Action.SKIP:
                    skips.append((decision.run, "skip", {"reason": decision.reason}))
                else:
                    waiting.add(schedule_id)
                    if decision.action is Action.REPLACE:
                        self.replace.add(schedule_id)
        self.waiting = frozenset(waiting)
        if skips:
            moved_all = store.transition_many(skips, now=now, schedules=schedules, facts=facts)
            if i.tell:
                self.told += [Told(moved) for moved in moved_all if isinstance(moved, ScheduledRun)]
        if starts:
            won = store.start_many(
                starts.values(),
                owner=w.worker_id,
                lease_until=now + w.lease,
                reasons=reasons,
                now=now,
                trigger="due",
                schedules=schedules,
                facts=facts,
            )
            self.started.extend((moved, schedules[moved.schedule_id]) for moved in won)
            if len(won) < len(starts):
                log.debug("%d run(s) were started by another worker first", len(starts) - len(won))
