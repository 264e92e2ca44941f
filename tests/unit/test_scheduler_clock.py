"""FakeClock moves only when told and skips time on sleep; SystemClock gives aware UTC."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.scheduler import Clock, FakeClock, SystemClock

T0 = datetime(2027, 3, 13, tzinfo=UTC)


def test_fake_clock_advances_by_timedelta_or_seconds() -> None:
    clock = FakeClock(T0)
    assert clock.now() == T0
    clock.advance(timedelta(minutes=2))
    clock.advance(30)
    assert clock.now() == T0 + timedelta(minutes=2, seconds=30)


def test_fake_clock_sleep_moves_virtual_time_without_waiting() -> None:
    clock = FakeClock(T0)
    loop = asyncio.new_event_loop()
    try:
        started = loop.time()
        loop.run_until_complete(clock.sleep(7 * 86400))
        assert loop.time() - started < 1.0
    finally:
        loop.close()
    assert clock.now() == T0 + timedelta(days=7)


def test_fake_clock_refuses_naive_starts_and_going_back() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2027, 3, 13))
    clock = FakeClock(T0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_fake_clock_normalizes_to_utc() -> None:
    clock = FakeClock(datetime(2027, 3, 13, 13, 0, tzinfo=timezone(timedelta(hours=1))))
    assert clock.now() == datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
    assert clock.now().tzinfo is UTC


def test_system_clock_is_aware_utc_and_both_clocks_satisfy_the_protocol() -> None:
    now = SystemClock().now()
    assert now.tzinfo is UTC
    assert isinstance(SystemClock(), Clock) and isinstance(FakeClock(T0), Clock)
