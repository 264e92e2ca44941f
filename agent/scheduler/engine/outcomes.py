"""How a task's code runs and ends: sync functions on a thread of their own; outcomes from results;
and the log line of every outcome recorded.

A thread cannot be cancelled at all, so the engine must know whether it is still running before
it records an outcome.

Every outcome the engine records is logged once, by ``tell``, on the loop's side after the tick
that wrote it has committed (a rolled-back outcome is never logged): ``<schedule>: run <id>
<word> (attempt <n>, <ms> ms): <detail>`` in the words of ``outcome_words``, which ``status``
uses too. Successes, skips, cancels, pauses and requeues are INFO; failed attempts and dead
letters WARNING. A schedule with more than one skipped run in one tick (a backlog found at
startup, runs held back behind an open breaker) gets one line with the count and the last of
them, not a line per run; a missed-run policy that skips N occurrences records one skipped run
that stands for them, and its line says so. Nothing is formatted for a level the log drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from ..enums import RunStatus
from ..errors import TaskNotConfigured
from ..limits import NAME_CHARS, storable_text
from ..outcome_words import SKIPPED, outcome_text
from .tick import Told

#: The logger of run outcomes: one line per outcome recorded.
log = logging.getLogger(__name__)

T = TypeVar("T")
#: A run trigger and the row fields it sets, e.g. ``("succeed", {"outcome": "3 synced"})``.
Outcome = tuple[str, dict[str, Any]]


def ended(value: Any = None, error: BaseException | None = None) -> Outcome:
    """What a task that returned ``value`` or raised ``error`` becomes: succeed, skip or fail.

    Its text is kept as the task wrote it, except NUL and lone surrogates, which no store holds:
    they are written as escapes.
    """
    text = storable_text
    if error is None:
        return ("succeed", {"outcome": None if value is None else text(str(value)[:4000])})
    if isinstance(error, TaskNotConfigured):
        return ("skip", {"reason": text(str(error))})
    kind = text(type(error).__name__)[:NAME_CHARS]
    return (
        "fail",
        {
            "error_type": kind,
            "error": text(f"{kind}: {error}"[:4000]),
            "error_traceback": text("".join(traceback.format_exception(error))[-16000:]),
            "reason": "task raised",
        },
    )


def timed_out(limit: float, detail: str = "") -> Outcome:
    """A run that exceeded its timeout of ``limit`` seconds: failed, reason ``timeout``."""
    error = f"TimeoutError: run exceeded its timeout of {limit:g}s{detail}"
    return ("fail", {"reason": "timeout", "error_type": "TimeoutError", "error": error})


def thread_ended(done: asyncio.Future[Any]) -> Outcome:
    """The outcome of a finished ``run_in_thread`` future."""
    error = done.exception()
    return ended(None if error is not None else done.result(), error)


def run_in_thread(fn: Callable[..., T], *args: Any, name: str) -> asyncio.Future[T]:
    """Start ``fn(*args)`` on a new daemon thread; the returned future gets its result or exception.

    A daemon thread, not the loop's default executor: a process that exits (after its shutdown
    policy recorded what became of the run) does not wait for a thread that ignores its stop
    signal. Cancelling the future does not stop the thread; ``future.done()`` stays False until
    the thread ends, so callers can tell "still running" from "finished".
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(value)
        else:
            done.set_exception(error)

    def work() -> None:
        try:
            value, error = context.run(fn, *args), None
        except BaseException as exc:  # handed to the loop, raised where the future is awaited
            value, error = None, exc
        # A closed loop: the process is exiting, and the run's outcome was recorded already.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return done


def tell(told: tuple[Told, ...], notes: tuple[str, ...] = ()) -> None:
    """Log the outcomes a committed tick recorded (see the module docstring), and its notes."""
    if not log.isEnabledFor(logging.INFO):
        for t in told:
            if t.run.status in (RunStatus.FAILED, RunStatus.DEAD_LETTERED):
                log.warning("%s: %s", t.run.schedule_name, outcome_text(t.run, t.retry))
        return
    for note in notes:
        log.info("%s", note)
    skips: dict[str, list[Told]] = {}
    for t in told:
        if t.run.status is RunStatus.SKIPPED:
            skips.setdefault(t.run.schedule_id, []).append(t)
    for t in told:
        run = t.run
        if run.status is RunStatus.SKIPPED:
            same = skips[run.schedule_id]
            if len(same) > 1:
                if t is same[-1]:
                    log.info("%s: %d runs %s, the last: %s", run.schedule_name, len(same), SKIPPED, outcome_text(run))
                continue
        level = logging.WARNING if run.status in (RunStatus.FAILED, RunStatus.DEAD_LETTERED) else logging.INFO
        log.log(level, "%s: %s", run.schedule_name, outcome_text(run, t.retry))
