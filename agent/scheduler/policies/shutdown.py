"""Shutdown policy: what a stop does to each run in flight, as guards on the run machine's ``stop`` edges.

On stop, the engine fires ``stop`` on every running run it holds. The trigger has one edge per
outcome, tried in order, and these guards choose among them:

- ``checkpoint_saved`` (running -> paused): checkpoint_and_stop, and the task saved a
  checkpoint during this attempt; it resumes from it after the restart.
- ``forced_by_second_signal`` (running -> pending): a second signal (``hurry``) requeues
  whatever is still running.
- ``requeue_policy`` (running -> pending): requeue, at once; a task in a thread, which cannot
  be cut, is requeued at its shutdown timeout.
- ``graceful_finish_timed_out`` (running -> pending): graceful_finish, once the shutdown
  timeout has passed; before it, the run keeps running and ends on its own (succeed or fail as
  usual).
- ``checkpoint_not_saved_in_time`` (running -> pending): checkpoint_and_stop, when no
  checkpoint came within the checkpoint wait.

When no guard passes, ``stop`` is refused and the run keeps running until its cutoff
(``cutoff``), when the engine fires ``stop`` again. Timeouts count from the moment the stop
began (``Stopping.began``), so a stop takes the longest of them, not their sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..enums import ShutdownPolicy
from .decision import Decision

if TYPE_CHECKING:
    from ..definition import ScheduleDefinition
    from ..scheduled_run import ScheduledRun

#: checkpoint_and_stop waits at most this long (within the shutdown timeout) for the checkpoint.
CHECKPOINT_WAIT = timedelta(seconds=10)
#: The reason of a run stopped by a second signal.
FORCED = "shutdown forced: requeued"
#: The reason of a run still running when its shutdown timeout passed.
STILL_RUNNING = "shutdown: still running at the shutdown timeout"
_THREAD_LEFT = "; its thread ends with the process, and what it did may be done again"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopping:
    """What the engine passes to the ``stop`` guards besides the run, its schedule and now."""

    began: datetime
    """When the stop began: every shutdown timeout counts from here."""
    checkpoint_saved: bool = False
    """The task saved a checkpoint during this attempt."""
    hurried: bool = False
    """A second signal asked to cut the stop short."""
    in_thread: bool = False
    """The run's code runs in a thread, which cannot be cancelled, only left to end with the process."""


def cutoff(schedule: ScheduleDefinition, stopping: Stopping) -> datetime:
    """When the stop stops waiting for the run: ``stop`` is fired again then, and its guards let it go."""
    policy, timeout = schedule.shutdown_policy, schedule.shutdown_timeout
    if policy is ShutdownPolicy.REQUEUE and not stopping.in_thread:
        return stopping.began
    if policy is ShutdownPolicy.CHECKPOINT_AND_STOP:
        return stopping.began + min(CHECKPOINT_WAIT, timeout)
    return stopping.began + timeout


def asks_the_task(schedule: ScheduleDefinition) -> bool:
    """Whether the policy asks the task to stop (``stop_requested``): checkpoint_and_stop does, so
    that it saves a checkpoint; the stop decides the run's end even if the task then returns."""
    return schedule.shutdown_policy is ShutdownPolicy.CHECKPOINT_AND_STOP


def _keeps_running(schedule: ScheduleDefinition, stopping: Stopping) -> Decision:
    """Every guard's refusal: why the run keeps running for now (the same whichever guard refused last)."""
    limit = cutoff(schedule, stopping)
    if schedule.shutdown_policy is ShutdownPolicy.CHECKPOINT_AND_STOP:
        return Decision(False, f"checkpoint_and_stop: waits for a checkpoint until {limit.isoformat()}")
    return Decision(False, f"{schedule.shutdown_policy}: may finish until {limit.isoformat()}")


def _timed_out(schedule: ScheduleDefinition, stopping: Stopping, now: datetime) -> Decision:
    if now < stopping.began + schedule.shutdown_timeout:
        return _keeps_running(schedule, stopping)
    return Decision(True, STILL_RUNNING + (_THREAD_LEFT if stopping.in_thread else ""))


def checkpoint_saved(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, stopping: Stopping) -> Decision:
    """Guard of ``running -> paused`` on ``stop``: checkpoint_and_stop, with a checkpoint saved."""
    if schedule.shutdown_policy is not ShutdownPolicy.CHECKPOINT_AND_STOP or not stopping.checkpoint_saved:
        return _keeps_running(schedule, stopping)
    return Decision(True, "shutdown: checkpointed (policy checkpoint_and_stop)")


def forced_by_second_signal(
    run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, stopping: Stopping
) -> Decision:
    """Guard of ``running -> pending`` on ``stop``: a second signal requeues what is still running."""
    return Decision(True, FORCED) if stopping.hurried else _keeps_running(schedule, stopping)


def requeue_policy(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, stopping: Stopping) -> Decision:
    """Guard of ``running -> pending`` on ``stop``: requeue at once, or at the timeout for a thread."""
    if schedule.shutdown_policy is not ShutdownPolicy.REQUEUE:
        return _keeps_running(schedule, stopping)
    if stopping.in_thread:
        # A thread cannot be cut: it has the shutdown timeout to end, and its ending is the outcome.
        return _timed_out(schedule, stopping, now)
    return Decision(True, "shutdown: requeued (policy requeue)")


def graceful_finish_timed_out(
    run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, stopping: Stopping
) -> Decision:
    """Guard of ``running -> pending`` on ``stop``: graceful_finish, still running at the shutdown timeout."""
    if schedule.shutdown_policy is not ShutdownPolicy.GRACEFUL_FINISH:
        return _keeps_running(schedule, stopping)
    return _timed_out(schedule, stopping, now)


def checkpoint_not_saved_in_time(
    run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, stopping: Stopping
) -> Decision:
    """Guard of ``running -> pending`` on ``stop``: checkpoint_and_stop, and no checkpoint within the wait."""
    if schedule.shutdown_policy is not ShutdownPolicy.CHECKPOINT_AND_STOP or stopping.checkpoint_saved:
        return _keeps_running(schedule, stopping)
    if now < cutoff(schedule, stopping):
        return _keeps_running(schedule, stopping)
    return Decision(True, "shutdown: no checkpoint saved, requeued")
