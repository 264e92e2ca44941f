"""Shared fixtures: a fake clock, a real SQLite store in a temporary directory, a schedule factory."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore, TriggerType
from agent.scheduler import cli as cli_module
from agent.scheduler.schema import TABLES
from agent.scheduler.store import BATCH_MIN

#: Property tests: bounded in examples, never in wall-clock time (a loaded machine is slow, not
#: wrong). Tests that touch a database (each example opens stores, writes, reads) take the
#: profile's count; a few pure ones name a larger count of their own. ``HYPOTHESIS_PROFILE=thorough``
#: runs every test without such a count with ten times as many examples.
settings.register_profile(
    "actp",
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", settings.get_profile("actp"), max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "actp"))

#: The fake clock's start in every test that does not choose its own.
T0 = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
#: Batch thresholds a suite runs its stores with: 1 sends every batch method through its
#: batch statements, the production value sends small batches one item at a time.
BATCH_THRESHOLDS = [pytest.param(1, id="batch_min=1"), pytest.param(BATCH_MIN, id=f"batch_min={BATCH_MIN}")]


@pytest.fixture(autouse=True)
def no_dotenv_of_the_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The command line reads ``./.env``: a developer's own (the README says to copy one) must not
    change what tests see, so it reads a file that is not there. A test of that reading points it back."""
    monkeypatch.setattr(cli_module, "ENV_FILE", str(tmp_path_factory.getbasetemp() / "no-such.env"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "scheduler.db"


@pytest.fixture
def batch_min() -> int:
    """The stores' batch threshold; a module overrides it with BATCH_THRESHOLDS to run both paths."""
    return BATCH_MIN


@pytest.fixture
def store(db_path: Path, clock: FakeClock, batch_min: int) -> Iterator[ScheduleStore]:
    s = ScheduleStore(f"sqlite:///{db_path}", clock=clock, batch_min=batch_min)
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


def postgres_url() -> str:
    """The test PostgreSQL server's URL: required in CI, a skip with the reason elsewhere."""
    url = os.environ.get("ACTP_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail("ACTP_TEST_POSTGRES_URL is not set: .ci/run must start PostgreSQL (scripts/test-postgres.sh)")
    pytest.skip('no PostgreSQL for tests: run eval "$(scripts/test-postgres.sh start)" first')


@functools.cache
def _admin_engine(url: str) -> Any:
    """One connection pool per test database for emptying it, kept for the whole session."""
    from sqlalchemy import create_engine

    return create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)


def clean_postgres(url: str) -> None:
    """Empty the scheduler's tables (and the telemetry table) in the test database."""
    from sqlalchemy import inspect, text

    with _admin_engine(url).begin() as conn:
        present = set(inspect(conn).get_table_names())
        tables = [t for t in (*TABLES, "actp_scheduled_runs") if t in present]
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables)))


@pytest.fixture
def pg_url() -> str:
    url = postgres_url()
    clean_postgres(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, db_path: Path) -> str:
    """Each store test runs on a SQLite file and on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{db_path}"
    url = postgres_url()
    clean_postgres(url)
    return url
