"""Schedules: definitions, their breakers and failure counts, what is due, turn locks."""

from __future__ import annotations

import builtins
import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, DateTime, and_, bindparam, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from .. import limits, schema
from ..definition import TIME_BASED, ScheduleDefinition
from ..enums import BreakerState, TriggerType
from ..errors import DuplicateSchedule, InvalidSchedule, ScheduleNotFound, StaleBreaker
from ..machines.binding import Transition
from ..machines.breaker import FAILURE_COUNT, fire_breaker, success_effects
from ..policies.missed_run import fired_by
from .connection import CLAIM_CHUNK, LIMITS_CHECKED, LIMITS_CHECKED_KEY, StoreCore, execute
from .rows import SPAN_COLUMNS, from_db, lookup_key, schedule_from, schedule_row, to_db

log = logging.getLogger(__name__)

#: PostgreSQL advisory lock namespace (the first key) of the schedules' turn locks: "ACTP".
TURN_LOCK_NAMESPACE = 0x41435450


#: Schedule fields that only the breaker machine or the store itself may change.
GUARDED_SCHEDULE_FIELDS = frozenset(
    {"id", "breaker_state", "consecutive_failures", "breaker_opened_at", "created_at", "updated_at"}
)


def turn_key(schedule_id: str) -> int:
    """A schedule's turn lock: a stable signed 32-bit hash of its id (a collision only makes two share turns)."""
    return int.from_bytes(hashlib.blake2b(schedule_id.encode(), digest_size=4).digest(), "big", signed=True)


class ScheduleRows(StoreCore):
    """Schedules: definitions, their breakers and failure counts, what is due, turn locks.

    A row is mapped to a definition once per version: ``due_schedules`` and ``schedules_by_id``
    read the versions of the rows they want, and only the rows whose version changed since they
    were last mapped (every write draws a new one, see ``schema.new_version``). The engine reads
    the same thousand rows every second; it maps them again only when they change.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mapped: dict[str, tuple[int, ScheduleDefinition]] = {}
        """Schedule id -> (row version, the definition mapped from that version of the row)."""

    def forget_mapped(self) -> None:
        """Map every row again on its next read: a write made around the store (raw SQL) draws no new
        version, and is seen from then on. The engine does this on its safety-net scans."""
        self._mapped = {}

    def _definitions(self, conn: Connection, keyed: Iterable[tuple[str, int]]) -> dict[str, ScheduleDefinition]:
        """The definitions of these ``(id, version)`` rows, by id: the one mapped from that very version
        of the row if there is one, else the row read and mapped now (and kept for next time)."""
        mapped = self._mapped
        out: dict[str, ScheduleDefinition] = {}
        stale: builtins.list[str] = []
        for sid, version in keyed:
            hit = mapped.get(sid)
            if hit is not None and hit[0] == version:
                out[sid] = hit[1]
            else:
                stale.append(sid)
        s = schema.schedules
        stmt = self._prepared("schedules_by_id", lambda: select(s).where(s.c.id.in_(bindparam("ids", expanding=True))))
        for k in range(0, len(stale), CLAIM_CHUNK):
            for row in conn.execute(stmt, {"ids": stale[k : k + CLAIM_CHUNK]}).mappings():
                definition = schedule_from(row)
                mapped[definition.id] = (row["version"], definition)
                out[definition.id] = definition
        return out

    def _mapped_version(self, definition: ScheduleDefinition) -> int | None:
        """The version of the row ``definition`` was mapped from, if this store mapped that very object
        (and holds it still); None for a definition from anywhere else."""
        hit = self._mapped.get(definition.id)
        return hit[0] if hit is not None and hit[1] is definition else None

    def _keep_mapped(self, version: int | None, definition: ScheduleDefinition) -> None:
        """``definition`` is its row as this transaction wrote it, with ``version``: kept even if the
        transaction then rolls back (no row will ever have that version). None: what was written is
        not known whole, and the row is mapped again on its next read."""
        if version is None:
            self._mapped.pop(definition.id, None)
        else:
            self._mapped[definition.id] = (version, definition)

    def disable_out_of_bounds(self) -> None:
        """Disable the enabled schedules an earlier version stored with a value the limits now refuse
        (a sub-second interval, a name ending in a newline...), each with the reason, so that none of
        them stops the engine; fixing the field (``update``) and ``enable`` bring it back. The engine
        does this when it starts; reading a store never changes it. Once done, ``meta`` says so, and
        later starts skip it (the schema version keeps older code, which knew no limits, out)."""
        if self.meta_get(LIMITS_CHECKED_KEY) == LIMITS_CHECKED:
            return
        s = schema.schedules
        rows = self._tx(lambda c: c.execute(select(s).where(s.c.enabled.is_(True))).mappings().all())
        for row in rows:
            stored = schedule_from(row)
            try:
                stored.with_changes()
            except InvalidSchedule as exc:
                reason = limits.storable_text(f"disabled at start: {exc}")[: limits.REASON_CHARS]
                values = {"enabled": False, "disabled_reason": reason, "updated_at": to_db(self.clock.now())}
                still_enabled = and_(s.c.id == stored.id, s.c.enabled.is_(True))  # another process may be first
                self._tx(partial(execute, update(s).where(still_enabled).values(**values)))
                log.warning("schedule %s disabled: it holds a value no longer allowed: %s", stored.name, exc)
        self.meta_set(LIMITS_CHECKED_KEY, LIMITS_CHECKED)

    def add(self, definition: ScheduleDefinition) -> ScheduleDefinition:
        """Store a new schedule and return it as stored; a taken name raises DuplicateSchedule."""
        now = self.clock.now()
        stored = definition.with_changes(created_at=definition.created_at or now, updated_at=now)
        row = schedule_row(stored)

        def work(conn: Connection) -> None:
            self._refuse_crossed(conn, stored)
            conn.execute(schema.schedules.insert().values(**row))

        try:
            self._tx(work)
        except IntegrityError as exc:
            if self._find_schedule(stored.name) is not None:
                raise DuplicateSchedule(stored.name) from exc
            raise InvalidSchedule("id", stored.id, "an id not already used by another schedule") from exc
        self._changed()
        log.info(
            "schedule %s added (%s %r, target %s)", stored.name, stored.trigger_type, stored.expression, stored.target
        )
        return stored

    def add_many(
        self, definitions: Iterable[ScheduleDefinition], *, skip_existing: bool = True
    ) -> list[ScheduleDefinition]:
        """Store several schedules in one transaction; with ``skip_existing`` a taken name or id is
        left as is, and so is a definition whose name is another schedule's id or whose id is
        another's name (stored, or earlier in the batch); without it either raises DuplicateSchedule.

        Returns the schedules that were added. Nothing is written if any write fails.
        """
        now = self.clock.now()
        staged = [d.with_changes(created_at=d.created_at or now, updated_at=now) for d in definitions]

        def build() -> Any:
            stmt = self._insert(schema.schedules)
            return stmt.on_conflict_do_nothing() if skip_existing else stmt

        insert = self._prepared(("add_schedule", skip_existing), build)

        def work(conn: Connection) -> list[ScheduleDefinition]:
            crossing = self._crossing(conn, staged)
            if crossing and not skip_existing:
                raise DuplicateSchedule(next(d.name for d in staged if d.id in crossing))
            return [d for d in staged if d.id not in crossing and conn.execute(insert, schedule_row(d)).rowcount == 1]

        try:
            return self._tx(work)
        except IntegrityError as exc:
            raise InvalidSchedule("name", "<batch>", "names and ids not already used") from exc

    def _find_schedule(self, name_or_id: str) -> ScheduleDefinition | None:
        lookup_key("name_or_id", name_or_id)
        s = schema.schedules
        # A name is looked up before an id, so the answer never depends on which row the database reads first.
        stmt = select(s).where(or_(s.c.name == name_or_id, s.c.id == name_or_id)).order_by(s.c.name != name_or_id)
        row = self._tx(lambda c: c.execute(stmt).mappings().first())
        return None if row is None else schedule_from(row)

    @staticmethod
    def _refuse_crossed(conn: Connection, d: ScheduleDefinition) -> None:
        """DuplicateSchedule when ``d``'s name is another schedule's id, or its id another's name: either
        would make one of them answer to the other's name."""
        s = schema.schedules
        crossed = select(s.c.id).where(or_(s.c.id == d.name, s.c.name == d.id), s.c.id != d.id).limit(1)
        if conn.execute(crossed).first() is not None:
            raise DuplicateSchedule(d.name)

    def _crossing(self, conn: Connection, staged: builtins.list[ScheduleDefinition]) -> set[str]:
        """The ids of ``staged`` definitions that would cross another schedule (``_refuse_crossed``):
        a stored one, or one earlier in the batch that does not cross; a few queries for the batch."""
        crossing: set[str] = set()
        s = schema.schedules

        def build() -> Any:
            names: Any = bindparam("names", expanding=True)
            keys: Any = bindparam("ids", expanding=True)
            return select(s.c.id, s.c.name).where(or_(s.c.id.in_(names), s.c.name.in_(keys)))

        stored = self._prepared("crossed_schedules", build)
        by_name: dict[str, builtins.list[str]] = {}
        for d in staged:
            by_name.setdefault(d.name, []).append(d.id)
        ids = {d.id for d in staged}
        for at in range(0, len(staged), CLAIM_CHUNK):
            chunk = staged[at : at + CLAIM_CHUNK]
            params = {"names": [d.name for d in chunk], "ids": [d.id for d in chunk]}
            for row in conn.execute(stored, params):
                crossing |= {i for i in by_name.get(row.id, ()) if i != row.id}  # those named as its id
                if row.name in ids and row.id != row.name:
                    crossing.add(row.name)  # the definition whose id is its name
        earlier_names: dict[str, str] = {}  # name -> id, of the batch so far, kept
        earlier_ids: dict[str, str] = {}  # id -> name
        for d in staged:
            if d.id in crossing:
                continue
            if earlier_ids.get(d.name, d.id) != d.id or earlier_names.get(d.id, d.id) != d.id:
                crossing.add(d.id)
                continue
            earlier_names.setdefault(d.name, d.id)
            earlier_ids.setdefault(d.id, d.name)
        return crossing

    def get(self, name_or_id: str) -> ScheduleDefinition:
        """The schedule with this name (or id); ScheduleNotFound when there is none."""
        found = self._find_schedule(name_or_id)
        if found is None:
            raise ScheduleNotFound(name_or_id)
        return found

    def list(
        self, *, enabled: bool | None = None, source: str | None = None, trigger_type: str | None = None
    ) -> builtins.list[ScheduleDefinition]:
        """Every schedule, by name, optionally filtered."""
        s = schema.schedules
        stmt = select(s).order_by(s.c.name)
        if enabled is not None:
            stmt = stmt.where(s.c.enabled == enabled)
        if source is not None:
            stmt = stmt.where(s.c.source == str(source))
        if trigger_type is not None:
            stmt = stmt.where(s.c.trigger_type == str(trigger_type))
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [schedule_from(r) for r in rows]

    def count_schedules(self) -> int:
        """How many schedules there are (counted, none read)."""
        stmt = select(func.count()).select_from(schema.schedules)
        return int(self._tx(lambda c: c.execute(stmt).scalar_one()))

    def update(self, name_or_id: str, **changes: Any) -> ScheduleDefinition:
        """Change definition fields of a schedule (validated); breaker fields change only through the breaker."""
        for key, value in changes.items():
            if key in GUARDED_SCHEDULE_FIELDS:
                raise InvalidSchedule(key, value, "not changeable here (breaker fields move through the breaker)")
        if changes.get("enabled") is False and "disabled_reason" not in changes:
            # As disable(): a reason of its own, never one left by the engine (a delay's "fired").
            changes = {**changes, "disabled_reason": "disabled"}
        current = self.get(name_or_id)
        changed = current.with_changes(updated_at=self.clock.now(), **changes)  # validates the whole result
        retimed = any(getattr(changed, f) != getattr(current, f) for f in ("trigger_type", "expression", "timezone"))
        if retimed:
            # New occurrences: the next one is computed afresh from the new trigger, not the old time.
            changes = {**changes, "next_run_at": None}
            changed = changed.with_state(next_run_at=None)
        # Write only the columns asked for: the engine may have moved next_run_at or the breaker
        # since we read the row, and writing our snapshot back would undo that.
        columns = {SPAN_COLUMNS.get(name, name) for name in (*changes, "updated_at")}
        row = {k: v for k, v in schedule_row(changed).items() if k in columns}
        s = schema.schedules
        rearmed = False

        def work(conn: Connection) -> int:
            nonlocal rearmed
            if "name" in changes:
                self._refuse_crossed(conn, changed)
            # A delay disabled as its run was prepared has not fired yet: re-timed, it fires at its
            # new time, its prepared run taken back here (so that it never runs at the old time too).
            rearmed = retimed and "enabled" not in changes and self._take_back_fired(conn, current.id)
            values = {**row, "enabled": True, "disabled_reason": None} if rearmed else row
            return int(conn.execute(update(s).where(s.c.id == current.id).values(**values)).rowcount)

        try:
            count = self._tx(work)
        except IntegrityError as exc:
            raise DuplicateSchedule(changed.name) from exc
        if count != 1:
            raise ScheduleNotFound(name_or_id)
        self._changed()
        return self.get(current.id)

    def disable(self, name_or_id: str, reason: str = "") -> ScheduleDefinition:
        """Stop a schedule from producing runs, recording why."""
        limits.check_text("reason", reason, limits.REASON_CHARS)
        return self.update(name_or_id, enabled=False, disabled_reason=reason or "disabled")

    def enable(self, name_or_id: str) -> ScheduleDefinition:
        """Let a disabled schedule produce runs again, from now on.

        Occurrences that fell in the disabled period were not missed, so they are not caught up:
        the next occurrence is computed afresh (an interval keeps its anchor).
        """
        current = self.get(name_or_id)
        if current.enabled:
            return current
        return self.update(name_or_id, enabled=True, disabled_reason=None, next_run_at=None)

    def _take_back_fired(self, conn: Connection, schedule_id: str) -> bool:
        """If the schedule is a delay disabled by the preparing of its run, which has not started, skip
        that run (through the machine, conditionally: a claim that came first keeps it); whether it
        was. The schedule is read inside the transaction (and locked on PostgreSQL)."""
        s = schema.schedules
        row = conn.execute(select(s).where(s.c.id == schedule_id).with_for_update()).mappings().first()
        if row is None:
            return False
        schedule = schedule_from(row)
        at = schedule.last_run_at
        return at is not None and fired_by(schedule, at) and self._skip_prepared(conn, schedule, at)

    def _skip_prepared(self, conn: Connection, schedule: ScheduleDefinition, at: datetime) -> bool:
        """Skip the prepared, never started run of ``schedule`` at ``at``; whether there was one (runs.py)."""
        raise NotImplementedError

    def remove(self, name_or_id: str) -> None:
        """Delete a schedule; its runs and dead letters stay as history."""
        current = self.get(name_or_id)
        s = schema.schedules
        self._tx(lambda c: c.execute(s.delete().where(s.c.id == current.id)))

    def record_outcome(self, schedule_id: str, *, failed: bool) -> ScheduleDefinition | None:
        """Count a terminal failure (or reset the count on success) in one atomic UPDATE.

        Returns the schedule after the change; None for a success that changed nothing (the
        count was already 0 and the breaker closed), which costs one statement.
        """
        s = schema.schedules

        def build() -> Any:
            key = s.c.id == bindparam("schedule_id")
            if failed:
                return update(s).where(key).values({FAILURE_COUNT: s.c[FAILURE_COUNT] + 1})
            effects = success_effects()
            differs = (s.c[c] != v for c, v in effects.items())
            busy = or_(*differs, s.c.breaker_state != BreakerState.CLOSED.value)
            return update(s).where(and_(key, busy)).values(effects)

        stmt = self._prepared(("count", failed), build)

        def work(conn: Connection) -> Any:
            if conn.execute(stmt, {"schedule_id": schedule_id}).rowcount == 0:
                return False
            return conn.execute(select(s).where(s.c.id == schedule_id)).mappings().first()

        row = self._tx(work)
        if row is False and not failed:
            return None
        if not row:
            raise ScheduleNotFound(schedule_id)
        return schedule_from(row)

    def transition_breaker(
        self, name_or_schedule: str | ScheduleDefinition, trigger: str, *, now: datetime | None = None
    ) -> ScheduleDefinition:
        """Fire a breaker trigger (trip, probe, close, reopen, reset) on a schedule; persisted conditionally."""
        schedule = self.get(name_or_schedule) if isinstance(name_or_schedule, str) else name_or_schedule
        at = now or self.clock.now()

        def persist(current: ScheduleDefinition, transition: Transition, changes: dict[str, Any]) -> None:
            s = schema.schedules
            values = {"breaker_state": transition.dest, "updated_at": to_db(at)}
            values.update({k: to_db(v) if isinstance(v, datetime) else v for k, v in changes.items()})
            stmt = update(s).where(and_(s.c.id == current.id, s.c.breaker_state == transition.source)).values(**values)

            def work(conn: Connection) -> None:
                if conn.execute(stmt).rowcount != 1:
                    actual = conn.execute(select(s.c.breaker_state).where(s.c.id == current.id)).scalar()
                    raise StaleBreaker(current.id, transition.source, actual, transition.trigger)

            self._tx(work)
            log.info(
                "breaker of %s: %s -> %s (%s)", current.name, transition.source, transition.dest, transition.trigger
            )

        moved = fire_breaker(schedule, trigger, now=at, persist=persist)
        self._changed()
        return moved

    def reset_failures(self, schedule_ids: Iterable[str]) -> builtins.list[ScheduleDefinition]:
        """After successes: zero the failure counts of these schedules; return those whose breaker is not closed."""
        ids = sorted(set(schedule_ids))
        if not ids:
            return []
        if len(ids) < self.batch_min:
            changed = [self.record_outcome(i, failed=False) for i in ids]
            return [c for c in changed if c is not None and c.breaker_state is not BreakerState.CLOSED]
        s = schema.schedules
        effects = success_effects()

        def differs() -> Any:
            return or_(*(s.c[c] != v for c, v in effects.items()))

        def build() -> Any:
            values = {**effects, "version": bindparam("version")}  # one new version per chunk, as onupdate draws
            return update(s).where(and_(s.c.id.in_(bindparam("ids", expanding=True)), differs())).values(values)

        reset = self._prepared("reset_failures", build)
        # Usually every schedule is already at zero with its breaker closed: one read says so, and
        # which have a count to zero (1) or only a breaker to report (0).
        to_touch = self._prepared(
            "failures_to_reset",
            lambda: select(s.c.id, case((differs(), 1), else_=0)).where(
                and_(
                    s.c.id.in_(bindparam("ids", expanding=True)),
                    or_(differs(), s.c.breaker_state != BreakerState.CLOSED.value),
                )
            ),
        )
        not_closed = self._prepared(
            "not_closed",
            lambda: select(s).where(
                and_(s.c.id.in_(bindparam("ids", expanding=True)), s.c.breaker_state != BreakerState.CLOSED.value)
            ),
        )

        def work(conn: Connection) -> builtins.list[Any]:
            rows: builtins.list[Any] = []
            for i in range(0, len(ids), CLAIM_CHUNK):
                found = self._direct.execute(conn, to_touch, {"ids": ids[i : i + CLAIM_CHUNK]}).all()
                counted = [sid for sid, to_zero in found if to_zero]
                if counted:
                    self._direct.execute(conn, reset, {"ids": counted, "version": schema.new_version()})
                if found:
                    rows.extend(conn.execute(not_closed, {"ids": [sid for sid, _ in found]}).mappings().all())
            return rows

        return [schedule_from(row) for row in self._tx(work)]

    def due_schedules(self, now: datetime) -> builtins.list[ScheduleDefinition]:
        """Enabled time-based schedules whose breaker is not open and whose next occurrence is due or unset."""
        s = schema.schedules

        def build() -> Any:
            return (
                select(s.c.id, s.c.version)
                .where(
                    and_(
                        # Each side of the OR names the whole index (enabled, next_run_at): SQLite
                        # searches it twice instead of walking every enabled schedule.
                        or_(
                            and_(s.c.enabled.is_(True), s.c.next_run_at.is_(None)),
                            and_(s.c.enabled.is_(True), s.c.next_run_at <= bindparam("now", type_=DateTime)),
                        ),
                        # Comparisons, not IN: an IN list is re-rendered on every execution.
                        *(s.c.trigger_type != t.value for t in TriggerType if t not in TIME_BASED),
                        s.c.breaker_state != BreakerState.OPEN.value,
                    )
                )
                .order_by(s.c.next_run_at)
            )

        if self.dialect == "postgresql" and not self.read_only:
            # Materializing is this worker's alone until the transaction ends: the due rows are
            # locked in id order, and those another worker holds are left to it (SKIP LOCKED),
            # so two workers never wait on each other here, whatever order they lock in elsewhere.
            stmt = self._prepared(
                "due_schedules_locked",
                lambda: build().order_by(None).order_by(s.c.id).with_for_update(skip_locked=True),
            )
            found = self._tx(lambda c: self._definitions(c, c.execute(stmt, {"now": to_db(now)}).all()))
            return sorted(found.values(), key=lambda d: (d.next_run_at is not None, d.next_run_at or now))
        stmt = self._prepared("due_schedules", build)

        def read(conn: Connection) -> builtins.list[ScheduleDefinition]:
            keyed = self._direct.execute(conn, stmt, {"now": to_db(now)}).all()
            found = self._definitions(conn, keyed)
            return [found[sid] for sid, _ in keyed if sid in found]  # in the order of next_run_at

        return self._tx(read)

    def next_due(self, *, count_up_to: int = 16) -> tuple[datetime | None, int]:
        """The earliest ``next_run_at`` of an enabled schedule whose breaker is not open, and how
        many schedules share it (counted up to ``count_up_to``: one walk of the index, whatever the size)."""
        s = schema.schedules
        stmt = self._prepared(
            "next_due",
            lambda: (
                select(s.c.next_run_at)
                .where(
                    and_(
                        s.c.enabled.is_(True),
                        s.c.next_run_at.is_not(None),
                        s.c.breaker_state != BreakerState.OPEN.value,
                    )
                )
                .order_by(s.c.next_run_at)
                .limit(bindparam("cap"))
            ),
        )
        times = self._tx(lambda c: c.execute(stmt, {"cap": count_up_to}).scalars().all())
        if not times:
            return None, 0
        return from_db(times[0]), sum(1 for t in times if t == times[0])

    def schedule_versions(self, ids: Iterable[str]) -> dict[str, int]:
        """The version of each of these schedules' rows (missing ones left out): a token every write
        through the store draws again, so an unchanged version is an unchanged row."""
        wanted = sorted(set(ids))
        return self._tx(lambda conn: dict(self._versions(conn, wanted))) if wanted else {}

    def _versions(self, conn: Connection, wanted: builtins.list[str]) -> builtins.list[tuple[str, int]]:
        s = schema.schedules
        stmt = self._prepared(
            "schedule_versions",
            lambda: select(s.c.id, s.c.version).where(s.c.id.in_(bindparam("ids", expanding=True))),
        )
        out: builtins.list[tuple[str, int]] = []
        for k in range(0, len(wanted), CLAIM_CHUNK):
            out.extend(self._direct.execute(conn, stmt, {"ids": wanted[k : k + CLAIM_CHUNK]}))
        return out

    def lock_schedules(self, schedule_ids: Iterable[str]) -> None:
        """Take these schedules' turn locks until the transaction ends (PostgreSQL), so two workers
        deciding starts for the same schedule take turns. SQLite's transactions already hold the
        database's write lock from their first statement.

        The turn locks are transaction-level advisory locks, taken in one order (by key), not the
        schedules' rows: a worker waiting for its turn then never waits on, nor holds up, a row
        that another worker's materialization or bookkeeping has updated in its own transaction,
        which in any other order would be a deadlock.
        """
        if self.dialect != "postgresql":
            return
        keys = sorted({turn_key(i) for i in schedule_ids})
        if not keys:
            return
        stmt = self._prepared(
            "lock_schedules", lambda: select(func.pg_advisory_xact_lock(bindparam("ns"), bindparam("key")))
        )

        def work(conn: Connection) -> None:
            for key in keys:  # one statement each: the order of the waits is the order of the keys
                conn.execute(stmt, {"ns": TURN_LOCK_NAMESPACE, "key": key}).all()

        self._tx(work)

    def _lock_rows(self, conn: Connection, schedule_ids: Iterable[str]) -> None:
        """PostgreSQL: lock these schedules' rows in id order before updating several of them."""
        if self.dialect != "postgresql":
            return
        ids = sorted(set(schedule_ids))
        if len(ids) < 2:
            return
        s = schema.schedules
        stmt = self._prepared(
            "lock_rows",
            lambda: (
                select(s.c.id).where(s.c.id.in_(bindparam("ids", expanding=True))).order_by(s.c.id).with_for_update()
            ),
        )
        for k in range(0, len(ids), CLAIM_CHUNK):
            conn.execute(stmt, {"ids": ids[k : k + CLAIM_CHUNK]}).all()

    def schedules_by_id(self, ids: Iterable[str]) -> dict[str, ScheduleDefinition]:
        """The schedules with these ids (missing ones are left out)."""
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        return self._tx(lambda conn: self._definitions(conn, self._versions(conn, wanted)))

    def open_breakers(self) -> builtins.list[ScheduleDefinition]:
        """Schedules whose breaker is open."""
        s = schema.schedules
        stmt = select(s).where(s.c.breaker_state == BreakerState.OPEN.value).order_by(s.c.name)
        return [schedule_from(r) for r in self._tx(lambda c: c.execute(stmt).mappings().all())]
