"""Retry guard: a failed run goes back to pending while attempts remain and its backoff has elapsed."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .decision import Decision

if TYPE_CHECKING:
    from ..definition import ScheduleDefinition
    from ..scheduled_run import ScheduledRun

#: No backoff between attempts grows beyond this.
MAX_BACKOFF = timedelta(hours=1)
#: Up to this fraction of the delay is added as jitter, so retries of many runs spread out.
JITTER_FRACTION = 0.1
_MICROSECOND = timedelta(microseconds=1)
#: ``error_type`` of a run whose worker died under it: it was interrupted, not failed by its task.
ORPHANED = "Orphaned"


def backoff_delay(attempt: int, base: timedelta, *, key: str) -> timedelta:
    """Delay before attempt ``attempt + 1``: ``base * 2**(attempt-1)``, capped, plus jitter.

    The jitter is derived from ``key`` (the run id), so the same run always gets the same delay:
    deterministic for tests and for anyone reading the row later.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    # In whole microseconds, as integers: no base and no attempt can overflow timedelta here.
    micro = min((base // _MICROSECOND) << min(attempt - 1, 30), MAX_BACKOFF // _MICROSECOND)
    raw = timedelta(microseconds=micro)
    digest = hashlib.blake2b(f"{key}:{attempt}".encode(), digest_size=4).digest()
    fraction = int.from_bytes(digest, "big") / 2**32
    return raw + raw * (JITTER_FRACTION * fraction)


def attempts_allowed(schedule: ScheduleDefinition) -> int:
    """The first attempt plus the schedule's retries."""
    return 1 + schedule.max_retries


def retry_at(run: ScheduledRun, schedule: ScheduleDefinition) -> datetime | None:
    """When the failed ``run`` may be retried, or None when its attempts are used up.

    Backoff protects a failing dependency; an orphaned run did not fail, its worker died, so it
    may be retried at once.
    """
    if run.attempt >= attempts_allowed(schedule) or run.completed_at is None:
        return None
    if run.error_type == ORPHANED:
        return run.completed_at
    return run.completed_at + backoff_delay(run.attempt, schedule.retry_backoff, key=run.run_id)


def may_retry(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime) -> Decision:
    """Guard of ``failed -> pending``: attempts remain and the backoff has elapsed."""
    total = attempts_allowed(schedule)
    if run.attempt >= total:
        return Decision(False, f"retries exhausted: attempt {run.attempt} of {total} failed")
    ready = retry_at(run, schedule)
    if ready is None:
        return Decision(False, "failed run has no completion time to count the backoff from")
    if now < ready:
        return Decision(False, f"backoff: attempt {run.attempt + 1} of {total} not before {ready.isoformat()}")
    return Decision(True, f"retry: attempt {run.attempt + 1} of {total}")


def may_dead_letter(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime) -> Decision:
    """Guard of ``failed -> dead_lettered``: every allowed attempt has failed."""
    total = attempts_allowed(schedule)
    if run.attempt < total:
        return Decision(False, f"attempts remain: {run.attempt} of {total} used")
    return Decision(True, f"retries exhausted: {run.attempt} of {total} attempts failed")
