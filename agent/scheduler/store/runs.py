"""Runs: creation and materialization, every run transition (one row or a batch), leases, checkpoints."""

from __future__ import annotations

import builtins
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Table, and_, bindparam, func, or_, select, tuple_, update

from .. import limits, schema
from ..definition import ScheduleDefinition
from ..enums import RunStatus
from ..errors import RunNotFound, SchedulerError, StaleRun
from ..machines.run_lifecycle import RunMove, plan_run, plan_runs
from ..policies.missed_run import CHANGED_BEFORE
from ..scheduled_run import ScheduledRun, time_occurrence_key
from .connection import CLAIM_CHUNK
from .rows import all_same, db_value, from_db, lookup_key, new_id, run_from, run_row, to_db
from .schedules import ScheduleRows

log = logging.getLogger(__name__)

#: Run triggers whose guards read the schedule.
GUARDED_TRIGGERS = frozenset({"retry", "dead_letter", "replay", "due", "stop"})


#: Run fields a transition may set besides the status.
RUN_CHANGE_FIELDS = frozenset(f.name for f in fields(ScheduledRun)) - {
    "run_id",
    "schedule_id",
    "schedule_name",
    "intended_run_at",
    "occurrence_key",
    "status",
    "created_at",
}


@dataclass(frozen=True, slots=True)
class Materialization:
    """What one schedule's due occurrences become: runs to create and where its next_run_at moves."""

    schedule: ScheduleDefinition
    runs: list[Any]
    """PlannedRun items (intended_at, catch_up, coalesced_from, skip_reason)."""
    next_run_at: datetime | None
    anchor_at: datetime | None = None
    disable_reason: str | None = None
    prepared: bool = False
    """The runs are stored ahead of their time (``ScheduledRun.prepared``)."""


@dataclass(frozen=True, slots=True)
class Materialized:
    """What materializing one schedule did: the runs it created, and the schedule as it left it."""

    runs: list[ScheduledRun]
    schedule: ScheduleDefinition
    """The definition of the row as written (its ``next_run_at`` moved...): current until the next write."""


class RunRows(ScheduleRows):
    """Runs: creation and materialization, every run transition (one row or a batch), leases,
    checkpoints (dead letters are ``letters.DeadLetterRows``).
    """

    def _run_update(self, columns: tuple[str, ...]) -> Any:
        """``UPDATE scheduled_runs SET <columns> WHERE run_id, status, attempt and starts are as expected``.

        ``starts`` is in the condition because the ``due`` guards read it (work that started before is
        never a missed occurrence): a run started and requeued elsewhere since its snapshot was read
        is not the run they judged."""
        r = schema.scheduled_runs

        def build() -> Any:
            cond = and_(
                r.c.run_id == bindparam("w_run_id"),
                r.c.status == bindparam("w_status"),
                r.c.attempt == bindparam("w_attempt"),
                r.c.starts == bindparam("w_starts"),
            )
            return update(r).where(cond).values({c: bindparam(f"v_{c}", type_=r.c[c].type) for c in columns})

        return self._prepared(("run_update", columns), build)

    def _insert_run_statement(self) -> Any:
        return self._prepared("insert_run", lambda: self._insert(schema.scheduled_runs).on_conflict_do_nothing())

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
        """Materialize a pending run; None when this occurrence already has a run (a no-op).

        ``occurrence_key`` defaults to the intended time, which is what makes a time-based
        occurrence unique per schedule; events and manual runs pass their own id.
        """
        run = self._new_run(
            schedule,
            intended_run_at,
            self.clock.now(),
            occurrence_key=occurrence_key,
            origin=origin,
            params=params,
            catch_up=catch_up,
            coalesced_from=coalesced_from,
            reason=reason,
        )
        stmt = self._insert_run_statement()
        created = self._tx(lambda c: c.execute(stmt, run_row(run)).rowcount)
        if created != 1:
            return None
        self._changed()
        return run

    def get_run(self, run_id: str) -> ScheduledRun:
        """The run with this id; RunNotFound when there is none."""
        lookup_key("run_id", run_id)
        r = schema.scheduled_runs
        row = self._tx(lambda c: c.execute(select(r).where(r.c.run_id == run_id)).mappings().first())
        if row is None:
            raise RunNotFound(run_id)
        return run_from(row)

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
        if schedule is not None:
            lookup_key("schedule", schedule)
        r = schema.scheduled_runs
        order = (r.c.intended_run_at, r.c.created_at, r.c.run_id)
        stmt = select(r).order_by(*(c.desc() for c in order) if newest_first else order)
        if updated_since is not None:
            stmt = stmt.where(r.c.updated_at >= to_db(updated_since))
        if schedule is not None:
            stmt = stmt.where(or_(r.c.schedule_name == schedule, r.c.schedule_id == schedule))
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            stmt = stmt.where(r.c.status.in_([RunStatus(s).value for s in wanted]))
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [run_from(row) for row in rows]

    def latest_runs(self) -> dict[str, ScheduledRun]:
        """The most recent run (by intended time) of every schedule that has one, by schedule id."""
        r = schema.scheduled_runs
        newest = (
            select(r.c.schedule_id, func.max(r.c.intended_run_at).label("newest")).group_by(r.c.schedule_id).subquery()
        )
        stmt = select(r).join(
            newest, and_(r.c.schedule_id == newest.c.schedule_id, r.c.intended_run_at == newest.c.newest)
        )
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        out: dict[str, ScheduledRun] = {}
        for row in rows:
            run = run_from(row)
            if run.schedule_id not in out or (run.created_at or run.intended_run_at) > (
                out[run.schedule_id].created_at or run.intended_run_at
            ):
                out[run.schedule_id] = run
        return out

    def count_runs(self, schedule: str | None = None, status: RunStatus | str | None = None) -> int:
        """How many runs match."""
        if schedule is not None:
            lookup_key("schedule", schedule)
        r = schema.scheduled_runs
        stmt = select(func.count()).select_from(r)
        if schedule is not None:
            stmt = stmt.where(or_(r.c.schedule_name == schedule, r.c.schedule_id == schedule))
        if status is not None:
            stmt = stmt.where(r.c.status == RunStatus(status).value)
        return int(self._tx(lambda c: c.execute(stmt).scalar()) or 0)

    def transition(
        self,
        run: ScheduledRun,
        trigger: str,
        *,
        now: datetime | None = None,
        schedule: ScheduleDefinition | None = None,
        actor: str | None = None,
        force: bool = False,
        **changes: Any,
    ) -> ScheduledRun:
        """Fire ``trigger`` on ``run`` through the run machine; returns the new snapshot.

        The write is ``UPDATE ... WHERE run_id=? AND status=<run.status> AND attempt=<run.attempt> AND
        starts=<run.starts>``;
        if another worker moved the run first, StaleRun is raised and nothing changes.
        ``changes`` set row fields (outcome, error, reason, owner, checkpoint...). A
        ``dead_letter`` also writes the dead-letter row, a ``replay`` marks it replayed by ``actor``,
        in the same transaction.
        """
        unknown = set(changes) - RUN_CHANGE_FIELDS
        if unknown:
            raise ValueError(f"not run fields a transition can set: {', '.join(sorted(unknown))}")
        if actor is not None:
            limits.check_text("actor", actor, limits.NAME_CHARS, single_line=True)
        at = now or self.clock.now()
        if schedule is None and trigger in GUARDED_TRIGGERS:
            schedule = self.get(run.schedule_id)
        move = plan_run(run, trigger, now=at, schedule=schedule, changes=changes, force=force)
        self._tx(lambda conn: self._write_run(conn, move, now=at, actor=actor))
        moved = move.moved
        log.info(
            "run %s of %s: %s -> %s (%s)%s",
            run.run_id,
            run.schedule_name,
            run.status,
            moved.status,
            trigger,
            f": {moved.reason}" if moved.reason else "",
        )
        return moved

    def _write_run(self, conn: Connection, move: RunMove, *, now: datetime, actor: str | None) -> None:
        """Write one move with its conditional UPDATE (StaleRun when the row is not as the move expects)."""
        run, transition = move.run, move.transition
        params: dict[str, Any] = {f"v_{k}": db_value(v) for k, v in move.fields.items()}
        params.update(w_run_id=run.run_id, w_status=transition.source, w_attempt=run.attempt, w_starts=run.starts)
        if conn.execute(self._run_update(tuple(sorted(move.fields))), params).rowcount != 1:
            raise self._stale_runs(conn, [move])[run.run_id]
        self._after_move(conn, move, now=now, actor=actor)

    def _stale_runs(self, conn: Connection, moves: builtins.list[RunMove]) -> dict[str, StaleRun]:
        """Why these moves' conditional writes matched no row: who holds each run now, and its attempt."""
        r = schema.scheduled_runs
        stmt = self._prepared(
            "holders",
            lambda: select(r.c.run_id, r.c.status, r.c.owner, r.c.attempt).where(
                r.c.run_id.in_(bindparam("ids", expanding=True))
            ),
        )
        found = {row.run_id: row for row in conn.execute(stmt, {"ids": [m.run.run_id for m in moves]})}
        out: dict[str, StaleRun] = {}
        for m in moves:
            run, transition, row = m.run, m.transition, found.get(m.run.run_id)
            if row is None:
                out[run.run_id] = StaleRun(run.run_id, transition.source, None, transition.trigger)
                continue
            out[run.run_id] = StaleRun(
                run.run_id,
                transition.source,
                row.status,
                transition.trigger,
                holder=row.owner,
                attempts=(run.attempt, row.attempt),
            )
        return out

    def _after_move(self, conn: Connection, move: RunMove, *, now: datetime, actor: str | None) -> None:
        """The records a written move keeps beside the run: a dead letter, or its replay."""
        run, trigger, values = move.run, move.transition.trigger, move.fields
        if trigger == "dead_letter":
            conn.execute(
                schema.dead_letters.insert().values(
                    id=new_id("dl"),
                    run_id=run.run_id,
                    schedule_id=run.schedule_id,
                    schedule_name=run.schedule_name,
                    intended_run_at=to_db(run.intended_run_at),
                    attempts=run.attempt,
                    error_type=values.get("error_type", run.error_type),
                    error=values.get("error", run.error),
                    error_traceback=values.get("error_traceback", run.error_traceback),
                    params=run.params,
                    checkpoint=values.get("checkpoint", run.checkpoint),
                    created_at=to_db(now),
                    updated_at=to_db(now),
                )
            )
        elif trigger == "replay":
            d = schema.dead_letters
            conn.execute(
                update(d)
                .where(and_(d.c.run_id == run.run_id, d.c.replayed_at.is_(None)))
                .values(replayed_at=to_db(now), replayed_by=actor or "operator", updated_at=to_db(now))
            )

    def _write_moves(
        self, conn: Connection, planned: builtins.list[RunMove | SchedulerError], *, now: datetime
    ) -> builtins.list[ScheduledRun | SchedulerError]:
        """Write planned moves in this transaction; per item, the run after it or why it did not move.

        Fewer than ``batch_min`` moves (or one run moved twice) go one conditional UPDATE each;
        more go through ``_write_batch``. Both write exactly the fields the machine computed.
        """
        moves = [p for p in planned if isinstance(p, RunMove)]
        if len(moves) < self.batch_min or len({m.run.run_id for m in moves}) < len(moves):
            out: builtins.list[ScheduledRun | SchedulerError] = []
            for p in planned:
                if isinstance(p, RunMove):
                    try:
                        self._write_run(conn, p, now=now, actor=None)
                    except StaleRun as stale:
                        out.append(stale)
                        continue
                    out.append(p.moved)
                else:
                    out.append(p)
            return out
        lost = self._write_batch(conn, moves, now=now)
        return [p if isinstance(p, SchedulerError) else lost.get(p.run.run_id, p.moved) for p in planned]

    def _write_batch(self, conn: Connection, moves: builtins.list[RunMove], *, now: datetime) -> dict[str, StaleRun]:
        """Write many moves (distinct runs) with a few statements per chunk; returns the runs that lost.

        Moves from the same status to the same status that write the same columns form a group,
        written in chunks in run-id order (one lock order on every worker). Per chunk, one
        ``UPDATE ... SET <the values all its moves share> WHERE run_id IN (...) AND (run_id, attempt,
        starts, status) IN (...) RETURNING run_id`` (``_claim_statement``) says which runs this call
        moved; the values that differ from run to run (an outcome, a start count) follow for those
        runs in one executemany.
        """
        groups: dict[tuple[str, str, tuple[str, ...]], builtins.list[RunMove]] = {}
        for m in sorted(moves, key=lambda m: m.run.run_id):
            groups.setdefault((m.transition.source, m.transition.dest, tuple(m.fields)), []).append(m)
        lost: dict[str, StaleRun] = {}
        for (source, _, columns), group in groups.items():
            for i in range(0, len(group), CLAIM_CHUNK):
                chunk = group[i : i + CLAIM_CHUNK]
                first = chunk[0].fields
                shared = tuple(c for c in columns if all_same([m.fields[c] for m in chunk]))
                varying = tuple(c for c in columns if c not in shared)
                params: dict[str, Any] = {f"v_{c}": db_value(first[c]) for c in shared}
                params.update(
                    ids=[m.run.run_id for m in chunk],
                    keys=[(m.run.run_id, m.run.attempt, m.run.starts, source) for m in chunk],
                )
                won = {row[0] for row in self._direct.execute(conn, self._claim_statement(shared), params)}
                winners = [m for m in chunk if m.run.run_id in won]
                if varying and winners:
                    rows = [
                        {"w_key": m.run.run_id, **{f"v_{c}": db_value(m.fields[c]) for c in varying}} for m in winners
                    ]
                    self._direct.executemany(conn, self._fill_statement(schema.scheduled_runs, "run_id", varying), rows)
                for m in winners:
                    self._after_move(conn, m, now=now, actor=None)
                if len(winners) < len(chunk):
                    lost.update(self._stale_runs(conn, [m for m in chunk if m.run.run_id not in won]))
        return lost

    def _claim_statement(self, columns: tuple[str, ...]) -> Any:
        """``UPDATE scheduled_runs SET <columns> WHERE run_id IN :ids AND (run_id, attempt, starts,
        status) IN :keys RETURNING run_id``, prepared.

        The plain ``run_id IN`` is what makes SQLite look the runs up by primary key; with the
        status as a term of its own it walked the status index through every pending run.
        """
        r = schema.scheduled_runs

        def build() -> Any:
            cond = and_(
                r.c.run_id.in_(bindparam("ids", expanding=True)),
                tuple_(r.c.run_id, r.c.attempt, r.c.starts, r.c.status).in_(bindparam("keys", expanding=True)),
            )
            values = {c: bindparam(f"v_{c}", type_=r.c[c].type) for c in columns}
            return update(r).where(cond).values(values).returning(r.c.run_id)

        return self._prepared(("claim", columns), build)

    def _fill_statement(self, table: Table, key: str, columns: tuple[str, ...]) -> Any:
        """``UPDATE <table> SET <columns> WHERE <key> = :w_key``, prepared: the values of their own
        that rows this transaction has just moved conditionally still need."""

        def build() -> Any:
            values = {c: bindparam(f"v_{c}", type_=table.c[c].type) for c in columns}
            return update(table).where(table.c[key] == bindparam("w_key")).values(values)

        return self._prepared(("fill", table.name, columns), build)

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
        """Fire ``trigger`` (``start``, or ``due`` with its guards) on many pending runs; returns the
        runs this call started, in the order given.

        From ``batch_min`` runs on, the claim is one conditional UPDATE per chunk (``WHERE
        (run_id, attempt) IN (...) AND status = 'pending' RETURNING run_id``): a run another
        worker took first is simply not returned, nor is one the guards of ``due`` send elsewhere
        (the engine gives only runs they start). ``schedules`` and ``facts`` (by run id) go to
        those guards.
        """
        why = reasons or {}
        runs_list = list(runs)
        # Claimed in one lock order (by run id) on every worker; returned in the order given.
        position = {run.run_id: i for i, run in enumerate(runs_list)}
        items = [
            (run, trigger, {"owner": owner, "lease_expires_at": lease_until, "reason": why.get(run.run_id)})
            for run in sorted(runs_list, key=lambda r: r.run_id)
        ]
        fired = self.transition_many(items, now=now, schedules=schedules, facts=facts)
        started = [m for m in fired if isinstance(m, ScheduledRun) and m.status is RunStatus.RUNNING]
        return sorted(started, key=lambda m: position[m.run_id])

    def finish_many(
        self, items: Iterable[tuple[ScheduledRun, str, dict[str, Any]]], *, now: datetime | None = None
    ) -> builtins.list[ScheduledRun | SchedulerError]:
        """Record many finished runs (succeed with their outcome, fail, skip, cancel): ``transition_many``."""
        return self.transition_many(items, now=now)

    def transition_many(
        self,
        items: Iterable[tuple[ScheduledRun, str, dict[str, Any]]],
        *,
        now: datetime | None = None,
        schedules: dict[str, ScheduleDefinition] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> builtins.list[ScheduledRun | SchedulerError]:
        """Fire many ``(run, trigger, changes)`` in one transaction; each result is the new run or its error.

        The machine decides each item (InvalidTransition, GuardRejected) and computes what it
        writes; the store writes exactly that, conditionally on each run's status and attempt: one
        UPDATE per item, or from ``batch_min`` items on a few statements per chunk. A run another
        worker moved first (StaleRun) does not stop the others. ``facts`` (by run id) go to the
        guards of ``due`` and ``stop``.
        """
        at = now or self.clock.now()
        batch = list(items)
        known = dict(schedules or {})
        missing = {r.schedule_id for r, t, _ in batch if t in GUARDED_TRIGGERS and r.schedule_id not in known}
        for schedule_id in missing:
            known[schedule_id] = self.get(schedule_id)
        planned: builtins.list[RunMove | SchedulerError] = list(plan_runs(batch, now=at, schedules=known, facts=facts))
        if not planned:
            return []
        return self._tx(lambda conn: self._write_moves(conn, planned, now=at))

    def _fire_in(
        self,
        conn: Connection,
        run: ScheduledRun,
        trigger: str,
        *,
        now: datetime,
        changes: dict[str, Any],
        schedule: ScheduleDefinition | None,
        facts: Any = None,
    ) -> ScheduledRun:
        """Fire one trigger inside an open transaction."""
        move = plan_run(run, trigger, now=now, schedule=schedule, changes=changes, facts=facts)
        self._write_run(conn, move, now=now, actor=None)
        return move.moved

    def _skip_prepared(self, conn: Connection, schedule: ScheduleDefinition, at: datetime) -> bool:
        """Skip the prepared, never started run of ``schedule`` at ``at`` (its schedule changed before
        its time); whether there was one. Conditional: a claim that came first keeps the run."""
        r = schema.scheduled_runs
        waiting = and_(
            r.c.schedule_id == schedule.id,
            r.c.intended_run_at == to_db(at),
            r.c.status == RunStatus.PENDING.value,
            r.c.prepared.is_(True),
        )
        row = conn.execute(select(r).where(waiting).limit(1)).mappings().first()
        if row is None:
            return False
        try:
            self._fire_in(
                conn, run_from(row), "skip", now=self.clock.now(), changes={"reason": CHANGED_BEFORE}, schedule=schedule
            )
        except StaleRun:
            return False
        return True

    def save_checkpoint(self, run_id: str, data: Any, *, owner: str | None = None) -> None:
        """Store a running run's checkpoint (JSON); only while it runs (and, if given, for its owner).

        Data no store holds (not JSON, NaN, NUL or lone surrogates in a string) raises InvalidSchedule.
        """
        limits.check_json("checkpoint", data)
        r = schema.scheduled_runs
        cond = and_(r.c.run_id == run_id, r.c.status == RunStatus.RUNNING.value)
        if owner is not None:
            cond = and_(cond, r.c.owner == owner)
        stmt = update(r).where(cond).values(checkpoint=data, heartbeat_at=to_db(self.clock.now()))
        if self._tx(lambda c: c.execute(stmt).rowcount) != 1:
            raise StaleRun(run_id, RunStatus.RUNNING.value, None, "save_checkpoint", holder=owner)

    def next_pending_at(self, now: datetime) -> datetime | None:
        """The earliest intended time of a pending run not yet due (a run prepared ahead of its time)."""
        r = schema.scheduled_runs
        stmt = self._prepared(
            "next_pending_at",
            lambda: select(func.min(r.c.intended_run_at)).where(
                and_(r.c.status == RunStatus.PENDING.value, r.c.intended_run_at > bindparam("now", type_=DateTime))
            ),
        )
        return from_db(self._tx(lambda c: c.execute(stmt, {"now": to_db(now)}).scalar()))

    def next_lease_expiry(self, now: datetime, *, owner: str) -> datetime | None:
        """When the earliest lease held by another owner than ``owner`` lapses, if after ``now``:
        the moment its run may have to be taken over (its owner died)."""
        r = schema.scheduled_runs
        stmt = self._prepared(
            "next_lease_expiry",
            lambda: select(func.min(r.c.lease_expires_at)).where(
                and_(
                    r.c.status == RunStatus.RUNNING.value,
                    r.c.lease_expires_at > bindparam("now", type_=DateTime),
                    r.c.owner != bindparam("owner"),
                )
            ),
        )
        return from_db(self._tx(lambda c: c.execute(stmt, {"now": to_db(now), "owner": owner}).scalar()))

    def materialize(
        self,
        schedule: ScheduleDefinition,
        runs: Iterable[Any],
        *,
        next_run_at: datetime | None,
        anchor_at: datetime | None = None,
        disable_reason: str | None = None,
        now: datetime | None = None,
    ) -> builtins.list[ScheduledRun] | None:
        """Create the planned runs of ``schedule`` and move its ``next_run_at``, in one transaction.

        The move is conditional on ``next_run_at`` still being what ``schedule`` says, so two
        workers never both materialize the same occurrences; the loser gets None. A ``schedule``
        this store handed out (``due_schedules``, ``schedules_by_id``) moves only while its row is
        the version it was read from: after any other write to the row (its own first move
        included) it gets None too, and is to be read again. Planned runs
        with a ``skip_reason`` are recorded and moved to ``skipped`` through the machine. Runs
        that already exist (same occurrence) are left alone. ``disable_reason`` disables the
        schedule (a delay that fired).
        """
        plan = Materialization(schedule, list(runs), next_run_at, anchor_at, disable_reason)
        done = self.materialize_many([plan], now=now)[0]
        return None if done is None else done.runs

    def materialize_many(
        self, plans: Iterable[Materialization], *, now: datetime | None = None
    ) -> builtins.list[Materialized | None]:
        """``materialize`` for many schedules in one transaction and a few statements.

        The conditional moves of ``next_run_at`` run as one UPDATE ... RETURNING per shape and chunk
        (``_advance_schedules``), which says which this call made (only those schedules get runs);
        all their runs go in with one executemany. Returns, per plan, the runs created and the
        schedule as written, or None when another worker moved first (or, for a definition this
        store handed out, when its row was written since it was read).
        """
        at = now or self.clock.now()
        batch = list(plans)
        s = schema.schedules
        version = schema.new_version()  # one for every row this call writes: unchanged rows have theirs
        shapes: dict[tuple[bool, bool, tuple[str, ...]], builtins.list[dict[str, Any]]] = {}
        shaped: builtins.list[tuple[tuple[bool, bool, tuple[str, ...]], dict[str, Any]]] = []
        states: builtins.list[dict[str, Any]] = []
        for m in batch:
            # A definition this store mapped (``due_schedules``, ``schedules_by_id``) is moved only
            # from the very version it was mapped from, and what is written is then known whole: it
            # is kept as the row's definition. Any other is moved on ``next_run_at`` alone, and its row
            # is mapped again on its next read (it may be stale in another field).
            read = self._mapped_version(m.schedule)
            state: dict[str, Any] = {"next_run_at": m.next_run_at, "updated_at": at}
            if m.runs:
                state["last_run_at"] = max(p.intended_at for p in m.runs)
            if m.anchor_at is not None:
                state["anchor_at"] = m.anchor_at
            if m.disable_reason is not None:
                state.update(enabled=False, disabled_reason=m.disable_reason)
            states.append(state)
            values = {k: to_db(v) if isinstance(v, datetime) else v for k, v in state.items()}
            values["version"] = version
            params = {f"v_{k}": v for k, v in values.items()}
            params.update(w_id=m.schedule.id, w_next=to_db(m.schedule.next_run_at), w_version=read)
            shape = (m.schedule.next_run_at is None, read is not None, tuple(sorted(values)))
            shapes.setdefault(shape, []).append(params)
            shaped.append((shape, params))

        def advance(unset: bool, versioned: bool, columns: tuple[str, ...]) -> Any:
            def build() -> Any:
                expected = (
                    s.c.next_run_at.is_(None) if unset else s.c.next_run_at == bindparam("w_next", type_=DateTime)
                )
                cond = and_(s.c.id == bindparam("w_id"), expected)
                if versioned:
                    cond = and_(cond, s.c.version == bindparam("w_version"))
                return update(s).where(cond).values({c: bindparam(f"v_{c}", type_=s.c[c].type) for c in columns})

            return self._prepared(("advance", unset, versioned, columns), build)

        def left(m: Materialization, versioned: bool, state: dict[str, Any]) -> ScheduleDefinition:
            """The schedule as this call wrote it (kept as the row's definition when it was moved from
            the version it was mapped from; otherwise the row is mapped again on its next read)."""
            written = m.schedule.with_state(**state)
            self._keep_mapped(version if versioned else None, written)
            return written

        def one_by_one(conn: Connection) -> builtins.list[Materialized | None]:
            self._lock_rows(conn, (m.schedule.id for m in batch))
            out: builtins.list[Materialized | None] = []
            for m, ((unset, versioned, columns), params), state in zip(batch, shaped, states, strict=True):
                if conn.execute(advance(unset, versioned, columns), params).rowcount != 1:
                    out.append(None)
                    continue
                created = []
                for p in m.runs:
                    run = self._planned_run(m.schedule, p, at, prepared=m.prepared)
                    if conn.execute(self._insert_run_statement(), run_row(run)).rowcount != 1:
                        continue
                    if p.skip_reason is not None:
                        run = self._fire_in(
                            conn, run, "skip", now=at, changes={"reason": p.skip_reason}, schedule=m.schedule
                        )
                    created.append(run)
                out.append(Materialized(created, left(m, versioned, state)))
            return out

        if len(batch) < self.batch_min or len({m.schedule.id for m in batch}) < len(batch):
            return self._tx(one_by_one)

        def work(conn: Connection) -> builtins.list[Materialized | None]:
            self._lock_rows(conn, (m.schedule.id for m in batch))
            moved: set[str] = set()
            for (unset, versioned, columns), rows in shapes.items():
                for k in range(0, len(rows), CLAIM_CHUNK):
                    moved |= self._advance_schedules(conn, unset, versioned, columns, rows[k : k + CLAIM_CHUNK])
            out: builtins.list[builtins.list[ScheduledRun] | None] = []
            staged: builtins.list[tuple[ScheduledRun, Any, ScheduleDefinition]] = []
            for m in batch:
                if m.schedule.id not in moved:
                    out.append(None)
                    continue
                mine = []
                for p in m.runs:
                    run = self._planned_run(m.schedule, p, at, prepared=m.prepared)
                    staged.append((run, p, m.schedule))
                    mine.append(run)
                out.append(mine)
            rows = [run_row(run) for run, _, _ in staged]
            inserted = 0
            for k in range(0, len(rows), CLAIM_CHUNK):
                inserted += self._direct.executemany(conn, self._insert_run_statement(), rows[k : k + CLAIM_CHUNK])
            created = {run.run_id for run, _, _ in staged}
            if inserted != len(staged):  # some occurrences already had a run: keep only ours
                r = schema.scheduled_runs
                created = set()
                for k in range(0, len(staged), CLAIM_CHUNK):
                    mine_ids = [run.run_id for run, _, _ in staged[k : k + CLAIM_CHUNK]]
                    created |= {row[0] for row in conn.execute(select(r.c.run_id).where(r.c.run_id.in_(mine_ids)))}
            skipped: dict[str, ScheduledRun] = {}
            for run, p, schedule in staged:
                if run.run_id in created and p.skip_reason is not None:
                    skipped[run.run_id] = self._fire_in(
                        conn, run, "skip", now=at, changes={"reason": p.skip_reason}, schedule=schedule
                    )
            return [
                None
                if runs is None
                else Materialized(
                    [skipped.get(r.run_id, r) for r in runs if r.run_id in created], left(m, shape[1], state)
                )
                for m, runs, state, (shape, _) in zip(batch, out, states, shaped, strict=True)
            ]

        return self._tx(work)

    def _advance_schedules(
        self,
        conn: Connection,
        unset: bool,
        versioned: bool,
        columns: tuple[str, ...],
        rows: builtins.list[dict[str, Any]],
    ) -> set[str]:
        """Move many schedules' ``next_run_at``, each only from the value it was read with (and, if
        ``versioned``, only from the version it was mapped from); the ids moved.

        The values every row shares go in one ``UPDATE ... WHERE (id, next_run_at[, version]) IN
        (...) RETURNING id`` (``next_run_at IS NULL`` for the unset); the values of their own follow,
        for the schedules moved, in one executemany. A plain ``id IN`` beside the row values is what
        makes SQLite look the rows up by primary key instead of reading the whole table.
        """
        s = schema.schedules
        first = rows[0]
        shared = tuple(c for c in columns if all_same([r[f"v_{c}"] for r in rows]))
        varying = tuple(c for c in columns if c not in shared)
        if varying:  # the fill writes these rows again: it sets their version too, or a new one is drawn
            varying += ("version",)

        # The row values each row is moved from: (column, the parameter read with).
        key = [("id", "w_id")] + ([] if unset else [("next_run_at", "w_next")])
        key += [("version", "w_version")] if versioned else []

        def build() -> Any:
            cond: Any = s.c.id.in_(bindparam("ids", expanding=True))
            if len(key) > 1:
                cond = and_(cond, tuple_(*(s.c[c] for c, _ in key)).in_(bindparam("keys", expanding=True)))
            if unset:
                cond = and_(cond, s.c.next_run_at.is_(None))
            values = {c: bindparam(f"v_{c}", type_=s.c[c].type) for c in shared}
            return update(s).where(cond).values(values).returning(s.c.id)

        params: dict[str, Any] = {f"v_{c}": first[f"v_{c}"] for c in shared}
        params["ids"] = [r["w_id"] for r in rows]
        if len(key) > 1:
            params["keys"] = [tuple(r[p] for _, p in key) for r in rows]
        statement = self._prepared(("advance_many", unset, versioned, shared), build)
        won = {row[0] for row in self._direct.execute(conn, statement, params)}
        if varying and won:
            own = [{"w_key": r["w_id"], **{f"v_{c}": r[f"v_{c}"] for c in varying}} for r in rows if r["w_id"] in won]
            self._direct.executemany(conn, self._fill_statement(s, "id", varying), own)
        return won

    def _planned_run(
        self, schedule: ScheduleDefinition, plan: Any, now: datetime, *, prepared: bool = False
    ) -> ScheduledRun:
        """The run a PlannedRun of ``schedule`` becomes."""
        return self._new_run(
            schedule,
            plan.intended_at,
            now,
            catch_up=plan.catch_up,
            coalesced_from=plan.coalesced_from,
            origin="catch_up" if plan.catch_up else "schedule",
            prepared=prepared,
        )

    def _new_run(
        self,
        schedule: ScheduleDefinition,
        intended_run_at: datetime,
        now: datetime,
        *,
        occurrence_key: str | None = None,
        origin: str = "schedule",
        params: dict[str, Any] | None = None,
        catch_up: bool = False,
        coalesced_from: int = 1,
        reason: str | None = None,
        prepared: bool = False,
    ) -> ScheduledRun:
        return ScheduledRun.from_fields(
            {
                "run_id": new_id("run"),
                "schedule_id": schedule.id,
                "schedule_name": schedule.name,
                "intended_run_at": intended_run_at
                if intended_run_at.tzinfo is UTC
                else intended_run_at.astimezone(UTC),
                "occurrence_key": occurrence_key or time_occurrence_key(intended_run_at),
                "origin": origin,
                "params": dict(schedule.params if params is None else params),
                "catch_up": catch_up,
                "coalesced_from": coalesced_from,
                "reason": reason,
                "prepared": prepared,
                "created_at": now,
                "updated_at": now,
            }
        )

    def pending_due(self, now: datetime, *, fresh: Iterable[ScheduledRun] = ()) -> builtins.list[ScheduledRun]:
        """Pending runs whose intended time has come, oldest first.

        ``fresh``: runs the calling transaction created and has not changed since; they are taken
        as they are instead of read back (after days down, tens of thousands of catch-up runs).
        """
        r = schema.scheduled_runs
        due = and_(r.c.status == RunStatus.PENDING.value, r.c.intended_run_at <= bindparam("now", type_=DateTime))
        order = (r.c.intended_run_at, r.c.created_at)
        known = {run.run_id: run for run in fresh}
        if not known:
            stmt = self._prepared("pending_due", lambda: select(r).where(due).order_by(*order))
            rows = self._tx(lambda c: c.execute(stmt, {"now": to_db(now)}).mappings().all())
            return [run_from(row) for row in rows]
        ids_stmt = self._prepared("pending_due_ids", lambda: select(r.c.run_id).where(due).order_by(*order))
        rows_stmt = self._prepared(
            "runs_by_id", lambda: select(r).where(r.c.run_id.in_(bindparam("ids", expanding=True)))
        )

        def work(conn: Connection) -> builtins.list[ScheduledRun]:
            ids = conn.execute(ids_stmt, {"now": to_db(now)}).scalars().all()
            unknown = [i for i in ids if i not in known]
            read: dict[str, ScheduledRun] = {}
            for k in range(0, len(unknown), CLAIM_CHUNK):
                rows = conn.execute(rows_stmt, {"ids": unknown[k : k + CLAIM_CHUNK]}).mappings()
                read.update((row["run_id"], run_from(row)) for row in rows)
            return [run for i in ids if (run := known.get(i) or read.get(i)) is not None]

        return self._tx(work)

    def finished_runs_after(
        self, cursor: tuple[datetime, str] | None, *, limit: int = 500
    ) -> builtins.list[ScheduledRun]:
        """Runs in a final status changed after ``cursor`` (updated_at, run_id), in that order: an export feed."""
        r = schema.scheduled_runs
        final = [
            s.value
            for s in (
                RunStatus.SUCCEEDED,
                RunStatus.FAILED,
                RunStatus.DEAD_LETTERED,
                RunStatus.SKIPPED,
                RunStatus.CANCELLED,
            )
        ]
        stmt = select(r).where(r.c.status.in_(final))
        if cursor is not None:
            at, run_id = to_db(cursor[0]), cursor[1]
            stmt = stmt.where(or_(r.c.updated_at > at, and_(r.c.updated_at == at, r.c.run_id > run_id)))
        stmt = stmt.order_by(r.c.updated_at, r.c.run_id).limit(limit)
        return [run_from(row) for row in self._tx(lambda c: c.execute(stmt).mappings().all())]

    def running_counts(self, schedule_ids: Iterable[str]) -> dict[str, int]:
        """How many runs of each schedule are running, on any worker.

        It reads every running run and counts those of ``schedule_ids``: running runs are few (the
        tasks in flight), while a search by schedule id, which SQLite's planner chose for some lists
        of ids, walks each schedule's whole history (docs/performance.md).
        """
        wanted = set(schedule_ids)
        if not wanted:
            return {}
        r = schema.scheduled_runs
        stmt = self._prepared(
            "running_counts", lambda: select(r.c.schedule_id).where(r.c.status == RunStatus.RUNNING.value)
        )
        running = self._tx(lambda c: c.execute(stmt).scalars().all())
        return dict(Counter(sid for sid in running if sid in wanted))

    def renew_leases(self, run_ids: Iterable[str], *, owner: str, until: datetime, now: datetime | None = None) -> int:
        """Extend the lease of running runs held by ``owner``; returns how many were still held."""
        ids = list(run_ids)
        if not ids:
            return 0
        r = schema.scheduled_runs
        at = to_db(now or self.clock.now())
        stmt = (
            update(r)
            .where(and_(r.c.run_id.in_(ids), r.c.status == RunStatus.RUNNING.value, r.c.owner == owner))
            .values(lease_expires_at=to_db(until), heartbeat_at=at)
        )
        return int(self._tx(lambda c: c.execute(stmt).rowcount))
