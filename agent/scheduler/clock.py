"""Time as a dependency: the Clock protocol, the real SystemClock and a FakeClock for tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Where the scheduler reads the time and waits for it."""

    def now(self) -> datetime:
        """The current instant, timezone-aware in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real wall clock and the event loop's sleep; the only place that reads ``datetime.now``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told: ``advance()``, or ``sleep()`` which skips time at once.

    Simulated days run in milliseconds; ``sleep`` still yields to the event loop once so
    other tasks make progress.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock start must be timezone-aware, e.g. datetime(..., tzinfo=UTC)")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move time forward by ``delta`` (a timedelta or seconds) and return the new instant."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError(f"FakeClock cannot go backwards (delta={step})")
        self._now += step
        return self._now

    def set(self, instant: datetime) -> None:
        """Jump to ``instant`` (aware, not earlier than now)."""
        if instant.tzinfo is None:
            raise ValueError("FakeClock.set needs a timezone-aware instant")
        self.advance(instant.astimezone(UTC) - self._now)

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
        await asyncio.sleep(0)
