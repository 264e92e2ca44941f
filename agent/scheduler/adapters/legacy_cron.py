"""Legacy cron edge: the ``CronJob`` table entries become ScheduleDefinitions, migrated once, in one transaction.

``cron_definitions.py`` (the host's legacy table) lists one :class:`CronJob` per job. Each entry's
``kind`` picks a :class:`KindPolicy` (missed runs, overlap, retries, timeout, grace...) and an entry
may override any of it. :func:`migrate` stores the table as ``source="legacy_cron"`` schedules with
the stable id ``legacy_<name>``; it is idempotent and never overwrites what an operator changed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..definition import ScheduleDefinition
from ..enums import ConcurrencyPolicy, MissedRunPolicy, RiskTier, ScheduleSource, ShutdownPolicy, TriggerType
from ..errors import InvalidSchedule, SchedulerError
from ..settings import Settings, load_settings
from ..store import ScheduleStore
from ..tasks import TaskRegistry
from ..triggers import parse_timezone

log = logging.getLogger(__name__)

#: Version of this migration, stored in ``meta`` under :data:`META_VERSION`.
MIGRATION_VERSION = 1
#: ``meta`` key holding the migration version.
META_VERSION = "legacy_cron.version"
#: ``meta`` key holding the JSON list of every legacy name ever migrated, so an operator's removal sticks.
META_MIGRATED = "legacy_cron.migrated"
#: Prefix of a migrated schedule's id: ``legacy_<name>``.
ID_PREFIX = "legacy_"
#: Tasks the engine provides itself; a table entry may target them without registering anything.
BUILTIN_TASKS = frozenset({"scheduler.reconcile"})
#: Where the system's zone is linked from, on Linux and macOS alike.
LOCALTIME = Path("/etc/localtime")
TIMEZONE_HELP = 'an IANA timezone name such as "Europe/Berlin" (unset: TZ, then /etc/localtime, then UTC)'


class JobKind(StrEnum):
    """What kind of work a legacy job is; its policies derive from it (see :data:`KIND_POLICIES`)."""

    #: A fast cloud queue poller (seconds apart): a missed poll is worthless, the next one does the work.
    POLLER = "poller"
    #: Frequent local housekeeping (heartbeat, cleanup, checks): only the current state matters.
    INFRASTRUCTURE = "infrastructure"
    #: Daily local maintenance (log rotation, database upkeep): run once after a missed night.
    MAINTENANCE = "maintenance"
    #: Business syncs every few minutes to hours: one late run catches up the state.
    PERIODIC = "periodic"
    #: Daily business jobs and reports: a missed day runs once when the worker is back.
    DAILY = "daily"
    #: Weekly business jobs and reports: a missed week runs once when the worker is back.
    WEEKLY = "weekly"


@dataclass(frozen=True, slots=True, kw_only=True)
class KindPolicy:
    """The policies a kind of legacy job gets unless its entry overrides them."""

    missed_run_policy: MissedRunPolicy
    concurrency_policy: ConcurrencyPolicy
    shutdown_policy: ShutdownPolicy
    max_retries: int
    retry_backoff: timedelta
    timeout: timedelta
    """A run still running after this long fails with reason timeout."""
    grace: timedelta
    """How late a run may start before it counts as missed."""
    shutdown_timeout: timedelta
    breaker_cooldown: timedelta
    """An open breaker lets one trial run through after this long."""
    risk_tier: RiskTier


_S = timedelta(seconds=1)
_M = timedelta(minutes=1)
_H = timedelta(hours=1)

#: The policy of each kind. Pollers skip missed runs and forbid overlap (the next poll is seconds
#: away); daily and weekly jobs catch up once (a report or sync missed while the laptop slept runs
#: when it wakes, once). Timeouts are a few times the longest expected run; every kind forbids overlap.
KIND_POLICIES: Mapping[JobKind, KindPolicy] = {
    JobKind.POLLER: KindPolicy(
        missed_run_policy=MissedRunPolicy.SKIP,
        concurrency_policy=ConcurrencyPolicy.FORBID,
        shutdown_policy=ShutdownPolicy.GRACEFUL_FINISH,
        max_retries=1,
        retry_backoff=5 * _S,
        timeout=60 * _S,
        grace=10 * _S,
        shutdown_timeout=15 * _S,
        breaker_cooldown=5 * _M,
        risk_tier=RiskTier.LOW,
    ),
    JobKind.INFRASTRUCTURE: KindPolicy(
        missed_run_policy=MissedRunPolicy.SKIP,
        concurrency_policy=ConcurrencyPolicy.FORBID,
        shutdown_policy=ShutdownPolicy.GRACEFUL_FINISH,
        max_retries=1,
        retry_backoff=30 * _S,
        timeout=5 * _M,
        grace=60 * _S,
        shutdown_timeout=30 * _S,
        breaker_cooldown=15 * _M,
        risk_tier=RiskTier.LOW,
    ),
    JobKind.MAINTENANCE: KindPolicy(
        missed_run_policy=MissedRunPolicy.CATCH_UP_ONCE,
        concurrency_policy=ConcurrencyPolicy.FORBID,
        shutdown_policy=ShutdownPolicy.GRACEFUL_FINISH,
        max_retries=2,
        retry_backoff=5 * _M,
        timeout=30 * _M,
        grace=15 * _M,
        shutdown_timeout=30 * _S,
        breaker_cooldown=1 * _H,
        risk_tier=RiskTier.LOW,
    ),
    JobKind.PERIODIC: KindPolicy(
        missed_run_policy=MissedRunPolicy.CATCH_UP_ONCE,
        concurrency_policy=ConcurrencyPolicy.FORBID,
        shutdown_policy=ShutdownPolicy.GRACEFUL_FINISH,
        max_retries=2,
        retry_backoff=60 * _S,
        timeout=15 * _M,
        grace=5 * _M,
        shutdown_timeout=30 * _S,
        breaker_cooldown=30 * _M,
        risk_tier=RiskTier.MEDIUM,
    ),
    JobKind.DAILY: KindPolicy(
        missed_run_policy=MissedRunPolicy.CATCH_UP_ONCE,
        concurrency_policy=ConcurrencyPolicy.FORBID,
        shutdown_policy=ShutdownPolicy.GRACEFUL_FINISH,
        max_retries=3,
        retry_backoff=2 * _M,
        timeout=30 * _M,
        grace=15 * _M,
        shutdown_timeout=30 * _S,
        breaker_cooldown=1 * _H,
        risk_tier=RiskTier.MEDIUM,
    ),
    JobKind.WEEKLY: KindPolicy(
        missed_run_policy=MissedRunPolicy.CATCH_UP_ONCE,
        concurrency_policy=ConcurrencyPolicy.FORBID,
        shutdown_policy=ShutdownPolicy.GRACEFUL_FINISH,
        max_retries=3,
        retry_backoff=5 * _M,
        timeout=1 * _H,
        grace=15 * _M,
        shutdown_timeout=30 * _S,
        breaker_cooldown=1 * _H,
        risk_tier=RiskTier.MEDIUM,
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CronJob:
    """One entry of the legacy table: a job, its cadence, the task it calls, and what it needs.

    Exactly one of ``cron`` and ``interval_seconds`` is set. Fields left None take the value of the
    entry's ``kind`` (:data:`KIND_POLICIES`). Nothing is checked here: :func:`to_definition` checks
    every field and names the entry in its error, so one bad entry cannot break importing the table.
    """

    name: str
    """The schedule's name (unique in the table)."""
    kind: JobKind
    """What kind of job it is; decides the policies it does not set itself."""
    task: str
    """The registered task each run calls."""
    description: str
    """What the job does, in words."""
    cron: str | None = None
    """A cron expression read in the worker's timezone."""
    interval_seconds: int | None = None
    """Or: every this many seconds of real time."""
    trigger_type: TriggerType | None = None
    """None: calendar for ``cron``, interval for ``interval_seconds``; ``reconciliation`` for a sweeper."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Handed to the task as ``RunContext.params`` (for the HTTP task: service, method, path)."""
    missed_run_policy: MissedRunPolicy | None = None
    concurrency_policy: ConcurrencyPolicy | None = None
    max_retries: int | None = None
    timeout_seconds: float | None = None
    risk_tier: RiskTier | None = None


class LegacyCronError(SchedulerError):
    """An entry of the legacy cron table is invalid; nothing was migrated.

    Fix the entry named in ``job`` in ``cron_definitions.py`` (``field``, ``value`` and ``allowed``
    say what is wrong, as in InvalidSchedule) and start again.
    """

    def __init__(self, job: str, field: str, value: Any, allowed: str) -> None:
        self.job = job
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(
            f"legacy cron entry {job!r}: invalid {field}={value!r}: {allowed}; fix it in cron_definitions.py "
            "(nothing was migrated)"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationResult:
    """What one migration did, by schedule name."""

    added: tuple[str, ...]
    """Entries stored by this migration."""
    present: tuple[str, ...]
    """Entries already stored by an earlier migration (left exactly as they are)."""
    retired: tuple[str, ...] = ()
    """Entries migrated earlier and since removed by an operator: not added again."""
    conflicts: tuple[str, ...] = ()
    """Entries whose name is taken by a schedule that is not theirs, or whose name or id another
    schedule's id or name would answer to: not added."""
    version: int = MIGRATION_VERSION

    def summary(self) -> str:
        """One line: ``added N, already present M`` and, when there are any, the retired and conflicting."""
        text = f"added {len(self.added)}, already present {len(self.present)}"
        if self.retired:
            text += f", removed by an operator and not re-added {len(self.retired)} ({', '.join(self.retired)})"
        if self.conflicts:
            text += f", name or id taken by another schedule {len(self.conflicts)} ({', '.join(self.conflicts)})"
        return text


def legacy_id(name: str) -> str:
    """The stable schedule id of legacy entry ``name``."""
    return ID_PREFIX + name


def worker_timezone(
    environ: Mapping[str, str] | None = None, *, settings: Settings | None = None, localtime: Path = LOCALTIME
) -> str:
    """The worker's IANA timezone: ``ACTP_TIMEZONE``, else ``TZ``, else /etc/localtime's zoneinfo link, else UTC.

    A set ``ACTP_TIMEZONE`` that is not an IANA name raises InvalidSchedule naming it; a ``TZ`` that
    is not one (a POSIX rule such as ``EST5EDT,M3.2.0,M11.1.0``) is passed over. The variables come
    from ``environ``, else from ``settings``, else from the settings read now.
    """
    env = environ if environ is not None else _zone_variables(settings)
    explicit = env.get("ACTP_TIMEZONE", "").strip()
    if explicit:
        if not _is_zone(explicit):
            raise InvalidSchedule("ACTP_TIMEZONE", explicit, TIMEZONE_HELP)
        return explicit
    tz = env.get("TZ", "").strip().removeprefix(":")
    for candidate in (tz, _zone_from_path(tz)):
        if candidate and _is_zone(candidate):
            return candidate
    try:
        linked = os.readlink(localtime)
    except OSError:
        return "UTC"
    # One level first: a zone file may itself be a link to another name (macOS, some distros).
    for target in (linked, os.path.realpath(localtime)):
        name = _zone_from_path(target)
        if name and _is_zone(name):
            return name
    return "UTC"


def _zone_variables(settings: Settings | None) -> dict[str, str]:
    # TZ is read raw here: a POSIX rule in it is passed over, not refused.
    if settings is None:
        settings = load_settings(only=("ACTP_TIMEZONE", "TZ"))
    return {"ACTP_TIMEZONE": settings.timezone or "", "TZ": settings.tz or ""}


def _zone_from_path(path: str) -> str:
    """``America/New_York`` from ``/usr/share/zoneinfo/America/New_York``; "" without a zoneinfo part."""
    marker = "zoneinfo/"
    return path.rsplit(marker, 1)[1] if marker in path else ""


def _is_zone(name: str) -> bool:
    try:
        parse_timezone(name)
    except InvalidSchedule:
        return False
    return True


def to_definition(job: CronJob, *, timezone: str) -> ScheduleDefinition:
    """The schedule of one legacy entry, read in ``timezone``; any bad field raises LegacyCronError naming it."""
    name = job.name if isinstance(job.name, str) else repr(job.name)
    try:
        kind = JobKind(job.kind)
    except ValueError:
        raise LegacyCronError(name, "kind", job.kind, "one of: " + ", ".join(k.value for k in JobKind)) from None
    if (job.cron is None) == (job.interval_seconds is None):
        raise LegacyCronError(
            name, "cron/interval_seconds", (job.cron, job.interval_seconds), "exactly one of cron and interval_seconds"
        )
    policy = KIND_POLICIES[kind]
    if job.cron is not None:
        trigger_type = job.trigger_type or TriggerType.CALENDAR
        expression: Any = job.cron
    else:
        trigger_type = job.trigger_type or TriggerType.INTERVAL
        seconds = job.interval_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise LegacyCronError(name, "interval_seconds", seconds, "a whole number of seconds, 1 or more")
        expression = f"{seconds}s"
    try:
        return ScheduleDefinition(
            id=legacy_id(name),
            name=job.name,
            source=ScheduleSource.LEGACY_CRON,
            trigger_type=trigger_type,
            expression=expression,
            timezone=timezone if trigger_type is TriggerType.CALENDAR else "UTC",
            target=job.task,
            params=dict(job.params),
            description=job.description,
            missed_run_policy=job.missed_run_policy or policy.missed_run_policy,
            concurrency_policy=job.concurrency_policy or policy.concurrency_policy,
            shutdown_policy=policy.shutdown_policy,
            risk_tier=job.risk_tier or policy.risk_tier,
            max_retries=policy.max_retries if job.max_retries is None else job.max_retries,
            retry_backoff=policy.retry_backoff,
            timeout=policy.timeout if job.timeout_seconds is None else _seconds(name, job.timeout_seconds),
            grace=policy.grace,
            shutdown_timeout=policy.shutdown_timeout,
            breaker_cooldown=policy.breaker_cooldown,
        )
    except InvalidSchedule as exc:
        raise LegacyCronError(name, exc.field, exc.value, exc.allowed) from exc


def _seconds(job: str, value: object) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise LegacyCronError(job, "timeout_seconds", value, "a number of seconds above 0, or None for the kind's")
    return timedelta(seconds=value)


def to_definitions(
    table: Sequence[CronJob], *, timezone: str, tasks: TaskRegistry | None = None
) -> list[ScheduleDefinition]:
    """Every entry's schedule; the first bad entry (or a duplicate name, or an unknown task) raises LegacyCronError."""
    definitions: list[ScheduleDefinition] = []
    seen: set[str] = set()
    for job in table:
        definition = to_definition(job, timezone=timezone)
        if definition.name in seen:
            raise LegacyCronError(definition.name, "name", definition.name, "a name used by one entry only")
        seen.add(definition.name)
        if tasks is not None and definition.target not in tasks and definition.target not in BUILTIN_TASKS:
            known = ", ".join(tasks.names()) or "(none)"
            raise LegacyCronError(definition.name, "task", definition.target, f"a registered task: {known}")
        definitions.append(definition)
    return definitions


def migrate(
    store: ScheduleStore,
    table: Sequence[CronJob],
    *,
    timezone: str | None = None,
    tasks: TaskRegistry | None = None,
) -> MigrationResult:
    """Store the legacy table as schedules, in ONE transaction; safe to run on every start.

    Entries already stored (by their id ``legacy_<name>``) are left exactly as they are, whatever
    an operator changed (disabled, re-timed, renamed); entries new in the table are added; entries
    an operator removed stay removed. The migration version and the names migrated so far are
    written to ``meta`` in the same transaction. Any bad entry raises LegacyCronError before
    anything is written. ``timezone`` defaults to :func:`worker_timezone`; with ``tasks`` every
    entry's task must be registered.
    """
    zone = timezone or worker_timezone()
    definitions = to_definitions(table, timezone=zone, tasks=tasks)
    result: MigrationResult = store.atomic(_migrate_in_transaction, store, definitions)
    log.debug("legacy cron table (%d entries, timezone %s): %s", len(definitions), zone, result.summary())
    return result


def _migrate_in_transaction(store: ScheduleStore, definitions: list[ScheduleDefinition]) -> MigrationResult:
    migrated = set(json.loads(store.meta_get(META_MIGRATED) or "[]"))
    existing = store.list()
    ids = {s.id for s in existing}
    retired = [d.name for d in definitions if d.name in migrated and d.id not in ids]
    wanted = [d for d in definitions if d.name not in retired]
    added = {d.name for d in store.add_many(wanted, skip_existing=True)}
    # Read again: another worker migrating at the same moment may have committed while our inserts
    # waited for its lock (they then did nothing); what it stored counts as present, not lost.
    existing = store.list()
    ids |= {s.id for s in existing}
    migrated |= set(json.loads(store.meta_get(META_MIGRATED) or "[]"))
    present = [d.name for d in wanted if d.name not in added and d.id in ids]
    # Not added and not present: its name is taken, or it would cross another schedule's id or name.
    conflicts = [d.name for d in wanted if d.name not in added and d.id not in ids]
    store.meta_set(META_MIGRATED, json.dumps(sorted(migrated | added | set(present))))
    stored_version = int(store.meta_get(META_VERSION) or 0)
    store.meta_set(META_VERSION, str(max(stored_version, MIGRATION_VERSION)))
    return MigrationResult(
        added=tuple(d.name for d in wanted if d.name in added),
        present=tuple(present),
        retired=tuple(retired),
        conflicts=tuple(conflicts),
    )
