"""What the engine needs of a store: the narrow interface its rooms are written against.

``ScheduleStore`` satisfies it (a test and mypy check); the engine's loop, tick, execution,
reconciliation and breakers name only ``EngineStore``, so the store's other rooms (proposals,
dead-letter replays, reports for operators) can change without the engine noticing.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from ..clock import Clock
from ..definition import ScheduleDefinition
from ..enums import AlertStatus, RunStatus
from ..errors import SchedulerError
from ..records import Alert, InboxEvent, StoredReport
from ..scheduled_run import ScheduledRun
from .runs import Materialization, Materialized

T = TypeVar("T")


class EngineStore(Protocol):
    """The store as the engine uses it; every method is ``ScheduleStore``'s, documented there."""

    url: str
    dialect: str
    path: str | None
    origin: str
    clock: Clock

    # transactions and the file
    def atomic_kept(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``atomic`` for one long-lived thread (the engine's): its connection is kept between calls."""

    def check_identity(self) -> None:
        """SQLite: raise DatabaseReplaced if the file at the path is gone or is not the one opened."""

    def checkpoint(self) -> bool:
        """SQLite: copy the WAL back into the database now, without waiting for readers (PASSIVE)."""

    def defer_checkpoints(self) -> None:
        """SQLite: this store's connections no longer checkpoint the WAL when a commit makes it long."""

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after this store changes schedules or creates runs; returns an unsubscribe."""

    def subscribe_alerts(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after this store queues an alert; returns an unsubscribe."""

    def watch_transactions(self, began: Callable[[], None], ended: Callable[[], None]) -> Callable[[], None]:
        """Call ``began()`` inside each of this store's transactions, before its work (on SQLite it then holds the
        write lock), and ``ended()`` once it committed or rolled back, both on the transaction's thread; returns an
        unsubscribe.
        """

    # schedules and breakers
    def disable_out_of_bounds(self) -> None:
        """Disable the enabled schedules an earlier version stored with a value the limits now refuse (a sub-second
        interval, a name ending in a newline...), each with the reason, so that none of them stops the engine;
        fixing the field (``update``) and ``enable`` bring it back.
        """

    def due_schedules(self, now: datetime) -> builtins.list[ScheduleDefinition]:
        """Enabled time-based schedules whose breaker is not open and whose next occurrence is due or unset."""

    def get(self, name_or_id: str) -> ScheduleDefinition:
        """The schedule with this name (or id); ScheduleNotFound when there is none."""

    def list(
        self, *, enabled: bool | None = None, source: str | None = None, trigger_type: str | None = None
    ) -> builtins.list[ScheduleDefinition]:
        """Every schedule, by name, optionally filtered."""

    def count_schedules(self) -> int:
        """How many schedules there are (counted, none read)."""

    def lock_schedules(self, schedule_ids: Iterable[str]) -> None:
        """Take these schedules' turn locks until the transaction ends (PostgreSQL), so two workers deciding starts for
        the same schedule take turns.
        """

    def next_due(self, *, count_up_to: int = 16) -> tuple[datetime | None, int]:
        """The earliest ``next_run_at`` of an enabled schedule whose breaker is not open, and how many schedules share
        it (counted up to ``count_up_to``: one walk of the index, whatever the size).
        """

    def open_breakers(self) -> builtins.list[ScheduleDefinition]:
        """Schedules whose breaker is open."""

    def record_outcome(self, schedule_id: str, *, failed: bool) -> ScheduleDefinition | None:
        """Count a terminal failure (or reset the count on success) in one atomic UPDATE."""

    def reset_failures(self, schedule_ids: Iterable[str]) -> builtins.list[ScheduleDefinition]:
        """After successes: zero the failure counts of these schedules; return those whose breaker is not closed."""

    def forget_mapped(self) -> None:
        """Map every schedule row again on its next read (a write around the store draws no new version)."""

    def schedules_by_id(self, ids: Iterable[str]) -> dict[str, ScheduleDefinition]:
        """The schedules with these ids (missing ones are left out). A row is mapped once per version:
        while it is unchanged, every read gives the same object (the one ``materialize_many`` gave, if
        its last write was that of a definition this store handed out)."""

    def transition_breaker(
        self, name_or_schedule: str | ScheduleDefinition, trigger: str, *, now: datetime | None = None
    ) -> ScheduleDefinition:
        """Fire a breaker trigger (trip, probe, close, reopen, reset) on a schedule; persisted conditionally."""

    # runs
    def create_run(
        self,
        schedule: ScheduleDefinition,
        intended_run_at: datetime,
        *,
        occurrence_key: str | None = None,
        origin: str = "schedule",
        params: dict[str, Any] | None = None,
        catch_up: bool = False,
        coalesced_from: int = 1,
        reason: str | None = None,
    ) -> ScheduledRun | None:
        """Materialize a pending run; None when this occurrence already has a run (a no-op)."""

    def finish_many(
        self, items: Iterable[tuple[ScheduledRun, str, dict[str, Any]]], *, now: datetime | None = None
    ) -> builtins.list[ScheduledRun | SchedulerError]:
        """Record many finished runs (succeed with their outcome, fail, skip, cancel): ``transition_many``."""

    def materialize_many(
        self, plans: Iterable[Materialization], *, now: datetime | None = None
    ) -> builtins.list[Materialized | None]:
        """``materialize`` for many schedules in one transaction and a few statements: per plan, the
        runs created and the schedule as written, or None when another worker moved first (or, for a
        definition this store handed out, when its row was written since it was read)."""

    def next_lease_expiry(self, now: datetime, *, owner: str) -> datetime | None:
        """When the earliest lease held by another owner than ``owner`` lapses, if after ``now``: the moment its run
        may have to be taken over (its owner died).
        """

    def next_pending_at(self, now: datetime) -> datetime | None:
        """The earliest intended time of a pending run not yet due (a run prepared ahead of its time)."""

    def pending_due(self, now: datetime, *, fresh: Iterable[ScheduledRun] = ()) -> builtins.list[ScheduledRun]:
        """Pending runs due at ``now``, oldest first (``fresh``: created by this transaction, not read back)."""

    def renew_leases(self, run_ids: Iterable[str], *, owner: str, until: datetime, now: datetime | None = None) -> int:
        """Extend the lease of running runs held by ``owner``; returns how many were still held."""

    def running_counts(self, schedule_ids: Iterable[str]) -> dict[str, int]:
        """How many runs of each schedule are running, on any worker."""

    def runs(
        self,
        schedule: str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        *,
        limit: int | None = None,
        newest_first: bool = False,
        updated_since: datetime | None = None,
    ) -> builtins.list[ScheduledRun]:
        """Runs, oldest intended time first (or newest); ``schedule`` is a name or id, ``status`` one or
        several; ``updated_since``: only runs whose row changed at or after that instant."""

    def save_checkpoint(self, run_id: str, data: Any, *, owner: str | None = None) -> None:
        """Store a running run's checkpoint (JSON); only while it runs (and, if given, for its owner)."""

    def start_many(
        self,
        runs: Iterable[ScheduledRun],
        *,
        owner: str,
        lease_until: datetime,
        reasons: dict[str, str] | None = None,
        now: datetime | None = None,
        trigger: str = "start",
        schedules: dict[str, ScheduleDefinition] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> builtins.list[ScheduledRun]:
        """Fire ``trigger`` (``start``, or ``due`` with its guards) on many pending runs; returns the runs this call
        started, in the order given.
        """

    def transition_many(
        self,
        items: Iterable[tuple[ScheduledRun, str, dict[str, Any]]],
        *,
        now: datetime | None = None,
        schedules: dict[str, ScheduleDefinition] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> builtins.list[ScheduledRun | SchedulerError]:
        """Fire many ``(run, trigger, changes)`` in one transaction; each result is the new run or its error."""

    # the alert outbox
    def add_alert(self, kind: str, text: str, payload: dict[str, Any] | None = None) -> Alert:
        """Queue an alert in the outbox, in the outbox machine's first state (pending)."""

    def claim_alerts(
        self, *, now: datetime, lease: timedelta, limit: int = 50, include_undeliverable: bool = True
    ) -> builtins.list[Alert]:
        """Take up to ``limit`` deliverable alerts (pending, undeliverable, or a claim older than ``lease``)."""

    def mark_alerts(
        self, ids: Iterable[str], status: AlertStatus | str, *, error: str | None = None, now: datetime | None = None
    ) -> int:
        """Settle claimed alerts: ``sent`` (with the delivery time) or back to ``pending``/``undeliverable``."""

    # the event inbox
    def add_event(self, event: InboxEvent, *, hourly_quota: int | None = None) -> InboxEvent:
        """Write a pending event; the engines are told, as for a new run."""

    def consume_event(self, event_id: str, *, worker_id: str, now: datetime) -> bool:
        """Take a pending event for ``worker_id`` (pending -> consumed, conditionally); True if this call moved it."""

    def pending_events(self, *, limit: int) -> builtins.list[InboxEvent]:
        """Up to ``limit`` pending events, oldest first (locked until the transaction ends, on PostgreSQL)."""

    def record_event_runs(self, event_id: str, *, run_ids: Sequence[str], reason: str | None) -> None:
        """Record the runs a consumed event created and, if fewer than hoped, why."""

    # engine state and reports
    def get_state(self, key: str) -> dict[str, Any] | None:
        """An ``engine_state`` entry, or None."""

    def put_state(self, key: str, value: dict[str, Any]) -> None:
        """Set an ``engine_state`` entry (worker heartbeats, clean-shutdown markers)."""

    def save_report(
        self,
        *,
        worker_id: str,
        started_at: datetime,
        finished_at: datetime | None,
        report: dict[str, Any],
        dry_run: bool = False,
    ) -> StoredReport:
        """Persist a reconciliation report."""

    def update_report(self, report_id: str, *, finished_at: datetime | None, report: dict[str, Any]) -> None:
        """Bring a stored report up to date: a start writes it with each change it makes, and closes it
        (``finished_at``) at the end, so a start cut short leaves a report that matches the rows.
        """
