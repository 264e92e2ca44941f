"""How a task's code runs and ends: sync functions on a thread of their own; outcomes from results.

A thread cannot be cancelled at all, so the engine must know whether it is still running before
it records an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import TaskNotConfigured
from ..limits import NAME_CHARS, storable_text

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
