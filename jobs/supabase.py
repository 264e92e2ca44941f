"""The optional Supabase step of the heartbeat: upsert this worker's row in ``actp_worker_heartbeats``.

Used only when ``SUPABASE_DB_URL`` (a PostgreSQL URL of the Supabase database) is set. The table is
the one the ACTP worker PRD defines (``worker_id`` unique; ``hostname``, ``os_version``,
``python_version``, ``status``, ``last_heartbeat``, ``system_info`` JSONB, among others) and which
the dashboard reads for worker liveness. A failure raises: the heartbeat run fails and is retried.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

#: Seconds to wait for the Supabase database to accept the connection.
CONNECT_TIMEOUT_SECONDS = 10

UPSERT_HEARTBEAT = text(
    """
    INSERT INTO actp_worker_heartbeats
        (worker_id, hostname, os_version, python_version, status, last_heartbeat, system_info)
    VALUES
        (:worker_id, :hostname, :os_version, :python_version, 'online', :last_heartbeat, CAST(:system_info AS JSONB))
    ON CONFLICT (worker_id) DO UPDATE SET
        hostname = EXCLUDED.hostname,
        os_version = EXCLUDED.os_version,
        python_version = EXCLUDED.python_version,
        status = EXCLUDED.status,
        last_heartbeat = EXCLUDED.last_heartbeat,
        system_info = EXCLUDED.system_info
    """
)


class SupabaseHeartbeatError(Exception):
    """The heartbeat could not be written to Supabase; the cause is chained. Check SUPABASE_DB_URL."""


def postgres_url(url: str) -> str:
    """A SQLAlchemy URL using psycopg 3 for a ``postgres://`` or ``postgresql://`` URL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def push_heartbeat(
    url: str,
    *,
    worker_id: str,
    hostname: str,
    os_version: str,
    python_version: str,
    at: datetime,
    system_info: dict[str, Any],
) -> None:
    """Insert or update this worker's heartbeat row (one short connection, one statement)."""
    engine = create_engine(
        postgres_url(url), poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                UPSERT_HEARTBEAT,
                {
                    "worker_id": worker_id,
                    "hostname": hostname,
                    "os_version": os_version,
                    "python_version": python_version,
                    "last_heartbeat": at,
                    "system_info": json.dumps(system_info),
                },
            )
    except SQLAlchemyError as exc:
        # The driver's message may quote the URL; keep only its first line and the error type.
        detail = str(getattr(exc, "orig", exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise SupabaseHeartbeatError(f"Supabase heartbeat failed: {type(exc).__name__}: {detail}") from exc
    finally:
        engine.dispose()
