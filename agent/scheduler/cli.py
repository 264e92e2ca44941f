"""The operator's command line: ``python -m agent.scheduler [--db ...] <command> [--json]``.

Every command reads or changes the same store the worker uses. The commands that only read open
it read-only: they refuse a database that does not exist and create nothing. Any failure (unknown
names, invalid values, a database that is missing, locked or unreachable) prints one line on stderr
naming what is wrong, ``error: ...`` or under ``--json`` a JSON object ``{"error": "..."}``, and
exits with status 2, changing nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import pwd
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, cast
from zoneinfo import ZoneInfo

from sqlalchemy import select

from . import inbox, schema, service_files, triggers
from .arguments import (
    DB_CHARS,
    OneLineParser,
    database,
    database_from_environment,
    module_name,
    name_commands,
    shown,
    text_up_to,
    whole_number,
)
from .clock import Clock, SystemClock
from .config import GROUPS, Problem, env_example, mask_url
from .definition import ScheduleDefinition
from .engine import HEARTBEAT_SECONDS
from .engine.events import NO_LISTENER
from .engine.reconciliation import UP_AFTER_HEARTBEATS
from .enums import AlertStatus, EventStatus, ProposalStatus, RunStatus, TriggerType
from .errors import (
    DatabaseNotFound,
    InvalidSchedule,
    InvalidTransition,
    ScheduleNotFound,
    SchedulerError,
    SchemaMissing,
    StaleState,
    short,
)
from .identity import Approvers, Caller, InvalidIdentity
from .limits import MAX_PARAMS_DEPTH, json_depth
from .machines.diagrams import MACHINES, mermaid
from .outcome_words import recent_outcomes
from .proposals import ProposalService
from .records import ProposalRecord
from .settings import (
    ENV_FILE,
    Environment,
    Settings,
    check_settings,
    config_report,
    environment,
    read_environment,
)
from .store import ScheduleStore
from .tasks import TaskRegistry
from .views import (
    clip,
    event_dict,
    events_line,
    humanize,
    iso,
    letter_dict,
    next_run,
    parse_instant,
    proposal_dict,
    report_summary,
    run_dict,
    span,
    table,
)

#: Exit status for bad input: unknown names, invalid values.
EXIT_USAGE = 2
#: Task modules (comma-separated) the proposal commands load when no ``--tasks`` is given.
TASKS_ENV = "ACTP_SCHEDULER_TASKS"
#: How many upcoming runs ``status`` lists.
STATUS_NEXT_RUNS = 5
#: ``status`` counts the run outcomes recorded in this last span, in the words the worker logs them.
STATUS_RECENT = timedelta(hours=1)
#: ``runs --limit``: the most runs one listing shows.
MAX_RUNS_LIMIT = 10_000
#: ``simulate --count``: the most fire times one simulation lists.
MAX_SIMULATE_COUNT = 1000
#: ``dlq purge --older-than-days``: the oldest cut-off, in days (100 years).
MAX_PURGE_DAYS = 36_500
#: The longest window ``timeline --hours`` takes, in hours (31 days).
MAX_TIMELINE_HOURS = 744
#: Longest schedule name, run id, dead-letter id or proposal id taken, in characters (the store's name column).
NAME_CHARS = schema.NAME
#: Longest ``--worker-id``, in characters (the store's column for it).
WORKER_ID_CHARS = schema.NAME
#: Longest ``--reason`` recorded, in characters (as the registry's topics take).
REASON_CHARS = 500
#: Longest expression ``simulate`` takes, in characters (the store's expression column).
EXPRESSION_CHARS = 256
#: Longest ``--timezone`` name, in characters (the store's timezone column).
TIMEZONE_CHARS = 64
#: Largest proposal ``propose`` reads, in bytes (the registry takes 256 Ki characters); more is refused unread.
PROPOSAL_BYTES = 256 * 1024
#: Deepest nesting of JSON objects and arrays a proposal file may have: the proposal object around
#: its params, which may nest MAX_PARAMS_DEPTH deep (counting the params object itself).
PROPOSAL_DEPTH = MAX_PARAMS_DEPTH + 1
#: ``timeline`` lists this many upcoming fire times, plus each schedule's first (it counts them all).
TIMELINE_LIST_MAX = 30
#: An hour of the timeline strip with more runs than this shows counts (``[.356 x2]``) instead of one mark per run.
STRIP_MARKS_MAX = 12
#: One ASCII mark per run status in the timeline strip (the legend ``timeline`` prints).
STATUS_MARKS = {
    RunStatus.SUCCEEDED: ".",
    RunStatus.FAILED: "x",
    RunStatus.SKIPPED: "s",
    RunStatus.DEAD_LETTERED: "D",
    RunStatus.CANCELLED: "c",
    RunStatus.PAUSED: "p",
    RunStatus.RUNNING: ">",
    RunStatus.PENDING: "-",
}
#: How many of the latest events ``status`` looks through for names no schedule listens to.
STATUS_EVENTS = 50
#: Commands that read no database: they work when it cannot be opened.
OFFLINE_COMMANDS = frozenset({"config", "install-service", "diagram"})
#: Commands that only read: they open the database read-only and refuse one that does not exist.
READ_COMMANDS = frozenset({"list", "runs", "simulate", "alerts", "reconcile", "status", "timeline"})
#: ``dlq`` actions that only read.
READ_DLQ_ACTIONS = frozenset({"list", "show"})
#: Width of the free-text column of a table (a reason, an error), cut at a word boundary beyond it.
TEXT_COLUMN_CHARS = 70


class CliError(Exception):
    """A problem with what the operator asked; printed as one line, exit status 2."""


class Commands:
    """One method per command; each returns what to print (text) or to dump (JSON)."""

    def __init__(
        self,
        store: ScheduleStore,
        clock: Clock,
        out: TextIO,
        as_json: bool,
        *,
        settings: Settings | None = None,
        problems: Sequence[Problem] = (),
        environ: Environment | None = None,
    ) -> None:
        self.store, self.clock, self.out, self.as_json = store, clock, out, as_json
        self.environment = Environment(read_environment()) if environ is None else environ
        """The environment the settings were read from (``main``: the process's over ``./.env``)."""
        self.environ: Mapping[str, str] = self.environment.values
        if settings is None:
            settings, found = check_settings(self.environ)
            problems = [*self.environment.problems, *problems, *found]
        self.settings, self.problems = settings, list(problems)

    def _approvers(self) -> Approvers:
        self.setting_problem(*APPROVER_SETTINGS)
        return self.settings.approvers()

    def _tasks_from_environment(self) -> list[str]:
        """The task modules of TASKS_ENV (comma separated); CliError naming it when one is bad."""
        self.setting_problem(TASKS_ENV)
        try:
            return [module_name(name) for name in self.settings.task_modules]
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"{TASKS_ENV}: {exc}") from None

    def setting_problem(self, *variables: str) -> None:
        """Refuse, naming it, when one of ``variables`` is set to a value it does not allow."""
        for problem in self.problems:
            if problem.variable in variables:
                raise CliError(f"{problem.variable}={problem.shown!r}: {problem.allowed}")

    def emit(self, data: Any, text: str) -> None:
        self.out.write((json.dumps(data, indent=2, default=str) if self.as_json else text) + "\n")

    def list(self, args: argparse.Namespace) -> None:
        now = self.clock.now()
        latest = self.store.latest_runs()
        items: list[dict[str, Any]] = []
        for s in self.store.list(enabled=None if args.all else True):
            nxt = next_run(s, now)
            last = latest.get(s.id)
            items.append(
                {
                    "name": s.name,
                    "trigger_type": s.trigger_type.value,
                    "expression": s.expression,
                    "timezone": s.timezone,
                    "target": s.target,
                    "enabled": s.enabled,
                    "next_run_at": iso(nxt),
                    "next_run_local": iso(nxt.astimezone(ZoneInfo(s.timezone))) if nxt else None,
                    "next_run_in": humanize(nxt - now) if nxt else None,
                    "last_status": last.status.value if last else None,
                    "last_run_at": iso(last.intended_run_at) if last else None,
                    "breaker_state": s.breaker_state.value,
                    "source": s.source.value,
                }
            )
        rows = [
            [
                i["name"],
                f"{i['trigger_type']} {i['expression']}",
                f"{i['next_run_local'][:19].replace('T', ' ')} {i['timezone']} ({i['next_run_in']})"
                if i["next_run_local"]
                else ("disabled" if not i["enabled"] else "-"),
                i["last_status"] or "-",
                i["breaker_state"],
            ]
            for i in items
        ]
        text = table(rows, ["NAME", "TRIGGER", "NEXT RUN", "LAST", "BREAKER"]) if rows else "no schedules"
        self.emit(items, text)

    def runs(self, args: argparse.Namespace) -> None:
        if args.schedule is not None:
            self._schedule_option(args.schedule)
        runs = self.store.runs(schedule=args.schedule, status=args.status, limit=args.limit, newest_first=True)
        rows = [
            [
                r.run_id,
                r.schedule_name,
                r.intended_run_at.isoformat(timespec="seconds"),
                r.status.value,
                str(r.attempt),
                clip(r.reason or r.error or "", TEXT_COLUMN_CHARS),
            ]
            for r in runs
        ]
        text = table(rows, ["RUN", "SCHEDULE", "INTENDED (UTC)", "STATUS", "TRY", "REASON"]) if rows else "no runs"
        self.emit([run_dict(r) for r in runs], text)

    def disable(self, args: argparse.Namespace) -> None:
        s = self.store.disable(args.name, reason=args.reason)
        self.emit({"name": s.name, "enabled": s.enabled, "reason": s.disabled_reason}, f"{s.name} disabled")

    def enable(self, args: argparse.Namespace) -> None:
        s = self.store.enable(args.name)
        self.emit({"name": s.name, "enabled": s.enabled}, f"{s.name} enabled")

    def run_now(self, args: argparse.Namespace) -> None:
        schedule = self.store.get(args.name)
        run = self.store.create_run(
            schedule, self.clock.now(), occurrence_key=f"manual:{uuid.uuid4().hex}", origin="manual"
        )
        assert run is not None
        self.emit(run_dict(run), f"run {run.run_id} of {schedule.name} queued (pending); the worker starts it")

    def emit_event(self, args: argparse.Namespace) -> None:
        """``emit NAME [--payload JSON]``: write an event to the inbox as the user running the command.

        (Named apart from ``emit``, which prints a command's answer.)
        """
        event = inbox.emit_event(self.store, args.name, args.payload, by=operator_caller())
        text = (
            f"event {event.name} ({event.id}) queued by {event.emitted_by}; a worker runs the schedules listening to it"
        )
        self.emit(event_dict(event), text)

    def simulate(self, args: argparse.Namespace) -> None:
        now = self.clock.now()
        try:
            schedule = self.store.get(args.target)
            trigger, zone = schedule.trigger(schedule.anchor_at or schedule.created_at or now), schedule.timezone
        except (ScheduleNotFound, InvalidSchedule):  # no such name, or text no name could be
            kind = args.type or (
                "calendar" if " " in args.target.strip() or args.target.startswith("@") else "interval"
            )
            try:
                trigger, zone = triggers.build_trigger(kind, args.target, args.timezone, anchor=now), args.timezone
            except InvalidSchedule:
                if args.type is not None or kind == "calendar" or args.target.strip()[:1].isdigit():
                    raise
                # One word that does not start as a number: the operator meant a schedule's name.
                raise CliError(
                    f"simulate: no schedule named {short(args.target)} (nor is it an interval such as 15m "
                    "or a cron expression); list shows the names"
                ) from None
        times: list[datetime] = []
        cursor = now
        while len(times) < args.count:
            nxt = trigger.next_after(cursor)
            if nxt is None:
                break
            times.append(nxt)
            cursor = nxt
        local = ZoneInfo(zone)
        data = [{"utc": iso(t), "local": iso(t.astimezone(local)), "in": humanize(t - now)} for t in times]
        text = "\n".join(f"{d['local']}  ({d['in']})" for d in data) or "no future occurrences"
        self.emit(data, text)

    def diagram(self, args: argparse.Namespace) -> None:
        names = list(MACHINES) if args.machine == "all" else [args.machine]
        data = {name: mermaid(name) for name in names}
        self.emit(data, "\n".join(f"```mermaid\n{text}```" for text in data.values()))

    def reset(self, args: argparse.Namespace) -> None:
        schedule = self.store.get(args.name)
        try:
            s = self.store.transition_breaker(schedule, "reset")
        except StaleState as exc:
            raise CliError(f"reset {schedule.name}: its breaker changed meanwhile ({exc}); look again") from None
        except InvalidTransition as exc:
            raise CliError(
                f"reset {schedule.name}: its breaker is {exc.state}; only an open breaker is reset"
            ) from None
        self.emit({"name": s.name, "breaker_state": s.breaker_state.value}, f"{s.name}: breaker closed, runs resume")

    def dlq(self, args: argparse.Namespace) -> None:
        action = args.action
        if action == "list":
            letters = [d for d in self.store.dead_letters(args.schedule, include_replayed=args.all)]
            if args.schedule is not None and not letters:
                self._schedule_option(args.schedule)  # a name no schedule has is a mistake, not "no dead letters"
            rows = [
                [
                    d.run_id,
                    d.schedule_name,
                    d.intended_run_at.isoformat(timespec="seconds"),
                    str(d.attempts),
                    clip(d.error or "", TEXT_COLUMN_CHARS),
                    "replayed" if d.replayed_at else "",
                ]
                for d in letters
            ]
            text = (
                table(rows, ["RUN", "SCHEDULE", "INTENDED (UTC)", "TRIES", "ERROR", ""]) if rows else "no dead letters"
            )
            self.emit([letter_dict(d) for d in letters], text)
        elif action == "show":
            letter = self.store.dead_letter(self._one(args))
            data = letter_dict(letter)
            text = "\n".join(f"{k}: {v}" for k, v in data.items() if k != "error_traceback")
            self.emit(data, text + f"\n{letter.error_traceback or ''}".rstrip())
        elif action == "replay":
            run = self.store.replay_dead_letter(self._one(args), actor=operator_caller().id, force=args.force)
            self.emit(run_dict(run), f"run {run.run_id} of {run.schedule_name} replayed: pending, attempt 1")
        else:
            if args.older_than_days is None:
                raise CliError("dlq purge needs --older-than-days N")
            n = self.store.purge_dead_letters(timedelta(days=args.older_than_days))
            self.emit({"purged": n}, f"{n} dead letter(s) purged")

    def events(self, args: argparse.Namespace) -> None:
        """``events [list|purge]``: the event inbox, newest first; or delete events consumed long ago."""
        if args.action == "purge":
            if args.older_than_days is None:
                raise CliError("events purge needs --older-than-days N")
            cutoff = self.clock.now() - timedelta(days=args.older_than_days)
            n = self.store.purge_events(consumed_before=cutoff)
            self.emit({"purged": n}, f"{n} consumed event(s) purged (pending ones are kept)")
            return
        found = self.store.events(args.status, limit=args.limit)
        rows = [
            [
                e.emitted_at.strftime("%Y-%m-%d %H:%M:%S"),
                e.name,
                e.emitted_by,
                e.status.value,
                "" if e.status is EventStatus.PENDING else str(len(e.run_ids)),
                clip(e.reason or "", TEXT_COLUMN_CHARS),
            ]
            for e in found
        ]
        text = table(rows, ["EMITTED (UTC)", "NAME", "BY", "STATUS", "RUNS", "REASON"]) if rows else "no events"
        self.emit([event_dict(e) for e in found], text)

    def _schedule_option(self, name: str) -> None:
        """CliError naming ``--schedule`` when no schedule has this name."""
        try:
            self.store.get(name)
        except ScheduleNotFound as exc:
            raise CliError(f"--schedule: {exc}") from None

    @staticmethod
    def _one(args: argparse.Namespace) -> str:
        if not args.id:
            raise CliError(f"dlq {args.action} needs a run id or dead-letter id")
        return str(args.id)

    def alerts(self, args: argparse.Namespace) -> None:
        alerts = self.store.alerts(status=args.status)
        rows = [
            [
                a.created_at.isoformat(timespec="seconds") if a.created_at else "",
                a.kind,
                a.status,
                str(a.attempts),
                clip(a.text.splitlines()[0] if a.text else "", TEXT_COLUMN_CHARS),
            ]
            for a in alerts
        ]
        data = [
            {
                "id": a.id,
                "kind": a.kind,
                "status": a.status,
                "attempts": a.attempts,
                "text": a.text,
                "last_error": a.last_error,
                "created_at": iso(a.created_at),
            }
            for a in alerts
        ]
        self.emit(data, table(rows, ["CREATED (UTC)", "KIND", "STATUS", "TRIES", "TEXT"]) if rows else "no alerts")

    def reconcile(self, args: argparse.Namespace) -> None:
        if not args.dry_run:
            raise CliError("reconcile only runs as --dry-run here; the worker reconciles when it starts")
        from .engine import ScheduleEngine
        from .tasks import TaskRegistry

        engine = ScheduleEngine(self.store, TaskRegistry(), clock=self.clock, worker_id=args.worker_id)
        report = asyncio.run(engine.reconcile_dry_run())
        lines = [report.summary(), *(f"- {a}" for a in report.actions), *(f"! {w}" for w in report.warnings)]
        self.emit(report.to_dict(), "\n".join(lines))

    # ------------------------------------------------------------------ agent proposals

    def _proposal_service(self, modules: Sequence[str] = ()) -> ProposalService:
        tasks = TaskRegistry()
        if not modules:
            self.setting_problem(TASKS_ENV)
        names = list(modules) or self.settings.task_modules
        if not names:
            raise CliError(
                f"the worker's tasks are needed to check a proposal's target: pass --tasks MODULE or set {TASKS_ENV}"
            )
        if not modules:
            try:
                names = [module_name(name) for name in names]
            except argparse.ArgumentTypeError as exc:
                raise CliError(f"{TASKS_ENV}: {exc}") from None
        for name in names:
            try:
                module = importlib.import_module(name.strip())
            except ImportError as exc:
                raise CliError(f"--tasks {name}: cannot import it: {exc}") from exc
            except Exception as exc:  # the module's own code failed while it was imported
                raise CliError(f"--tasks {name}: importing it failed: {type(exc).__name__}: {exc}") from exc
            register = getattr(module, "register", None)
            if not callable(register):
                raise CliError(f"--tasks {name}: the module has no register(tasks, store) function")
            try:
                register(tasks, self.store)
            except SchedulerError:
                raise
            except Exception as exc:
                raise CliError(
                    f"--tasks {name}: its register(tasks, store) failed: {type(exc).__name__}: {exc}"
                ) from exc
        return ProposalService(self.store, tasks, self.clock, approvers=self._approvers())

    def propose(self, args: argparse.Namespace) -> None:
        data = read_proposal(args.file)
        service = self._proposal_service(args.tasks)
        service.expire_overdue()
        record = service.submit(data, by=operator_caller())
        self.emit({"proposal": proposal_dict(record), "report": record.report}, _proposal_report_text(record))
        if record.status == ProposalStatus.REJECTED.value:
            raise CliError(f"proposal {record.id} rejected: the report above names each rule it breaks")

    def proposals(self, args: argparse.Namespace) -> None:
        service = ProposalService(self.store, TaskRegistry(), self.clock)
        service.expire_overdue()
        records = service.list(args.status)
        rows = [
            [
                r.id,
                r.name,
                r.status,
                r.proposed_by,
                str((r.report or {}).get("risk_tier") or "-"),
                r.decided_by or "-",
                clip(r.decision_reason or "", TEXT_COLUMN_CHARS),
            ]
            for r in records
        ]
        headers = ["ID", "NAME", "STATUS", "BY", "TIER", "DECIDED BY", "REASON"]
        self.emit([proposal_dict(r) for r in records], table(rows, headers) if rows else "no proposals")

    def approve(self, args: argparse.Namespace) -> None:
        service = self._proposal_service(args.tasks)
        by = operator_caller()
        record = service.approve(args.id, by=by, reason=args.reason)
        where = f"active as schedule {record.schedule_id}" if record.schedule_id else f"{record.status}"
        self.emit(proposal_dict(record), f"proposal {record.id} ({record.name}) approved by {by.id}: {where}")

    def reject(self, args: argparse.Namespace) -> None:
        by = operator_caller()
        service = ProposalService(self.store, TaskRegistry(), self.clock, approvers=self._approvers())
        record = service.reject(args.id, by=by, reason=args.reason)
        self.emit(proposal_dict(record), f"proposal {record.id} ({record.name}) rejected by {by.id}: {args.reason}")

    # ------------------------------------------------------------------ operations: status, timeline, config, service

    def status(self, args: argparse.Namespace) -> None:
        """Engine up or down, workers, runs in flight, last reconciliation, breakers, dead letters, alerts, next runs.

        A worker is up while its heartbeat (``engine_state`` ``worker:<id>``) is younger than
        UP_AFTER_HEARTBEATS heartbeat intervals and it has not written its clean-shutdown marker.
        """
        now = self.clock.now()
        running = self.store.runs(status=RunStatus.RUNNING)
        by_owner = Counter(r.owner or "(no owner)" for r in running)
        workers = [_worker_view(value, now, by_owner) for value in _worker_states(self.store).values()]
        workers.sort(key=lambda w: (not w["up"], w["worker_id"]))
        up = [w for w in workers if w["up"]]
        reports = self.store.reports(limit=1)
        last = reports[0] if reports else None
        breakers = self.store.open_breakers()
        letters = self.store.dead_letters(include_replayed=False)
        unsent = (AlertStatus.PENDING, AlertStatus.SENDING, AlertStatus.UNDELIVERABLE)
        alerts = {s.value: len(self.store.alerts(status=s)) for s in unsent}
        upcoming = sorted(
            ((nxt, s) for s in self.store.list() if (nxt := next_run(s, now)) is not None), key=lambda p: p[0]
        )[:STATUS_NEXT_RUNS]
        events = self.store.events(limit=STATUS_EVENTS)
        outcomes = recent_outcomes(self.store.runs(updated_since=now - STATUS_RECENT))
        data: dict[str, Any] = {
            "engine": "up" if up else "down",
            "now": iso(now),
            "database": mask_url(self.store.url),
            "heartbeat_limit_seconds": UP_AFTER_HEARTBEATS * HEARTBEAT_SECONDS,
            "workers": workers,
            "in_flight": {
                "total": len(running),
                "by_owner": dict(sorted(by_owner.items())),
                "runs": [
                    {
                        "run_id": r.run_id,
                        "schedule": r.schedule_name,
                        "owner": r.owner,
                        "started_at": iso(r.started_at),
                        "lease_expires_at": iso(r.lease_expires_at),
                    }
                    for r in running
                ],
            },
            "last_reconciliation": None
            if last is None
            else {
                "worker_id": last.worker_id,
                "started_at": iso(last.started_at),
                "finished_at": iso(last.finished_at),
                "summary": report_summary(last.report) or "unreadable report",
                "report": last.report,
            },
            "open_breakers": [
                {
                    "name": s.name,
                    "opened_at": iso(s.breaker_opened_at),
                    "consecutive_failures": s.consecutive_failures,
                    "cooldown_seconds": s.breaker_cooldown.total_seconds() if s.breaker_cooldown else None,
                }
                for s in breakers
            ],
            "dead_letters": len(letters),
            "alerts": alerts,
            "events": {
                "pending": self.store.count_events(EventStatus.PENDING),
                "last": event_dict(events[0]) if events else None,
                "no_listener": sorted({e.name for e in events if e.reason == NO_LISTENER}),
            },
            "next_runs": [
                {
                    "schedule": s.name,
                    "at": iso(at),
                    "in": humanize(at - now),
                    "breaker_state": s.breaker_state.value,
                }
                for at, s in upcoming
            ],
            "recent_outcomes": {
                "hours": STATUS_RECENT.total_seconds() / 3600,
                "schedules": {
                    name: {"counts": r["counts"], "last": r["last"], "last_at": iso(r["last_at"])}
                    for name, r in outcomes.items()
                },
            },
        }
        self.emit(data, _status_text(data, now))

    def timeline(self, args: argparse.Namespace) -> None:
        """Fire times in the next ``--hours`` and the runs of the last ``--hours`` by outcome, hour by hour.

        The strip shows one ASCII mark per run (STATUS_MARKS: ``.`` succeeded, ``x`` failed, ``s``
        skipped, ``D`` dead-lettered, ``c`` cancelled, ``p`` paused, ``>`` running, ``-`` pending), or
        counts such as ``[.356 x2]`` for an hour of more than STRIP_MARKS_MAX runs.
        """
        if (args.name is None) == (not args.all):
            raise CliError("timeline needs a schedule NAME or --all (not both)")
        zone = triggers.parse_timezone(args.timezone)
        now = self.clock.now()
        window = timedelta(hours=args.hours)
        schedules = [self.store.get(args.name)] if args.name is not None else self.store.list()
        upcoming, totals, notes = _upcoming(schedules, now, now + window)
        since = now - window
        past = _runs_since(self.store, since, now, schedules[0].id if args.name is not None else None)
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        marks: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        for name, status, at in past:
            counts[name][status] += 1
            marks[name].append((at, status))
        strips = {name: _strip(items, zone) for name, items in sorted(marks.items())}
        data: dict[str, Any] = {
            "now": iso(now),
            "hours": args.hours,
            "timezone": args.timezone,
            "schedules": [s.name for s in schedules],
            "upcoming": [
                {
                    "schedule": name,
                    "at": iso(at),
                    "local": iso(at.astimezone(zone)),
                    "in": humanize(at - now),
                    "overdue": at <= now,
                }
                for at, name in _shown(upcoming)
            ],
            "upcoming_total": sum(totals.values()),
            "upcoming_by_schedule": totals,
            "notes": notes,
            "past": {
                "since": iso(since),
                "counts": {name: dict(sorted(c.items())) for name, c in sorted(counts.items())},
                "hours": strips,
            },
            "legend": {mark: status.value for status, mark in STATUS_MARKS.items()},
        }
        self.emit(data, _timeline_text(data, zone))

    def config(self, args: argparse.Namespace) -> None:
        if args.env_example:
            self.out.write(env_example())
            return
        config = config_report(self.environment)
        problems = config.problems
        rows = config.display()
        for row in rows:
            if row["source"] == "unset" and row["name"] in _COMPUTED_DEFAULTS and not problems:
                row["value"], row["source"] = _COMPUTED_DEFAULTS[row["name"]](self.settings), "computed"
        database = {
            "value": mask_url(args.db or self.settings.scheduler_db),
            "source": "--db"
            if args.db
            else ("ACTP_SCHEDULER_DB" if self.settings.is_set("ACTP_SCHEDULER_DB") else "default"),
        }
        data = {
            "database": database,
            "variables": rows,
            "services": config.services,
            "warnings": list(config.warnings),
            "problems": [{"variable": p.variable, "value": p.shown, "allowed": p.allowed} for p in problems],
        }
        self.emit(data, _config_text(data, show_all=args.all))
        if problems:
            raise CliError(
                f"{len(problems)} variable(s) invalid: " + "; ".join(f"{p.variable}: {p.allowed}" for p in problems)
            )

    def install_service(self, args: argparse.Namespace) -> None:
        system = service_files.current_system(None if args.system is None else _SYSTEM_NAMES[args.system])
        environ = self.environ
        where = service_files.placement(
            db=args.service_db or args.db,
            tasks=args.service_tasks or self._tasks_from_environment(),
            workdir=args.workdir,
            python=args.python,
            worker=args.worker,
            environ=environ,
        )
        service = service_files.service_file(system, where, environ=environ)
        data: dict[str, Any] = {
            "system": system,
            "manager": service.manager,
            "path": str(service.path),
            "load_command": service.load_command,
            "reload_command": service.reload_command,
            "notes": list(service.notes),
        }
        if args.print:
            data["content"] = service.content
            if self.as_json:
                self.emit(data, "")
            else:
                self.out.write(service.content)
                print(f"# write it to {service.path}, then load it with: {service.load_command}", file=sys.stderr)
            return
        done = service_files.install(service, where)
        data["action"] = done.action
        lines = [f"{done.action} {service.path} ({service.manager})", f"load it with: {service.load_command}"]
        if done.action == "replaced":
            lines.append(f"if it is loaded already, apply the change with: {service.reload_command}")
        lines += [f"({note})" for note in service.notes]
        if where.db is not None and "://" in where.db and mask_url(where.db) != where.db:
            lines.append("note: the --db URL's password is in the service file; ACTP_SCHEDULER_DB in .env keeps it out")
        self.emit(data, "\n".join(lines))


def read_proposal(name: str) -> Any:
    """The proposal in file ``name`` (``-``: stdin), parsed; at most PROPOSAL_BYTES are read, whatever the source.

    A FIFO, a device such as ``/dev/zero`` or a pipe that never ends costs one bounded read. Anything
    that is not a readable file of UTF-8 JSON within the size and PROPOSAL_DEPTH is refused with
    one line naming the file.
    """
    label = f"propose {name if name.isprintable() else repr(name)}"
    try:
        if name == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            if stdin is None:
                raise CliError("propose -: there is no standard input to read the proposal from")
            raw = stdin.read(PROPOSAL_BYTES + 1)
        else:
            with open(name, "rb") as source:
                raw = source.read(PROPOSAL_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise CliError(f"{label}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    if len(raw) > PROPOSAL_BYTES:
        raise CliError(f"{label}: bigger than {PROPOSAL_BYTES // 1024} KiB, the most a proposal may be")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{label}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise CliError(f"{label}: JSON nested deeper than {PROPOSAL_DEPTH} levels") from None
    except ValueError as exc:
        raise CliError(f"{label}: not JSON: {exc}") from None
    if json_depth(data) > PROPOSAL_DEPTH:
        raise CliError(f"{label}: JSON nested deeper than {PROPOSAL_DEPTH} levels")
    return data


def _proposal_report_text(r: ProposalRecord) -> str:
    report = r.report or {}
    head = f"proposal {r.id} ({r.name}) by {r.proposed_by}: {r.status}"
    if r.schedule_id:
        head += f", schedule {r.schedule_id}"
    if r.expires_at:
        head += f", approve before {iso(r.expires_at)}"
    policy_reason = report.get("decision_reason", "")
    if report.get("decision") == "approve" or r.decision_reason != policy_reason:
        lines = [head, f"decision: {r.decision_reason}"]
    else:
        lines = [head, f"decision: {report.get('decision')}"]
    if report.get("risk_tier"):
        lines.append(f"risk: {report.get('tier_reason')} (bundle {report.get('bundle')})")
    simulation = report.get("simulation")
    if simulation:
        lines.append(f"simulation: {simulation.get('note')}")
        upcoming = simulation.get("fires_24h") or simulation.get("fires_7d") or []
        if upcoming:
            lines.append("next: " + ", ".join(upcoming[:5]) + (" ..." if len(upcoming) > 5 else ""))
    defaults = report.get("defaults_applied") or {}
    if defaults:
        lines.append("defaults: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in defaults.items()))
    for title, key in (
        ("schema", "schema_errors"),
        ("semantic", "semantic_errors"),
        ("policy", "policy_violations"),
        ("hold", "hold_reasons"),
        ("warning", "conflict_warnings"),
    ):
        for f in report.get(key) or []:
            lines.append(f"{title}: {f['rule']} ({f['field']}): {f['message']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- status, timeline and config helpers


def _worker_states(store: ScheduleStore) -> dict[str, dict[str, Any]]:
    """The heartbeat of every worker: ``engine_state`` entries keyed ``worker:<id>``.

    STOPGAP: the store has ``get_state(key)`` but no way to list keys; this reads the table inside
    the store's transaction helper. Replace with ``store.states(prefix="worker:")`` once it exists.
    """
    e = schema.engine_state
    stmt = select(e.c.key, e.c.value).where(e.c.key.like("worker:%")).order_by(e.c.key)
    rows = store._tx(lambda c: c.execute(stmt).all())
    return {str(k): v for k, v in rows if str(k).startswith("worker:") and isinstance(v, dict)}


def _runs_since(
    store: ScheduleStore, since: datetime, until: datetime, schedule_id: str | None
) -> list[tuple[str, str, datetime]]:
    """(schedule name, status, intended time) of the runs intended within [since, until], oldest first.

    STOPGAP: ``store.runs()`` has no time window and would map every run ever kept; this reads three
    columns inside the store's transaction helper. Replace with ``store.runs(since=, until=)``.
    """
    r = schema.scheduled_runs
    stmt = (
        select(r.c.schedule_name, r.c.status, r.c.intended_run_at)
        .where(r.c.intended_run_at >= _naive(since), r.c.intended_run_at <= _naive(until))
        .order_by(r.c.intended_run_at, r.c.run_id)
    )
    if schedule_id is not None:
        stmt = stmt.where(r.c.schedule_id == schedule_id)
    rows = store._tx(lambda c: c.execute(stmt).all())
    return [(str(name), str(status), at.replace(tzinfo=UTC)) for name, status, at in rows]


def _naive(instant: datetime) -> datetime:
    # The database holds naive UTC (as the store writes it).
    return instant.astimezone(UTC).replace(tzinfo=None)


def _worker_view(value: dict[str, Any], now: datetime, running: Counter[str]) -> dict[str, Any]:
    """One worker's liveness from its heartbeat (``ScheduleEngine._state_value``)."""
    worker_id = str(value.get("worker_id") or "?")
    beat = parse_instant(value.get("heartbeat_at"))
    started = parse_instant(value.get("started_at"))
    # A worker ticking less often than the heartbeat interval beats at its tick (when it says so).
    every = max(HEARTBEAT_SECONDS, float(value.get("tick_seconds") or 0))
    limit = timedelta(seconds=UP_AFTER_HEARTBEATS * every)
    if value.get("clean"):
        up, why = False, f"stopped cleanly {humanize((parse_instant(value.get('stopped_at')) or beat or now) - now)}"
    elif beat is None:
        up, why = False, "no heartbeat recorded"
    elif now - beat > limit:
        up, why = False, f"last heartbeat {span(now - beat)} ago: crashed, killed or asleep (not stopped cleanly)"
    else:
        up, why = True, f"heartbeat {span(now - beat)} ago"
    return {
        "worker_id": worker_id,
        "up": up,
        "state": why,
        "host": value.get("host"),
        "pid": value.get("pid"),
        "boot_id": value.get("boot_id"),
        "started_at": iso(started),
        "uptime_seconds": (now - started).total_seconds() if up and started else None,
        "uptime": span(now - started) if up and started else None,
        "heartbeat_at": iso(beat),
        "running": running.get(worker_id, 0),
    }


def _status_text(data: dict[str, Any], now: datetime) -> str:
    workers = data["workers"]
    up = [w for w in workers if w["up"]]
    lines = [f"engine: {data['engine']} ({len(up)} of {len(workers)} worker(s) up) on {data['database']}"]
    for w in workers:
        where = f"pid {w['pid']} on {w['host']}" if w["pid"] else ""
        extra = f", up {w['uptime']}" if w["uptime"] else ""
        lines.append(f"  {w['worker_id']}: {'up' if w['up'] else 'down'}, {w['state']}{extra}; {where}".rstrip("; "))
    if not workers:
        lines.append("  no worker has ever started on this database")
    flight = data["in_flight"]
    owners = ", ".join(f"{owner} {n}" for owner, n in flight["by_owner"].items())
    lines.append(f"in flight: {flight['total']} run(s)" + (f" ({owners})" if owners else ""))
    last = data["last_reconciliation"]
    if last is None:
        lines.append("last reconciliation: none")
    else:
        lines.append(f"last reconciliation: {last['started_at']} by {last['worker_id']}: {last['summary']}")
    breakers = data["open_breakers"]
    shown = ", ".join(f"{b['name']} ({b['consecutive_failures']} failures)" for b in breakers)
    lines.append(f"open breakers: {shown or 'none'}" + (" (reset NAME closes one)" if breakers else ""))
    lines.append(f"dead letters: {data['dead_letters']}" + (" (dlq list)" if data["dead_letters"] else ""))
    alerts = data["alerts"]
    pending, undeliverable = alerts[AlertStatus.PENDING.value], alerts[AlertStatus.UNDELIVERABLE.value]
    lines.append(f"unsent alerts: {pending} pending, {undeliverable} undeliverable")
    lines.append(events_line(data["events"]))
    if data["events"]["no_listener"]:
        lines.append(f"  {NO_LISTENER} to: " + ", ".join(data["events"]["no_listener"]))
    recent = data["recent_outcomes"]
    window = f"last {recent['hours']:g} hour(s)"
    lines.append(f"outcomes in the {window}:" if recent["schedules"] else f"outcomes in the {window}: none")
    for name, r in recent["schedules"].items():
        counts = ", ".join(f"{word} {n}" for word, n in r["counts"].items())
        last = f"; last: {r['last']} at {r['last_at']}" if r["last"] else ""
        lines.append(f"  {name}: {counts}{last}")
    lines.append("next runs:" if data["next_runs"] else "next runs: none")
    for n in data["next_runs"]:
        flag = "" if n["breaker_state"] == "closed" else f" [breaker {n['breaker_state']}]"
        at = parse_instant(n["at"]) or now
        lines.append(f"  {at.strftime('%Y-%m-%d %H:%M:%S')} UTC  {n['schedule']}  ({n['in']}){flag}")
    return "\n".join(lines)


def _upcoming(
    schedules: list[ScheduleDefinition], now: datetime, end: datetime
) -> tuple[list[tuple[datetime, str]], dict[str, int], dict[str, str]]:
    """Fire times in (now, end] of each schedule (at most TIMELINE_LIST_MAX each), merged; counts; notes."""
    fires: list[tuple[datetime, str]] = []
    totals: dict[str, int] = {}
    notes: dict[str, str] = {}
    for s in schedules:
        if not s.enabled:
            notes[s.name] = f"disabled: no runs ({s.disabled_reason})" if s.disabled_reason else "disabled: no runs"
            continue
        if not s.is_time_based:
            notes[s.name] = f"{s.trigger_type.value} {s.expression}: runs when that happens, not at set times"
            continue
        if s.breaker_state.value != "closed":
            notes[s.name] = f"breaker {s.breaker_state.value}: occurrences produce no runs until it closes"
        trigger = s.trigger(s.anchor_at or s.created_at or now)
        times = trigger.occurrences(now, end, limit=TIMELINE_LIST_MAX)
        count = trigger.count(now, end)
        if s.next_run_at is not None and s.next_run_at <= now:
            times.insert(0, s.next_run_at)  # overdue: the worker runs it (or its missed-run policy) next
            count += 1
        totals[s.name] = count
        fires += [(t, s.name) for t in times]
    fires.sort()
    return fires, totals, notes


def _shown(fires: list[tuple[datetime, str]]) -> list[tuple[datetime, str]]:
    """The soonest TIMELINE_LIST_MAX fires, plus the first of each schedule that they leave out (a busy
    poller must not hide the daily report)."""
    shown = fires[:TIMELINE_LIST_MAX]
    present = {name for _, name in shown}
    for at, name in fires[TIMELINE_LIST_MAX:]:
        if name not in present:
            shown.append((at, name))
            present.add(name)
    return sorted(shown)


def _strip(items: list[tuple[datetime, str]], zone: ZoneInfo) -> list[dict[str, Any]]:
    """Runs grouped by the hour (in ``zone``) of their intended time: one mark per run, or counts when many."""
    hours: dict[datetime, list[str]] = defaultdict(list)
    for at, status in items:
        local = at.astimezone(zone)
        hours[local.replace(minute=0, second=0, microsecond=0)].append(status)
    out = []
    for hour, statuses in sorted(hours.items()):
        marks = [STATUS_MARKS.get(RunStatus(s), "?") if s in _STATUS_VALUES else "?" for s in statuses]
        if len(marks) > STRIP_MARKS_MAX:
            tally = Counter(marks)
            order = [*STATUS_MARKS.values(), "?"]
            text = "[" + " ".join(f"{m}{tally[m]}" for m in order if tally[m]) + "]"
        else:
            text = "".join(marks)
        out.append({"hour": iso(hour), "runs": text, "count": len(marks)})
    return out


_STATUS_VALUES = frozenset(s.value for s in RunStatus)


def _timeline_text(data: dict[str, Any], zone: ZoneInfo) -> str:
    label = data["timezone"]
    subject = data["schedules"][0] if len(data["schedules"]) == 1 else "all schedules"
    lines = [f"timeline of {subject}: {data['hours']}h either side of {data['now']} (times in {label})"]
    total, shown = data["upcoming_total"], len(data["upcoming"])
    more = f", first {shown} shown" if shown < total else ""
    lines.append(f"upcoming ({total} in the next {data['hours']}h{more}):" if total else "upcoming: none")
    width = max((len(u["schedule"]) for u in data["upcoming"]), default=0)
    for u in data["upcoming"]:
        local = datetime.fromisoformat(u["local"]).strftime("%Y-%m-%d %H:%M:%S")
        when = "overdue: runs next" if u["overdue"] else u["in"]
        lines.append(f"  {local}  {u['schedule'].ljust(width)}  ({when})")
    if len(data["schedules"]) > 1 and data["upcoming_by_schedule"]:
        busiest = sorted(data["upcoming_by_schedule"].items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append("  per schedule: " + ", ".join(f"{name} {n}" for name, n in busiest if n))
    for name, note in data["notes"].items():
        lines.append(f"  {name}: {note}")
    past = data["past"]
    lines.append(f"past {data['hours']}h by outcome:" if past["counts"] else f"past {data['hours']}h: no runs")
    for name, counts in past["counts"].items():
        lines.append(f"  {name}: " + ", ".join(f"{status} {n}" for status, n in counts.items()))
        days: dict[str, list[str]] = defaultdict(list)
        for hour in past["hours"].get(name, []):
            at = datetime.fromisoformat(hour["hour"])
            days[at.strftime("%Y-%m-%d")].append(f"{at.strftime('%H:%M')} {hour['runs']}")
        for day, cells in days.items():
            lines.append(f"    {day}  " + "  ".join(cells))
    if past["counts"]:
        legend = "  ".join(f"{mark} {status}" for mark, status in data["legend"].items())
        lines.append(f"legend: {legend}; [.12 x2] counts an hour of many runs")
    return "\n".join(lines)


def _computed_worker_id(settings: Settings) -> str:
    return settings.effective_worker_id


def _computed_timezone(settings: Settings) -> str:
    from .adapters.legacy_cron import worker_timezone

    return worker_timezone(settings=settings)


#: Variables whose default is found at run time, and how (``config`` shows the value found).
_COMPUTED_DEFAULTS = {"ACTP_WORKER_ID": _computed_worker_id, "ACTP_TIMEZONE": _computed_timezone}
#: ``--system`` values as ``platform.system()`` names them.
_SYSTEM_NAMES = {"macos": "Darwin", "linux": "Linux"}


def _config_text(data: dict[str, Any], *, show_all: bool) -> str:
    db = data["database"]
    lines = [f"database: {db['value']} ({db['source']})"]
    quiet_groups = {"services", "development"}
    for group, title in GROUPS.items():
        rows = [
            r
            for r in data["variables"]
            if r["group"] == group
            and (show_all or group not in quiet_groups or r["source"] not in ("default", "unset", "computed"))
        ]
        if not rows:
            continue
        cells = [
            [
                r["name"],
                "-" if r["value"] is None else str(r["value"]),
                r["source"] + (" (secret)" if r["secret"] else ""),
            ]
            for r in rows
        ]
        lines += ["", f"# {title}", table(cells, ["VARIABLE", "VALUE", "SOURCE"])]
    if not show_all:
        lines += ["", f"services configured: {', '.join(data['services']) or 'none'} (--all lists every variable)"]
    for w in data["warnings"]:
        lines.append(f"warning: {w}")
    for p in data["problems"]:
        lines.append(f"invalid: {p['variable']}={p['value']!r}: {p['allowed']}")
    return "\n".join(lines)


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    """Every command and option; each value is checked here (range, length), before any database is opened.

    With ``json_errors``, a bad argument is reported as ``{"error": "..."}`` (as ``--json`` asks).
    """
    common = OneLineParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = OneLineParser(prog="python -m agent.scheduler", description="Operate the ACTP scheduler.")
    parser.add_argument(
        "--db", type=database, default=None, help="SQLite path or SQLAlchemy URL (default: the worker's)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", parents=[common], help="schedules with their next run, last outcome and breaker")
    p.add_argument("--all", action="store_true", help="include disabled schedules")
    p = sub.add_parser("runs", parents=[common], help="recent runs, newest first")
    p.add_argument("--schedule", type=_name, default=None)
    p.add_argument("--status", default=None, choices=[s.value for s in RunStatus])
    p.add_argument(
        "--limit", type=whole_number(1, MAX_RUNS_LIMIT), default=20, help=f"1 to {MAX_RUNS_LIMIT} (default 20)"
    )
    p = sub.add_parser("disable", parents=[common], help="stop a schedule from producing runs")
    p.add_argument("name", type=_name, metavar="NAME")
    p.add_argument("--reason", type=_reason, default="disabled from the command line")
    p = sub.add_parser("enable", parents=[common], help="let a disabled schedule run again")
    p.add_argument("name", type=_name, metavar="NAME")
    p = sub.add_parser("run-now", parents=[common], help="queue a manual run of a schedule")
    p.add_argument("name", type=_name, metavar="NAME")
    p = sub.add_parser("emit", parents=[common], help="emit an event: each event schedule on NAME gets one run")
    p.add_argument("name", type=_event_name, metavar="NAME", help=triggers.EVENT_HELP)
    p.add_argument(
        "--payload",
        type=_event_payload,
        default=None,
        metavar="JSON",
        help=f"a JSON object of at most {inbox.EVENT_PAYLOAD_BYTES // 1024} KiB, handed to each run as params.payload",
    )
    p.set_defaults(method="emit_event")
    p = sub.add_parser("events", parents=[common], help="the event inbox: list (newest first) or purge")
    p.add_argument("action", nargs="?", default="list", choices=["list", "purge"])
    p.add_argument("--status", default=None, choices=[s.value for s in EventStatus])
    p.add_argument(
        "--limit", type=whole_number(1, MAX_RUNS_LIMIT), default=20, help=f"1 to {MAX_RUNS_LIMIT} (default 20)"
    )
    p.add_argument(
        "--older-than-days",
        type=whole_number(1, MAX_PURGE_DAYS, "days"),
        default=None,
        help=f"purge: events consumed more than this many days ago, 1 to {MAX_PURGE_DAYS}",
    )
    p = sub.add_parser("simulate", parents=[common], help="the next fire times of a schedule or an expression")
    p.add_argument("target", type=text_up_to(EXPRESSION_CHARS, single_line=True), metavar="EXPR|NAME")
    p.add_argument(
        "--count",
        type=whole_number(1, MAX_SIMULATE_COUNT),
        default=10,
        help=f"how many fire times, 1 to {MAX_SIMULATE_COUNT} (default 10)",
    )
    p.add_argument("--timezone", type=_zone_name, default="UTC")
    p.add_argument("--type", choices=[TriggerType.CALENDAR.value, TriggerType.INTERVAL.value], default=None)
    p = sub.add_parser("diagram", parents=[common], help="the state machines as Mermaid diagrams")
    p.add_argument("--machine", default="all", choices=["all", *MACHINES])
    p.add_argument("--format", default="mermaid", choices=["mermaid"])
    p = sub.add_parser("reset", parents=[common], help="close a schedule's open circuit breaker")
    p.add_argument("name", type=_name, metavar="NAME")
    p = sub.add_parser("dlq", parents=[common], help="the dead-letter queue: list, show, replay, purge")
    p.add_argument("action", choices=["list", "show", "replay", "purge"])
    p.add_argument(
        "id", type=_name, nargs="?", default=None, metavar="ID", help="run id or dead-letter id (show, replay)"
    )
    p.add_argument("--schedule", type=_name, default=None)
    p.add_argument("--all", action="store_true", help="list replayed ones too")
    p.add_argument("--force", action="store_true", help="replay even while the schedule's breaker is open")
    p.add_argument(
        "--older-than-days",
        type=whole_number(1, MAX_PURGE_DAYS, "days"),
        default=None,
        help=f"purge: dead letters older than this, 1 to {MAX_PURGE_DAYS} days",
    )
    p = sub.add_parser("alerts", parents=[common], help="the alert outbox")
    p.add_argument("--status", default=None, choices=[s.value for s in AlertStatus])
    p = sub.add_parser("reconcile", parents=[common], help="what a start would reconcile (--dry-run)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--worker-id", type=_worker_id, default=None)
    p = sub.add_parser("propose", parents=[common], help="submit an agent's schedule proposal (JSON file)")
    p.add_argument(
        "file",
        type=text_up_to(DB_CHARS),
        metavar="FILE.json",
        help=f"the proposal as a JSON object, at most {PROPOSAL_BYTES // 1024} KiB; - reads stdin",
    )
    p.add_argument("--tasks", type=module_name, action="append", default=[], metavar="MODULE", help=_TASKS_HELP)
    p = sub.add_parser("proposals", parents=[common], help="agent proposals and their status")
    p.add_argument("--status", default=None, choices=[s.value for s in ProposalStatus])
    p = sub.add_parser("approve", parents=[common], help="approve a proposal awaiting a human")
    p.add_argument("id", type=_name, metavar="ID")
    p.add_argument(
        "--reason", type=_optional_reason, default="", help="why (recorded with you, the user running it, as approver)"
    )
    p.add_argument("--tasks", type=module_name, action="append", default=[], metavar="MODULE", help=_TASKS_HELP)
    p = sub.add_parser("reject", parents=[common], help="reject a proposal, saying why")
    p.add_argument("id", type=_name, metavar="ID")
    p.add_argument("--reason", type=_reason, required=True, help="why (recorded with you, the user running it)")
    p = sub.add_parser("status", parents=[common], help="engine up or down, runs in flight, breakers, dead letters")
    p = sub.add_parser("timeline", parents=[common], help="upcoming fire times and the past hours' runs by outcome")
    p.add_argument("name", type=_name, nargs="?", default=None, metavar="NAME", help="a schedule (or --all)")
    p.add_argument("--all", action="store_true", help="every schedule, merged")
    p.add_argument(
        "--hours",
        type=whole_number(1, MAX_TIMELINE_HOURS, "hours"),
        default=24,
        help=f"window either side of now, 1 to {MAX_TIMELINE_HOURS} (default 24)",
    )
    p.add_argument("--timezone", type=_zone_name, default="UTC", help="show times in this IANA zone (default UTC)")
    p = sub.add_parser("config", parents=[common], help="the effective configuration, secrets masked")
    p.add_argument("--all", action="store_true", help="every variable, service ones included")
    p.add_argument("--env-example", action="store_true", help="print .env.example (generated from the table)")
    p = sub.add_parser("install-service", parents=[common], help="write the launchd agent or systemd user unit")
    p.add_argument("--print", action="store_true", help="print the file instead of writing it")
    p.add_argument("--system", choices=list(service_files.SYSTEMS), default=None, help="default: this machine's")
    p.add_argument(
        "--db",
        dest="service_db",
        type=database,
        default=None,
        help="the worker's --db in the service (default: none)",
    )
    p.add_argument(
        "--tasks",
        dest="service_tasks",
        type=module_name,
        nargs="+",
        action="extend",
        default=[],
        metavar="MODULE",
        help=f"the worker's task modules, with register(tasks, store), imported from --workdir (default: ${TASKS_ENV})",
    )
    p.add_argument(
        "--workdir",
        type=_directory,
        default=None,
        help="the service's working directory: its .env and --tasks modules are here (default: the current one)",
    )
    p.add_argument("--python", type=_path, default=None, help="the interpreter the service runs (default: this one)")
    p.add_argument("--worker", type=_path, default=None, help="the worker script (default: worker.py in --workdir)")
    name_commands(parser, sub, json_errors=json_errors)
    return parser


_name = text_up_to(NAME_CHARS, single_line=True)


def _event_name(text: str) -> str:
    """argparse type: an event name, as ``inbox.check_event`` takes it."""
    try:
        return triggers.check_event_name("name", text)
    except InvalidSchedule as exc:
        raise argparse.ArgumentTypeError(f"{shown(text)}: must be {exc.allowed}") from None


def _event_payload(text: str) -> dict[str, Any]:
    """argparse type: an event payload as JSON text, as ``inbox.parse_payload`` takes it."""
    try:
        return inbox.parse_payload(text)
    except InvalidSchedule as exc:
        raise argparse.ArgumentTypeError(f"{shown(text)}: must be {exc.allowed}") from None


_worker_id = text_up_to(WORKER_ID_CHARS, single_line=True)
_reason = text_up_to(REASON_CHARS)
_optional_reason = text_up_to(REASON_CHARS, empty=True)
_zone_text = text_up_to(TIMEZONE_CHARS, single_line=True)


def _zone_name(text: str) -> str:
    """argparse type: an IANA timezone name this machine knows (``UTC``, ``Europe/Berlin``)."""
    name = _zone_text(text)
    try:
        triggers.parse_timezone(name)
    except InvalidSchedule as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


_TASKS_HELP = f"module with register(tasks, store), as for the worker; repeatable (default: ${TASKS_ENV})"


def _path(text: str) -> Path:
    """argparse type: a file path on one line (made absolute by the service file)."""
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r}: must be a path on one line")
    return Path(text.strip())


def _directory(text: str) -> Path:
    """argparse type: an existing directory."""
    path = _path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: not a directory")
    return path


def operator_caller() -> Caller:
    """The operating-system user running this command, as the command line's caller.

    Read from the process's effective user id, not from ``$USER`` or an option: a name the
    command is given could be anyone's.
    """
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"  # a user without a passwd entry (a container) is still someone
    try:
        return Caller.operator(name)
    except InvalidIdentity as exc:
        raise CliError(f"the user running this command cannot be an identity: {exc}") from None


#: The settings that name who may approve proposals.
APPROVER_SETTINGS = ("ACTP_APPROVER_OPERATORS", "TELEGRAM_APPROVER_CHAT_IDS")


class _NoStore:
    """Stands in for the store in the commands that read no database (OFFLINE_COMMANDS)."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"this command reads no database (it used store.{name})")


def _environment_db(settings: Settings, problems: Sequence[Problem]) -> str:
    """The worker's database when no ``--db`` is given, checked as ``--db`` is (``ACTP_SCHEDULER_DB`` may be bad)."""
    for problem in problems:
        if problem.variable == "ACTP_SCHEDULER_DB":
            raise CliError(f"{problem.variable}={problem.shown!r}: {problem.allowed}")
    try:
        return database_from_environment(settings.scheduler_db, "ACTP_SCHEDULER_DB")
    except ValueError as exc:
        raise CliError(str(exc)) from None


def reads_only(args: argparse.Namespace) -> bool:
    """Whether the command only reads the database (READ_COMMANDS, READ_DLQ_ACTIONS, ``events list``)."""
    return (
        args.command in READ_COMMANDS
        or (args.command == "dlq" and args.action in READ_DLQ_ACTIONS)
        or (args.command == "events" and args.action == "list")
    )


def _db_source(args: argparse.Namespace, settings: Settings, environ: Environment) -> str:
    """Where the database came from, as a failure to open it names it."""
    if args.db:
        return "check --db"
    if settings.is_set("ACTP_SCHEDULER_DB"):
        where = environ.from_file.get("ACTP_SCHEDULER_DB")
        return f"check ACTP_SCHEDULER_DB in {where}" if where else "check ACTP_SCHEDULER_DB"
    return "the default, as no --db was given"


def error_line(message: object, *, as_json: bool) -> str:
    """A failure as the one line printed on stderr: ``error: ...``, or ``{"error": "..."}`` with ``--json``."""
    text = " ".join(str(message).split())  # one line, whatever the driver wrote
    return json.dumps({"error": text}) if as_json else f"error: {text}"


def _wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the options (before a ``--``), known before they are parsed, for the parser's errors."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, clock: Clock | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 for any failure, printed as one line on stderr).

    Commands that only read (``reads_only``) open the database read-only: a missing one is refused,
    not created, and nothing beside it (no ``-wal``, no ``-shm``) is written.
    """
    stream = out or sys.stdout
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(arguments)
    args = build_parser(json_errors=as_json).parse_args(arguments)
    if not logging.getLogger().handlers:
        # The command's answer is its output and one error line; the library's log lines (a refused
        # approval, a retried connection) are the worker's to print, not this command's.
        logging.getLogger().addHandler(logging.NullHandler())
    store = None
    try:
        # Read once (the environment over ./.env, as the worker does); a bad variable, or a bad
        # line of the file, stops only the commands that need it (config shows each).
        environ = environment([ENV_FILE])
        settings, problems = check_settings(environ.values)
        problems = [*environ.problems, *problems]
        if args.command in OFFLINE_COMMANDS:
            # They must work when the database cannot be opened (a bad ACTP_SCHEDULER_DB, say).
            commands = Commands(
                cast(ScheduleStore, _NoStore()),
                clock or SystemClock(),
                stream,
                args.json,
                settings=settings,
                problems=problems,
                environ=environ,
            )
        else:
            url = args.db or _environment_db(settings, problems)
            try:
                store = ScheduleStore(url, clock=clock or SystemClock(), read_only=reads_only(args))
            except (DatabaseNotFound, SchemaMissing) as exc:
                raise CliError(f"{exc} ({_db_source(args, settings, environ)})") from None
            commands = Commands(
                store, store.clock, stream, args.json, settings=settings, problems=problems, environ=environ
            )
        getattr(commands, getattr(args, "method", None) or args.command.replace("-", "_"))(args)
        return 0
    except (CliError, SchedulerError) as exc:
        print(error_line(exc, as_json=args.json), file=sys.stderr)
        return EXIT_USAGE
    finally:
        if store is not None:
            store.close()
