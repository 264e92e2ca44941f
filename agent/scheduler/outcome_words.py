"""The words a run's outcome is told in: the worker's log and the ``status`` command say the same.

Each outcome the worker records gets one log line, ``<schedule>: run <id> <word> (attempt <n>,
<ms> ms): <detail>``, where the word is one of OUTCOME_WORDS and the detail is the skip reason,
the error's first line and whether a retry is scheduled, or why the run was dead-lettered. The
duration is the attempt's, from its start to its end, for runs that executed. ``status`` counts
the runs that ended in the last hour under the same words, and shows each schedule's last one in
the same form (``outcome_text``), so that what the log said can be checked against the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .enums import RunStatus
from .scheduled_run import ScheduledRun

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: A run that finished without error.
SUCCEEDED = "succeeded"
#: A run that did not execute, or whose task said it could not (not configured), with the reason.
SKIPPED = "skipped"
#: One attempt that raised or timed out; a retry may follow.
ATTEMPT_FAILED = "attempt failed"
#: A run whose every allowed attempt failed: kept in the dead-letter queue.
DEAD_LETTERED = "dead-lettered"
#: A run cancelled by an operator or by a replacing run.
CANCELLED = "cancelled"
#: A run stopped at shutdown with a saved checkpoint.
PAUSED = "paused"
#: A run put back to pending (shutdown, a cut task): it runs again.
REQUEUED = "requeued"

#: The word for each status a recorded outcome leaves a run in.
OUTCOME_WORDS: dict[RunStatus, str] = {
    RunStatus.SUCCEEDED: SUCCEEDED,
    RunStatus.SKIPPED: SKIPPED,
    RunStatus.FAILED: ATTEMPT_FAILED,
    RunStatus.DEAD_LETTERED: DEAD_LETTERED,
    RunStatus.CANCELLED: CANCELLED,
    RunStatus.PAUSED: PAUSED,
    RunStatus.PENDING: REQUEUED,
}


def outcome_word(status: RunStatus) -> str:
    """The word for a run left in ``status`` by its outcome (``running`` has none: it is its own word)."""
    return OUTCOME_WORDS.get(status, status.value)


#: A first line longer than this is cut (with an ellipsis): one outcome, one readable line.
LINE_CHARS = 300


def first_line(text: str | None) -> str:
    """The first non-empty line of ``text`` (at most LINE_CHARS characters), or ``""``."""
    if not text:
        return ""
    for line in text.splitlines():
        if line := line.strip():
            return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 3] + "..."
    return ""


def duration_ms(started_at: datetime | None, completed_at: datetime | None) -> int | None:
    """Milliseconds from an attempt's start to its end, or None when it did not execute."""
    if started_at is None or completed_at is None:
        return None
    return max(0, round((completed_at - started_at).total_seconds() * 1000))


def outcome_detail(run: ScheduledRun, retry: str | None = None) -> str:
    """What follows the word: the error's first line (and ``retry``) for a failure, else the reason."""
    if run.status is RunStatus.FAILED:
        error = first_line(run.error) or run.reason or "no error recorded"
        return f"{error}; {retry}" if retry else error
    if run.status is RunStatus.DEAD_LETTERED:
        error = first_line(run.error)
        return f"{run.reason}; last error: {error}" if error else (run.reason or "")
    if run.status is RunStatus.SUCCEEDED:
        return first_line(run.outcome)
    return run.reason or ""


def outcome_text(run: ScheduledRun, retry: str | None = None) -> str:
    """``run <id> <word> (attempt <n>[, <ms> ms])[: <detail>]``: one recorded outcome, as the log tells it."""
    ms = duration_ms(run.started_at, run.completed_at) if run.status is not RunStatus.PENDING else None
    took = "" if ms is None else f", {ms} ms"
    stands = f", stands for {run.coalesced_from} occurrences" if run.coalesced_from > 1 else ""
    detail = outcome_detail(run, retry)
    head = f"run {run.run_id} {outcome_word(run.status)} (attempt {run.attempt}{took}{stands})"
    return f"{head}: {detail}" if detail else head


#: The statuses whose runs ``recent_outcomes`` counts (a pending or running run has not ended).
_ENDED = (
    RunStatus.SUCCEEDED,
    RunStatus.SKIPPED,
    RunStatus.FAILED,
    RunStatus.DEAD_LETTERED,
    RunStatus.CANCELLED,
    RunStatus.PAUSED,
)


def failed_attempts(run: ScheduledRun) -> int:
    """How many attempts of ``run`` failed, as its attempt number says: every attempt of a failed or
    dead-lettered run, every attempt before the last of the others (a retry follows a failure)."""
    if run.status in (RunStatus.FAILED, RunStatus.DEAD_LETTERED):
        return run.attempt
    return run.attempt - 1


def recent_outcomes(runs: Iterable[ScheduledRun]) -> dict[str, dict[str, Any]]:
    """Per schedule name, from runs whose row changed in a window: the outcomes counted under the
    log's words, and the last of them as the log tells it.

    Each failed attempt is counted (``attempt failed``), also those a retry followed: a run at
    attempt 3 that succeeded counts one ``succeeded`` and two ``attempt failed``.
    """
    out: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: (r.updated_at or _EPOCH, r.run_id)):
        failed = failed_attempts(run) if run.status in _ENDED or run.attempt > 1 else 0
        if run.status not in _ENDED and not failed:
            continue
        entry = out.setdefault(run.schedule_name, {"counts": {}, "last": None, "last_at": None})
        counts: dict[str, int] = entry["counts"]
        if failed:
            counts[ATTEMPT_FAILED] = counts.get(ATTEMPT_FAILED, 0) + failed
        if run.status in _ENDED and run.status is not RunStatus.FAILED:
            word = outcome_word(run.status)
            counts[word] = counts.get(word, 0) + 1
        if run.status in _ENDED:
            entry["last"], entry["last_at"] = outcome_text(run), run.updated_at
    return dict(sorted(out.items()))
