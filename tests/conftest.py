"""Shared fixtures: a fake clock, a real SQLite store in a temporary directory, a schedule factory."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore, TriggerType

#: The fake clock's start in every test that does not choose its own.
T0 = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "scheduler.db"


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> Iterator[ScheduleStore]:
    s = ScheduleStore(f"sqlite:///{db_path}", clock=clock)
    yield s
    s.close()


@pytest.fixture
def make_schedule() -> Callable[..., ScheduleDefinition]:
    def make(name: str = "sweep", **overrides: Any) -> ScheduleDefinition:
        fields: dict[str, Any] = {
            "name": name,
            "trigger_type": TriggerType.INTERVAL,
            "expression": "5m",
            "target": "sweep",
        }
        fields.update(overrides)
        return ScheduleDefinition(**fields)

    return make


def run_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an ``async def`` test on a fresh event loop (fixtures still injected by name)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
