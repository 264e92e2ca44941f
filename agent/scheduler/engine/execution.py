"""Runs in flight, owned by the loop thread: dispatch, prepared runs armed ahead, tasks (async and
in threads), outcome decisions, deadlines, the stop of in-flight runs and the drain.

Everything here runs on the event loop's thread. Outcomes wait in a queue that the loop hands to
the next tick as ``Ended`` values; the database side never reads this room's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from ..clock import Clock
from ..definition import ScheduleDefinition
from ..enums import RiskTier, RunStatus
from ..errors import GuardRejected, TaskNotConfigured
from ..machines.run_lifecycle import plan_run
from ..policies.shutdown import CHECKPOINT_WAIT, STILL_RUNNING, Stopping, asks_the_task, cutoff
from ..scheduled_run import ScheduledRun
from ..settings import Settings
from ..store import EngineStore
from ..tasks import RunContext, TaskRegistry, TaskSpec
from .outcomes import Outcome, ended, run_in_thread, thread_ended, timed_out
from .tick import Ended, Prepared

log = logging.getLogger(__name__)

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
#: A run that succeeded or was skipped, with nothing waiting behind it, is recorded by the next
#: tick, at most this many real seconds later, so completions close together share one
#: transaction (on a FakeClock, the next instant's). Any other outcome (a failure, whose retry and
#: breaker count cannot wait; a run others wait for) wakes the loop at once.
RECORD_WINDOW_SECONDS = 0.02
_QUIET_ENDINGS = frozenset({"succeed", "skip"})
#: An event loop blocked this long (an async task that does not yield) is logged (real seconds).
LOOP_STALL_SECONDS = 1.0
#: While the engine runs, it notes this often that its event loop is running (real seconds): a late
#: note means the loop was blocked, and a task that ends long after the last note blocked it.
LOOP_BEAT_SECONDS = 0.1
#: Outcomes that end a run; the moment the task ended is recorded as its completion.
_ENDINGS = frozenset({"succeed", "fail", "skip", "cancel"})

Db = Callable[..., Awaitable[Any]]


@dataclass(eq=False)
class _InFlight:
    """A run this engine is executing. Made ahead for a prepared run when its task is armed, with
    the prepared row as ``run`` and no deadline, and in flight only once dispatched with the claim."""

    run: ScheduledRun
    schedule: ScheduleDefinition
    ctx: RunContext
    task: asyncio.Task[None]
    deadline: datetime | None = None
    outcome: Outcome | None = None
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


@dataclass(frozen=True, slots=True)
class _Armed:
    """The task made ahead for a prepared run, with the schedule copy its context was built from;
    ``claimed`` is resolved (on the loop) with the run once the tick has claimed it. ``flight`` is
    its entry in flight, made ahead too and entered (with the claimed run) at dispatch."""

    schedule: ScheduleDefinition
    spec: TaskSpec
    flight: _InFlight
    claimed: asyncio.Future[ScheduledRun]


class LoopWatch:
    """Notes every LOOP_BEAT_SECONDS that the event loop runs; a late note means it was blocked."""

    def __init__(self, due_meanwhile: Callable[[], str]) -> None:
        self._due_meanwhile = due_meanwhile
        self._beat_at = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._beat_at = time.monotonic()
        self._handle = loop.call_later(LOOP_BEAT_SECONDS, self._beat)

    def stop(self) -> None:
        handle, self._handle, self._loop = self._handle, None, None
        if handle is not None:
            handle.cancel()

    def _beat(self) -> None:
        at = time.monotonic()
        stalled = at - self._beat_at - LOOP_BEAT_SECONDS
        self._beat_at = at
        if stalled >= LOOP_STALL_SECONDS:
            log.warning(
                "the event loop was blocked for %.1fs (blocking code in a task or a callback); due meanwhile: %s",
                stalled,
                self._due_meanwhile(),
            )
        if self._loop is not None:
            self._handle = self._loop.call_later(LOOP_BEAT_SECONDS, self._beat)

    def held_since_beat(self) -> float | None:
        """How long the loop has run this task's code since its last beat (None without beats).

        An async task that ends long after the last beat blocked the loop in its last step: that
        is the stall, and it is blamed on this task here (the next beat then finds nothing late).
        """
        if self._handle is None:
            return None
        held = time.monotonic() - self._beat_at
        if held >= LOOP_STALL_SECONDS:
            self._beat_at = time.monotonic()
        return held

    def due_meanwhile(self) -> str:
        return self._due_meanwhile()


class Execution:
    """The runs this engine executes, and what becomes of them; only the loop thread calls it."""

    def __init__(
        self,
        *,
        store: EngineStore,
        clock: Clock,
        tasks: TaskRegistry,
        builtins: dict[str, TaskSpec],
        worker_id: str,
        lease: timedelta,
        db: Db,
        wake: Callable[[], None],
        watch: LoopWatch,
        settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tasks = tasks
        self.builtins = builtins
        self.worker_id = worker_id
        self.lease = lease
        self._db = db
        self._wake = wake
        self.watch = watch
        self.settings = settings
        """The worker's settings, which judge a task's ``requires``; None: the variables, read at each run."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.in_flight: dict[str, _InFlight] = {}
        self.prepared: dict[str, Prepared] = {}
        """Runs this engine prepared ahead of their time, not yet due."""
        self.waiting: frozenset[str] = frozenset()
        """Schedules whose runs wait behind a running one, as the last tick found them."""
        self.draining = False
        self.last_renewal: datetime | None = None
        self._armed: dict[str, _Armed] = {}
        self._loggers: dict[str, logging.Logger] = {}
        self._finished: list[Ended] = []
        self._record_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ what the loop hands the tick

    def has_task(self, target: str) -> bool:
        return target in self.builtins or target in self.tasks

    def task_tier(self, target: str) -> RiskTier | None:
        """The risk tier the task ``target`` declares, or None when this worker does not know it."""
        spec = self._spec(target) if self.has_task(target) else None
        return None if spec is None else spec.risk_tier

    @property
    def finished(self) -> bool:
        """Whether outcomes wait to be recorded."""
        return bool(self._finished)

    def take_finished(self) -> tuple[Ended, ...]:
        """The outcomes waiting to be recorded, handed over to a tick."""
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        finished, self._finished = tuple(self._finished), []
        return finished

    def due_meanwhile(self, now: datetime, schedules_due: datetime | None) -> str:
        """What is due and waits (for a stalled loop's warning): prepared runs past their time, or schedules."""
        late = sorted({p.run.schedule_name for p in self.prepared.values() if p.run.intended_run_at <= now})
        if not late and schedules_due is not None and schedules_due <= now:
            late = [f"schedules due since {schedules_due.isoformat()}"]
        return ", ".join(late) or "none"

    def take_due_prepared(self, now: datetime) -> tuple[Prepared, ...]:
        due = tuple(p for p in self.prepared.values() if p.run.intended_run_at <= now)
        for p in due:
            del self.prepared[p.run.run_id]
        return due

    def earliest_prepared(self) -> datetime | None:
        return min((p.run.intended_run_at for p in self.prepared.values()), default=None)

    def due_next(self) -> tuple[datetime | None, int]:
        """The earliest time of a prepared run, and how many prepared runs share it."""
        at = self.earliest_prepared()
        return at, sum(1 for p in self.prepared.values() if p.run.intended_run_at == at)

    def renewal(self, now: datetime) -> tuple[str, ...]:
        """Runs whose leases the tick should renew now (every third of a lease)."""
        if self.in_flight and (self.last_renewal is None or now - self.last_renewal >= self.lease / 3):
            self.last_renewal = now
            return tuple(self.in_flight)
        return ()

    def give_back(self, finished: tuple[Ended, ...], prepared: tuple[Prepared, ...], renewed: datetime | None) -> None:
        """A tick's transaction did not commit: what it was to write is kept for the next tick.

        Outcomes and due prepared runs go back in front of whatever arrived since; leases count as
        not renewed.
        """
        self._finished[:0] = finished
        for p in prepared:
            self.prepared.setdefault(p.run.run_id, p)
        self.last_renewal = renewed

    def adopt_prepared(self, prepared: Iterable[Prepared]) -> None:
        for p in prepared:
            self.prepared[p.run.run_id] = p

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, run: ScheduledRun, schedule: ScheduleDefinition) -> _InFlight:
        armed = self._armed.pop(run.run_id, None)
        if armed is not None and armed.schedule is schedule and not armed.claimed.done():
            spec, flight = armed.spec, armed.flight
            flight.run = run
            armed.claimed.set_result(run)
        else:
            if armed is not None:
                armed.flight.task.cancel()
            spec = self._spec(schedule.target)
            ctx = self._context(run, schedule)
            task = asyncio.get_running_loop().create_task(self._execute(run, spec, ctx), name=f"run:{run.run_id}")
            flight = self._flight(run, schedule, ctx, task)
        started = run.started_at or self.clock.now()
        flight.deadline = started + schedule.timeout if schedule.timeout else None
        self.in_flight[run.run_id] = flight
        log.info("run %s of %s started (attempt %d) -> task %s", run.run_id, schedule.name, run.attempt, spec.name)
        return flight

    def _flight(
        self, run: ScheduledRun, schedule: ScheduleDefinition, ctx: RunContext, task: asyncio.Task[None]
    ) -> _InFlight:
        """The entry in flight of a run's task (entered at dispatch); the task's end, if it comes
        before ``_execute`` began, is recorded by ``_cut_before_it_began``."""
        task.add_done_callback(partial(self._cut_before_it_began, run.run_id))
        return _InFlight(run=run, schedule=schedule, ctx=ctx, task=task)

    def _spec(self, target: str) -> TaskSpec:
        return self.builtins.get(target) or self.tasks.get(target)

    def _context(self, run: ScheduledRun, schedule: ScheduleDefinition) -> RunContext:
        return RunContext(
            run_id=run.run_id,
            schedule=schedule,
            intended_run_at=run.intended_run_at,
            attempt=run.attempt,
            params=dict(run.params),
            checkpoint=run.checkpoint,
            idempotency_key=run.idempotency_key,
            logger=self._logger(schedule.target),
            _save=partial(self._save_checkpoint, run.run_id),
            _beat=self._heartbeat,
            _loop=self.loop,
        )

    def _logger(self, target: str) -> logging.Logger:
        # logging.getLogger takes the logging module's lock; a run's context needs its task's logger
        logger = self._loggers.get(target)
        if logger is None:
            logger = self._loggers[target] = logging.getLogger(f"agent.scheduler.task.{target}")
        return logger

    def arm(self) -> None:
        """Make the task of every prepared run ahead of its time; it waits for the claim (or a cancel).

        At a prepared run's time only the claim and a ``set_result`` stand before its task runs:
        creating a thousand tasks takes 10 ms that would otherwise come after the claim, and their
        entries in flight (made here, entered at dispatch) about 4 ms more.
        """
        loop = asyncio.get_running_loop()
        for p in self.prepared.values():
            run_id = p.run.run_id
            if run_id in self._armed or not self.has_task(p.schedule.target):
                continue
            ctx = self._context(p.run, p.schedule)
            spec = self._spec(p.schedule.target)
            claimed: asyncio.Future[ScheduledRun] = loop.create_future()
            task = loop.create_task(self._when_claimed(claimed, spec, ctx), name=f"run:{run_id}")
            self._armed[run_id] = _Armed(p.schedule, spec, self._flight(p.run, p.schedule, ctx, task), claimed)

    async def _when_claimed(self, claimed: asyncio.Future[ScheduledRun], spec: TaskSpec, ctx: RunContext) -> None:
        await self._execute(await claimed, spec, ctx)

    def disarm(self, run_ids: Iterable[str] | None = None) -> None:
        """Cancel the tasks armed for these prepared runs (None: all of them)."""
        for run_id in list(self._armed) if run_ids is None else run_ids:
            armed = self._armed.pop(run_id, None)
            if armed is not None:
                armed.flight.task.cancel()

    # ------------------------------------------------------------------ a task's life

    async def _execute(self, run: ScheduledRun, spec: TaskSpec, ctx: RunContext) -> None:
        outcome: Outcome
        thread: asyncio.Future[Any] | None = None
        cut = False
        try:
            missing = spec.missing_configuration(self.settings)
            if missing:
                raise TaskNotConfigured(", ".join(missing))
            if spec.is_async:
                value = await spec.fn(ctx)
            else:
                thread = run_in_thread(spec.fn, ctx, name=f"run:{run.run_id}")
                if (flying := self.in_flight.get(run.run_id)) is not None:
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
        flight = self.in_flight.pop(run.run_id, None)
        if flight is None:
            return  # left behind at shutdown, and recorded then
        held = self.watch.held_since_beat() if spec.is_async and not cut else None
        on_its_own = thread_done if thread is not None else not cut
        trigger = self._note_finished(flight, self._decide_outcome(flight, outcome, held=held, on_its_own=on_its_own))
        if trigger in _QUIET_ENDINGS and run.schedule_id not in self.waiting and not self.draining:
            self._record_soon()
        else:
            self._wake()

    def _note_finished(self, flight: _InFlight, outcome: Outcome) -> str:
        """Queue ``outcome`` of a run no longer in flight for the next tick to record; returns its trigger."""
        trigger, changes = outcome
        if trigger in ("checkpoint", "requeue", "stop") and flight.checkpoint_saved:
            changes = {**changes, "checkpoint": flight.ctx.checkpoint}
        if trigger in _ENDINGS:
            changes = {**changes, "completed_at": self.clock.now()}
        if trigger == "stop" and flight.stopping is not None:
            facts = replace(flight.stopping, checkpoint_saved=flight.checkpoint_saved)
            self._finished.append(Ended(flight.run, trigger, changes, stopping=facts, schedule=flight.schedule))
        else:
            self._finished.append(Ended(flight.run, trigger, changes))
        return trigger

    def _cut_before_it_began(self, run_id: str, task: asyncio.Task[None]) -> None:
        """A task cancelled before ``_execute`` began (still waiting for its claim, or not yet
        stepped) never recorded its run: it is recorded here.

        A stop that requeues a run dispatched moments before cancels a task that has not begun.
        An armed task cancelled instead of dispatched (undone, or made again for a changed
        schedule) was never in flight: the run's entry, if any, is another task's.
        """
        flight = self.in_flight.get(run_id)
        if flight is None or flight.task is not task:
            return  # _execute recorded it, or it never ran
        del self.in_flight[run_id]
        cut: Outcome = ("requeue", {"reason": "cancelled before it began"})
        self._note_finished(flight, self._decide_outcome(flight, cut, held=None, on_its_own=False))
        self._wake()

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

    def _held_the_loop(self, flight: _InFlight, held: float, outcome: Outcome) -> Outcome:
        """An async task that blocked the event loop for ``held`` seconds: say so; past its timeout,
        it failed by timeout (its deadline could not be enforced while it held the loop)."""
        log.warning(
            "run %s of %s held the event loop for %.1fs without yielding (blocking code in an async task); "
            "every other run waited meanwhile, due: %s",
            flight.run.run_id,
            flight.schedule.name,
            held,
            self.watch.due_meanwhile(),
        )
        if flight.outcome is not None or flight.deadline is None or self.clock.now() < flight.deadline:
            return outcome
        limit = flight.schedule.timeout.total_seconds() if flight.schedule.timeout else 0
        log.warning("run %s of %s timed out after %gs", flight.run.run_id, flight.schedule.name, limit)
        return timed_out(limit, f"; it held the event loop for {held:.1f}s without yielding")

    def _record_soon(self) -> None:
        if self._record_timer is None and self.loop is not None:
            self._record_timer = self.loop.call_later(RECORD_WINDOW_SECONDS, self._wake)

    async def _save_checkpoint(self, run_id: str, data: Any) -> None:
        await self._db(self.store.save_checkpoint, run_id, data, owner=self.worker_id)
        flight = self.in_flight.get(run_id)
        if flight is not None:
            flight.checkpoint_saved = True

    def _heartbeat(self) -> None:
        """A task is alive: its lease is renewed (and the heartbeat recorded) by the next tick.

        Tasks in threads call this from their thread: the loop's state changes on the loop.
        """
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._renew_next_tick()
        else:
            loop.call_soon_threadsafe(self._renew_next_tick)

    def _renew_next_tick(self) -> None:
        self.last_renewal = None

    # ------------------------------------------------------------------ deadlines and stops

    def next_instants(self, now: datetime) -> list[datetime]:
        """When something in flight needs the loop: a deadline, a cutoff, a lease renewal."""
        out: list[datetime] = []
        for f in self.in_flight.values():
            out += [t for t in (None if f.overran else f.deadline, f.kill_at) if t is not None]
        if self.in_flight:
            out.append((self.last_renewal or now) + self.lease / 3)
        return out

    def enforce_deadlines(self, now: datetime) -> None:
        for flight in list(self.in_flight.values()):
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

    def request_stop(self, schedule_id: str, now: datetime) -> None:
        """Ask the runs of ``schedule_id`` in flight to stop: a newer occurrence replaces them."""
        for flight in self.in_flight.values():
            if flight.schedule.id == schedule_id and flight.outcome is None:
                flight.outcome = ("cancel", {"reason": "replaced by a newer occurrence"})
                flight.kill_at = now + timedelta(seconds=STOP_GRACE_SECONDS)
                flight.ctx.stop_requested.set()

    def hurry(self, now: datetime) -> None:
        """Fire ``stop`` on every run still in flight, hurried: its guards requeue (or pause) it now."""
        for flight in self.in_flight.values():
            began = now if flight.stopping is None else flight.stopping.began
            flight.stopping = Stopping(began=began, hurried=True, in_thread=flight.in_thread)
            flight.outcome = ("stop", {})
            flight.kill_at = now

    def apply_shutdown_policies(self, began: datetime) -> None:
        """Fire ``stop`` on every run in flight; its guards (the shutdown policy) requeue it at once, or
        refuse, and the run keeps running until its cutoff (counted from ``began``), when ``stop`` is
        fired again (``drain``). Under checkpoint_and_stop the task is asked to stop meanwhile."""
        for flight in self.in_flight.values():
            # A second signal that came first (hurry) stays: the stop only cuts shorter, never longer.
            hurried = flight.stopping is not None and flight.stopping.hurried
            flight.stopping = Stopping(began=began, in_thread=flight.in_thread, hurried=hurried)
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
            return plan_run(flight.run, "stop", now=now, schedule=flight.schedule, facts=facts).moved
        except GuardRejected:
            return None

    async def drain(self) -> None:
        """Wait for every run in flight to end, or cut it off at its cutoff (see apply_shutdown_policies)."""
        while self.in_flight:
            await self._renew_while_draining()
            cutoffs = [f.kill_at for f in self.in_flight.values() if f.kill_at is not None and not f.task.done()]
            if cutoffs:
                # Bounded, so that hurry() (a second signal) is noticed within a fraction of a second.
                horizon = min(max((min(cutoffs) - self.clock.now()).total_seconds(), 0.0), DRAIN_POLL_SECONDS)
                await self._wait_tasks([f.task for f in self.in_flight.values()], horizon)
            now = self.clock.now()
            for flight in list(self.in_flight.values()):
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
            await asyncio.wait([f.task for f in self.in_flight.values()], timeout=0) if self.in_flight else None
            await asyncio.sleep(0)

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

    def _leave_behind(self, flight: _InFlight) -> None:
        """Record a run whose task was cancelled at its cutoff and did not end: the stop goes on without it."""
        del self.in_flight[flight.run.run_id]
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

    async def _renew_while_draining(self) -> None:
        """Runs finishing gracefully still hold their leases, or another worker would take them over."""
        now = self.clock.now()
        if self.last_renewal is not None and now - self.last_renewal < self.lease / 3:
            return
        self.last_renewal = now
        await self._db(
            self.store.renew_leases, list(self.in_flight), owner=self.worker_id, until=now + self.lease, now=now
        )
