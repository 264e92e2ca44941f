"""Pacing with the system clock: how long before prepared runs' time their claim begins, and the
garbage collector held back from the claim until its tasks have begun.

A FakeClock wakes exactly on time and needs none of this. With the system clock, runs prepared
ahead start on time only if their claim (read, plan, write: tens of milliseconds for a thousand
runs) is done by their instant, and nothing else comes between its commit and their tasks.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: A tick for prepared runs begins up to this long before their time, plans and writes as of that
#: time, and commits at it. How long before exactly, ``ClaimLead`` says; this cap bounds the write
#: lock held ahead (on SQLite the tick waits out the rest of its lead holding it).
CLAIM_LEAD = timedelta(milliseconds=200)

#: How many recent claims ``ClaimLead`` takes the slowest of.
CLAIM_SAMPLES = 5

#: How much slower than the slowest recent claim the next one is allowed to be. Measured on a
#: shared two-core machine (280 claims of a thousand runs, 2026-12-01): one claim in twenty took
#: more than 1.18 times the slowest of the five before it, one in fifty more than 1.47, the
#: slowest 2.1. A claim that outlasts its lead makes every run it starts late by the difference.
#: Where the slowest recent claim took more than half of CLAIM_LEAD (a thousand runs on a slow
#: machine), the cap decides and the margin is less.
CLAIM_MARGIN = 2.0

#: A claim's time per run until one is measured: on the slow side (a thousand runs' claim took
#: 40-160 ms on that machine).
FIRST_GUESS_PER_RUN = 100e-6


@dataclass(slots=True)
class ClaimLead:
    """How long before prepared runs' time their tick begins: what the slowest of the last few
    claims took a run, times the runs due, with a margin, up to CLAIM_LEAD.

    The tick waits out what is left of the lead holding its transaction open (on SQLite, the write
    lock), so the lead is kept to what the work needs and other writers (the command line, other
    workers) get in between.
    """

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=CLAIM_SAMPLES))
    """Seconds the last claims took per run."""

    @property
    def per_run(self) -> float:
        """Seconds a claim takes per run: the slowest of the recent ones (one claim may be quick)."""
        return max(self.recent, default=FIRST_GUESS_PER_RUN)

    def observe(self, busy: float, runs: int) -> None:
        """A tick that claimed ``runs`` prepared runs worked ``busy`` seconds (its wait not counted)."""
        if runs:
            self.recent.append(busy / runs)

    def ahead(self, runs: int) -> timedelta:
        return min(CLAIM_LEAD, timedelta(seconds=(0.001 + self.per_run * runs) * CLAIM_MARGIN))

    def instant(self, now: datetime, due: tuple[datetime | None, int]) -> datetime | None:
        """The time of the ``due`` prepared runs (their time, how many) if a tick begun ``now`` is
        theirs, planning and writing as of that time."""
        at, runs = due
        return at if at is not None and now < at <= now + self.ahead(runs) else None


#: A hold ends at the latest this long after it began (real seconds), whatever the claim is waiting
#: for (a locked database retried, an outage): past its instant a claim gains nothing from it.
HOLD_SECONDS = 0.5


class _Collector:
    """The process's holds on automatic collection, counted: engines in one process (tests, a host
    running two) each hold for their claims, and collection comes back when the last hold ends,
    only if a hold turned it off. A host that turns collection off or on during a hold races it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds = 0
        self._ours = False

    def hold(self) -> None:
        with self._lock:
            if self._holds == 0:
                self._ours = gc.isenabled()
                if self._ours:
                    gc.disable()
            self._holds += 1

    def release(self) -> None:
        with self._lock:
            self._holds -= 1
            if self._holds == 0 and self._ours:
                self._ours = False
                gc.enable()


_COLLECTOR = _Collector()


@contextmanager
def collection_held(loop: asyncio.AbstractEventLoop | None, seconds: float = HOLD_SECONDS) -> Iterator[None]:
    """The interpreter's automatic garbage collection waits (with a ``loop``; None: nothing held),
    for a claim begun ahead of its runs' time, until their tasks have taken their first step, or
    ``seconds`` have passed (a timer on ``loop``).

    With a thousand runs prepared and in flight a full collection takes 5-30 ms (measured on a
    shared two-core machine); one that falls into the claim or between its commit and the tasks
    makes every run of that instant late by as much. Held, it comes just after, while the tasks
    run. A task's first step is all of an async task that never awaits: it runs with collection
    held. A process that turned collection off keeps it off.
    """
    if loop is None:
        yield
        return
    released = False

    def release() -> None:  # on the loop's thread: at the timer or at the end of the block
        nonlocal released
        if not released:
            released = True
            _COLLECTOR.release()

    _COLLECTOR.hold()
    timer = loop.call_later(seconds, release)
    try:
        yield
    finally:
        timer.cancel()
        release()
