"""The schedule store: schedules, runs and their records in SQLite or PostgreSQL, through dataset.

Every write is one transaction retried whole on a transient fault; every state change is a
conditional UPDATE checked by rowcount, never a read-modify-write. Rows are mapped to value
objects in ``rows`` and nowhere else. ``ScheduleStore`` is the rooms together; ``EngineStore``
says what the engine needs of it.
"""

from .connection import BATCH_MIN, DEFAULT_DB_PATH, LIMITS_CHECKED_KEY, NOTIFY_CHANNEL, default_url, normalize_url
from .events import EventRows
from .letters import DeadLetterRows
from .outbox import OutboxRows
from .proposals import ProposalRows
from .protocol import EngineStore
from .runs import Materialization, Materialized
from .state import StateRows


class ScheduleStore(DeadLetterRows, ProposalRows, OutboxRows, EventRows, StateRows):
    """Durable schedules and runs over ``dataset``: any SQLAlchemy URL, SQLite or PostgreSQL.

    ``ScheduleStore("sqlite:////abs/path/scheduler.db")`` or a plain path; the schema is created
    (or checked) on open. ``clock`` stamps created/updated times and is the default ``now`` of
    transitions; give the engine and the store the same clock. ``read_only=True`` opens an existing
    database for reading only: nothing is created, upgraded or written, and a missing database or
    schema is refused (DatabaseNotFound, SchemaMissing).
    """


__all__ = [
    "BATCH_MIN",
    "DEFAULT_DB_PATH",
    "EngineStore",
    "LIMITS_CHECKED_KEY",
    "Materialization",
    "Materialized",
    "NOTIFY_CHANNEL",
    "ScheduleStore",
    "default_url",
    "normalize_url",
]
