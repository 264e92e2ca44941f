"""The store's tables, columns and indexes in one place (SQLAlchemy Core, created through dataset)."""

from __future__ import annotations

import secrets

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB

#: Bumped when a table or column changes; stored in ``meta`` under ``schema_version``.
SCHEMA_VERSION = 5


def new_version() -> int:
    """A schedule row's version: a random token, drawn again by every write (never reused, so a
    token a rolled-back transaction drew matches no row, ever)."""
    return secrets.randbits(62)


_JSON = JSON().with_variant(JSONB(), "postgresql")
ID = 64
NAME = 128
ENUM = 32

metadata = MetaData()


def _stamps() -> list[Column[object]]:
    return [Column("created_at", DateTime), Column("updated_at", DateTime)]


meta = Table("meta", metadata, Column("key", String(NAME), primary_key=True), Column("value", Text))

#: The open breakers, which every full scan looks for, without reading every row (see ADDED_INDEXES).
_BREAKER_INDEX = Index("ix_schedules_breaker", "breaker_state", "name")

schedules = Table(
    "schedules",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(NAME), nullable=False, unique=True),
    Column("trigger_type", String(ENUM), nullable=False),
    Column("expression", String(256), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("target", String(NAME), nullable=False),
    Column("params", _JSON, nullable=False),
    Column("description", Text, nullable=False),
    Column("missed_run_policy", String(ENUM), nullable=False),
    Column("concurrency_policy", String(ENUM), nullable=False),
    Column("shutdown_policy", String(ENUM), nullable=False),
    Column("risk_tier", String(ENUM), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("max_retries", Integer, nullable=False),
    Column("retry_backoff_s", Float, nullable=False),
    Column("timeout_s", Float),
    Column("grace_s", Float, nullable=False),
    Column("catch_up_limit", Integer, nullable=False),
    Column("shutdown_timeout_s", Float, nullable=False),
    Column("breaker_threshold", Integer, nullable=False),
    Column("breaker_cooldown_s", Float),
    Column("source", String(ENUM), nullable=False),
    Column("proposal_id", String(ID)),
    Column("next_run_at", DateTime),
    Column("last_run_at", DateTime),
    Column("anchor_at", DateTime),
    Column("breaker_state", String(ENUM), nullable=False),
    Column("consecutive_failures", Integer, nullable=False),
    Column("breaker_opened_at", DateTime),
    Column("disabled_reason", Text),
    *_stamps(),
    # Version 5: drawn again by every INSERT and UPDATE made through SQLAlchemy (``default`` and
    # ``onupdate``), unless the statement sets it: a row whose version is unchanged is unchanged.
    Column("version", BigInteger, nullable=False, default=new_version, onupdate=new_version, server_default="0"),
    Index("ix_schedules_due", "enabled", "next_run_at"),
    _BREAKER_INDEX,
)

scheduled_runs = Table(
    "scheduled_runs",
    metadata,
    Column("run_id", String(ID), primary_key=True),
    Column("schedule_id", String(ID), nullable=False),
    Column("schedule_name", String(NAME), nullable=False),
    Column("intended_run_at", DateTime, nullable=False),
    Column("occurrence_key", String(NAME), nullable=False),
    Column("status", String(ENUM), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("origin", String(ENUM), nullable=False),
    Column("params", _JSON, nullable=False),
    Column("catch_up", Boolean, nullable=False),
    Column("coalesced_from", Integer, nullable=False),
    Column("started_at", DateTime),
    Column("completed_at", DateTime),
    Column("outcome", Text),
    Column("error_type", String(NAME)),
    Column("error", Text),
    Column("error_traceback", Text),
    Column("reason", Text),
    Column("checkpoint", _JSON),
    Column("owner", String(NAME)),
    Column("lease_expires_at", DateTime),
    Column("heartbeat_at", DateTime),
    # Version 2: stored ahead of its time and never started yet; how many times it started.
    Column("prepared", Boolean, nullable=False, server_default=false()),
    Column("starts", Integer, nullable=False, server_default="0"),
    *_stamps(),
    # Materializing the same occurrence twice must be a no-op: this index is what makes it one.
    Index("uq_runs_occurrence", "schedule_id", "occurrence_key", unique=True),
    Index("ix_runs_status_intended", "status", "intended_run_at"),
    Index("ix_runs_schedule_intended", "schedule_id", "intended_run_at"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("run_id", String(ID), nullable=False),
    Column("schedule_id", String(ID), nullable=False),
    Column("schedule_name", String(NAME), nullable=False),
    Column("intended_run_at", DateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error_type", String(NAME)),
    Column("error", Text),
    Column("error_traceback", Text),
    Column("params", _JSON, nullable=False),
    Column("checkpoint", _JSON),
    Column("replayed_at", DateTime),
    Column("replayed_by", String(NAME)),
    *_stamps(),
    Index("ix_dead_letters_run", "run_id"),
    Index("ix_dead_letters_created", "created_at"),
)

proposals = Table(
    "proposals",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(NAME), nullable=False),
    Column("status", String(ENUM), nullable=False),
    Column("proposed_by", String(NAME), nullable=False),
    Column("payload", _JSON, nullable=False),
    Column("report", _JSON),
    Column("decided_by", String(NAME)),
    # Version 3: the door a decision came through, and when it was made.
    Column("decided_via", String(ENUM)),
    Column("decided_at", DateTime),
    Column("decision_reason", Text),
    Column("schedule_id", String(ID)),
    Column("expires_at", DateTime),
    *_stamps(),
    Index("ix_proposals_status", "status"),
)

reconciliation_reports = Table(
    "reconciliation_reports",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("worker_id", String(NAME), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("dry_run", Boolean, nullable=False),
    Column("report", _JSON, nullable=False),
    Index("ix_reports_started", "started_at"),
)

alerts_outbox = Table(
    "alerts_outbox",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("kind", String(ENUM), nullable=False),
    Column("text", Text, nullable=False),
    Column("payload", _JSON, nullable=False),
    Column("status", String(ENUM), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("delivered_at", DateTime),
    *_stamps(),
    Index("ix_alerts_status", "status", "created_at"),
)

# Version 4: events from outside (the command line, the registry, Telegram) waiting for a worker.
# The payload is kept as the compact JSON text it was checked as, byte for byte.
event_inbox = Table(
    "event_inbox",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(NAME), nullable=False),
    Column("payload", Text, nullable=False),
    Column("emitted_at", DateTime, nullable=False),
    Column("emitted_by", String(NAME), nullable=False),
    Column("emitted_kind", String(ENUM), nullable=False),
    Column("status", String(ENUM), nullable=False),
    Column("consumed_at", DateTime),
    Column("consumed_by", String(NAME)),
    Column("runs", Integer),
    Column("run_ids", Text),
    Column("reason", Text),
    Index("ix_event_inbox_status", "status", "emitted_at"),
    Index("ix_event_inbox_emitter", "emitted_by", "emitted_at"),
)

engine_state = Table(
    "engine_state",
    metadata,
    Column("key", String(NAME), primary_key=True),
    Column("value", _JSON, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

#: Every table the store creates, by name.
TABLES: dict[str, Table] = dict(metadata.tables)

#: What moves a database of an older schema version to the next one, by the version it starts from.
#: Each statement is one that both SQLite and PostgreSQL accept.
UPGRADES: dict[int, list[str]] = {
    1: [
        "ALTER TABLE scheduled_runs ADD COLUMN prepared BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE scheduled_runs ADD COLUMN starts INTEGER NOT NULL DEFAULT 0",
        # Runs of version 1 that ever started (start stamps heartbeat_at; nothing clears it), and
        # those it prepared ahead of their time (stored before it, never started).
        "UPDATE scheduled_runs SET starts = attempt WHERE heartbeat_at IS NOT NULL",
        "UPDATE scheduled_runs SET prepared = TRUE WHERE status = 'pending' AND heartbeat_at IS NULL"
        " AND origin = 'schedule' AND created_at < intended_run_at",
    ],
    2: [
        "ALTER TABLE proposals ADD COLUMN decided_via VARCHAR(32)",
        "ALTER TABLE proposals ADD COLUMN decided_at TIMESTAMP",
        # Decisions of version 2: the policy's are known; a person's door was not recorded.
        "UPDATE proposals SET decided_via = 'policy' WHERE decided_by = 'policy'",
        "UPDATE proposals SET decided_at = updated_at WHERE decided_by IS NOT NULL",
    ],
    # The inbox is a new table; ``create_all`` (which runs before the upgrades) may have made it already.
    3: [
        "CREATE TABLE IF NOT EXISTS event_inbox (id VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(128) NOT NULL,"
        " payload TEXT NOT NULL, emitted_at TIMESTAMP NOT NULL, emitted_by VARCHAR(128) NOT NULL,"
        " emitted_kind VARCHAR(32) NOT NULL, status VARCHAR(32) NOT NULL, consumed_at TIMESTAMP,"
        " consumed_by VARCHAR(128), runs INTEGER,"
        " run_ids TEXT, reason TEXT)",
        "CREATE INDEX IF NOT EXISTS ix_event_inbox_status ON event_inbox (status, emitted_at)",
        "CREATE INDEX IF NOT EXISTS ix_event_inbox_emitter ON event_inbox (emitted_by, emitted_at)",
    ],
    # Existing rows start at version 0; every write from now on draws a new one.
    4: ["ALTER TABLE schedules ADD COLUMN version BIGINT NOT NULL DEFAULT 0"],
}

#: Indexes added to a table after its schema version: a writing store creates one its database lacks
#: when it opens it. An index changes no row and no statement's result, so code of the same schema
#: version with or without it reads and writes the same database: no version is drawn for it, and no
#: worker or command line of that version is locked out.
ADDED_INDEXES: tuple[Index, ...] = (_BREAKER_INDEX,)
