"""Pacing with the system clock: how long before prepared runs' time their claim begins, and the
garbage collector held back from the claim until its tasks have begun.

A FakeClock wakes exactly on time and needs none of this. With the system clock, runs prepared
ahead start on time only if their claim (read, plan, write: tens of milliseconds for a thousand
runs) is done by their instant, and nothing else comes between its commit and their tasks.
"""

from __future__ import annotations

import gc
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


@contextmanager
def collection_held(hold: bool) -> Iterator[None]:
    """While ``hold``, the interpreter's automatic garbage collection waits: for a claim begun ahead
    of its runs' time, until their tasks have taken their first step.

    With a thousand runs prepared and in flight a full collection takes 5-30 ms (measured on a
    shared two-core machine); one that falls into the claim or between its commit and the tasks
    makes every run of that instant late by as much. Held, it comes just after, while the tasks
    run. A process that turned collection off keeps it off.
    """
    if not hold or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
