"""The operator's command line: ``python -m agent.scheduler [--db ...] <command> [--json]``.

Every command reads or changes the same store the worker uses. Bad input (unknown names,
invalid values) prints one line naming what is wrong and exits with status 2, changing nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import json
import os
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from . import triggers
from .clock import Clock, SystemClock
from .definition import ScheduleDefinition
from .enums import ProposalStatus, RunStatus, TriggerType
from .errors import InvalidSchedule, SchedulerError
from .machines.diagrams import MACHINES, mermaid
from .proposals import ProposalService
from .records import ProposalRecord
from .schedule_store import ScheduleStore, default_url
from .scheduled_run import ScheduledRun
from .tasks import TaskRegistry

#: Exit status for bad input: unknown names, invalid values.
EXIT_USAGE = 2
#: Task modules (comma-separated) the proposal commands load when no ``--tasks`` is given.
TASKS_ENV = "ACTP_SCHEDULER_TASKS"


class CliError(Exception):
    """A problem with what the operator asked; printed as one line, exit status 2."""


def humanize(delta: timedelta) -> str:
    """``in 4m 10s`` or ``3h 2m ago``: a signed span in its two largest units."""
    seconds = int(delta.total_seconds())
    ahead = seconds >= 0
    seconds = abs(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    text = " ".join(parts)
    return f"in {text}" if ahead else f"{text} ago"


def _iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.isoformat()


def _next_run(schedule: ScheduleDefinition, now: datetime) -> datetime | None:
    """The stored next occurrence, or (before the engine has seen the schedule) the computed one."""
    if not schedule.enabled:
        return None
    if schedule.next_run_at is not None:
        return schedule.next_run_at
    if not schedule.is_time_based:
        return None
    return schedule.trigger(schedule.anchor_at or schedule.created_at or now).next_after(now)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _run_dict(run: ScheduledRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "schedule": run.schedule_name,
        "intended_run_at": _iso(run.intended_run_at),
        "status": run.status.value,
        "attempt": run.attempt,
        "origin": run.origin,
        "started_at": _iso(run.started_at),
        "completed_at": _iso(run.completed_at),
        "outcome": run.outcome,
        "error": run.error,
        "reason": run.reason,
        "catch_up": run.catch_up,
        "coalesced_from": run.coalesced_from,
    }


class Commands:
    """One method per command; each returns what to print (text) or to dump (JSON)."""

    def __init__(self, store: ScheduleStore, clock: Clock, out: TextIO, as_json: bool) -> None:
        self.store, self.clock, self.out, self.as_json = store, clock, out, as_json

    def emit(self, data: Any, text: str) -> None:
        self.out.write((json.dumps(data, indent=2, default=str) if self.as_json else text) + "\n")

    def list(self, args: argparse.Namespace) -> None:
        now = self.clock.now()
        latest = self.store.latest_runs()
        items: list[dict[str, Any]] = []
        for s in self.store.list(enabled=None if args.all else True):
            nxt = _next_run(s, now)
            last = latest.get(s.id)
            items.append(
                {
                    "name": s.name,
                    "trigger_type": s.trigger_type.value,
                    "expression": s.expression,
                    "timezone": s.timezone,
                    "target": s.target,
                    "enabled": s.enabled,
                    "next_run_at": _iso(nxt),
                    "next_run_local": _iso(nxt.astimezone(ZoneInfo(s.timezone))) if nxt else None,
                    "next_run_in": humanize(nxt - now) if nxt else None,
                    "last_status": last.status.value if last else None,
                    "last_run_at": _iso(last.intended_run_at) if last else None,
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
        text = _table(rows, ["NAME", "TRIGGER", "NEXT RUN", "LAST", "BREAKER"]) if rows else "no schedules"
        self.emit(items, text)

    def runs(self, args: argparse.Namespace) -> None:
        if args.schedule is not None:
            self.store.get(args.schedule)
        runs = self.store.runs(schedule=args.schedule, status=args.status, limit=args.limit, newest_first=True)
        rows = [
            [
                r.run_id,
                r.schedule_name,
                r.intended_run_at.isoformat(timespec="seconds"),
                r.status.value,
                str(r.attempt),
                (r.reason or r.error or "")[:70],
            ]
            for r in runs
        ]
        text = _table(rows, ["RUN", "SCHEDULE", "INTENDED (UTC)", "STATUS", "TRY", "REASON"]) if rows else "no runs"
        self.emit([_run_dict(r) for r in runs], text)

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
        self.emit(_run_dict(run), f"run {run.run_id} of {schedule.name} queued (pending); the worker starts it")

    def simulate(self, args: argparse.Namespace) -> None:
        now = self.clock.now()
        try:
            schedule = self.store.get(args.target)
            trigger, zone = schedule.trigger(schedule.anchor_at or now), schedule.timezone
        except SchedulerError:
            kind = args.type or (
                "calendar" if " " in args.target.strip() or args.target.startswith("@") else "interval"
            )
            trigger, zone = triggers.build_trigger(kind, args.target, args.timezone, anchor=now), args.timezone
        times: list[datetime] = []
        cursor = now
        while len(times) < args.count:
            nxt = trigger.next_after(cursor)
            if nxt is None:
                break
            times.append(nxt)
            cursor = nxt
        local = ZoneInfo(zone)
        data = [{"utc": _iso(t), "local": _iso(t.astimezone(local)), "in": humanize(t - now)} for t in times]
        text = "\n".join(f"{d['local']}  ({d['in']})" for d in data) or "no future occurrences"
        self.emit(data, text)

    def diagram(self, args: argparse.Namespace) -> None:
        names = list(MACHINES) if args.machine == "all" else [args.machine]
        data = {name: mermaid(name) for name in names}
        self.emit(data, "\n".join(f"```mermaid\n{text}```" for text in data.values()))

    def reset(self, args: argparse.Namespace) -> None:
        s = self.store.transition_breaker(args.name, "reset")
        self.emit({"name": s.name, "breaker_state": s.breaker_state.value}, f"{s.name}: breaker closed, runs resume")

    def dlq(self, args: argparse.Namespace) -> None:
        action = args.action
        if action == "list":
            letters = [d for d in self.store.dead_letters(args.schedule, include_replayed=args.all)]
            rows = [
                [
                    d.run_id,
                    d.schedule_name,
                    d.intended_run_at.isoformat(timespec="seconds"),
                    str(d.attempts),
                    (d.error or "")[:60],
                    "replayed" if d.replayed_at else "",
                ]
                for d in letters
            ]
            text = (
                _table(rows, ["RUN", "SCHEDULE", "INTENDED (UTC)", "TRIES", "ERROR", ""]) if rows else "no dead letters"
            )
            self.emit([_letter_dict(d) for d in letters], text)
        elif action == "show":
            letter = self.store.dead_letter(self._one(args))
            data = _letter_dict(letter)
            text = "\n".join(f"{k}: {v}" for k, v in data.items() if k != "error_traceback")
            self.emit(data, text + f"\n{letter.error_traceback or ''}".rstrip())
        elif action == "replay":
            run = self.store.replay_dead_letter(self._one(args), actor=args.actor, force=args.force)
            self.emit(_run_dict(run), f"run {run.run_id} of {run.schedule_name} replayed: pending, attempt 1")
        else:
            if args.older_than_days is None:
                raise CliError("dlq purge needs --older-than-days N")
            n = self.store.purge_dead_letters(timedelta(days=args.older_than_days))
            self.emit({"purged": n}, f"{n} dead letter(s) purged")

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
                a.text.splitlines()[0][:70],
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
                "created_at": _iso(a.created_at),
            }
            for a in alerts
        ]
        self.emit(data, _table(rows, ["CREATED (UTC)", "KIND", "STATUS", "TRIES", "TEXT"]) if rows else "no alerts")

    def reconcile(self, args: argparse.Namespace) -> None:
        if not args.dry_run:
            raise CliError("reconcile only runs as --dry-run here; the worker reconciles when it starts")
        from .schedule_engine import ScheduleEngine
        from .tasks import TaskRegistry

        engine = ScheduleEngine(self.store, TaskRegistry(), clock=self.clock, worker_id=args.worker_id)
        report = asyncio.run(engine.reconcile_dry_run())
        lines = [report.summary(), *(f"- {a}" for a in report.actions), *(f"! {w}" for w in report.warnings)]
        self.emit(report.to_dict(), "\n".join(lines))

    # ------------------------------------------------------------------ agent proposals

    def _proposal_service(self, modules: Sequence[str] = ()) -> ProposalService:
        tasks = TaskRegistry()
        names = list(modules) or [m for m in os.environ.get(TASKS_ENV, "").split(",") if m.strip()]
        if not names:
            raise CliError(
                f"the worker's tasks are needed to check a proposal's target: pass --tasks MODULE or set {TASKS_ENV}"
            )
        for name in names:
            try:
                module = importlib.import_module(name.strip())
            except ImportError as exc:
                raise CliError(f"--tasks {name}: cannot import it: {exc}") from exc
            register = getattr(module, "register", None)
            if not callable(register):
                raise CliError(f"--tasks {name}: the module has no register(tasks, store) function")
            register(tasks, self.store)
        return ProposalService(self.store, tasks, self.clock)

    def propose(self, args: argparse.Namespace) -> None:
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {args.file}: {exc}") from exc
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise CliError(f"{args.file} is not JSON: {exc}") from exc
        service = self._proposal_service(args.tasks)
        service.expire_overdue()
        record = service.submit(data)
        self.emit({"proposal": _proposal_dict(record), "report": record.report}, _proposal_report_text(record))
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
                (r.decision_reason or "")[:70],
            ]
            for r in records
        ]
        headers = ["ID", "NAME", "STATUS", "BY", "TIER", "DECIDED BY", "REASON"]
        self.emit([_proposal_dict(r) for r in records], _table(rows, headers) if rows else "no proposals")

    def approve(self, args: argparse.Namespace) -> None:
        service = self._proposal_service(args.tasks)
        record = service.approve(args.id, by=args.by, reason=args.reason)
        where = f"active as schedule {record.schedule_id}" if record.schedule_id else f"{record.status}"
        self.emit(_proposal_dict(record), f"proposal {record.id} ({record.name}) approved by {args.by}: {where}")

    def reject(self, args: argparse.Namespace) -> None:
        record = ProposalService(self.store, TaskRegistry(), self.clock).reject(args.id, by=args.by, reason=args.reason)
        self.emit(_proposal_dict(record), f"proposal {record.id} ({record.name}) rejected by {args.by}: {args.reason}")


def _proposal_dict(r: ProposalRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "status": r.status,
        "proposed_by": r.proposed_by,
        "risk_tier": (r.report or {}).get("risk_tier"),
        "decided_by": r.decided_by,
        "decision_reason": r.decision_reason,
        "schedule_id": r.schedule_id,
        "expires_at": _iso(r.expires_at),
        "created_at": _iso(r.created_at),
        "updated_at": _iso(r.updated_at),
    }


def _proposal_report_text(r: ProposalRecord) -> str:
    report = r.report or {}
    head = f"proposal {r.id} ({r.name}) by {r.proposed_by}: {r.status}"
    if r.schedule_id:
        head += f", schedule {r.schedule_id}"
    if r.expires_at:
        head += f", approve before {_iso(r.expires_at)}"
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


def _letter_dict(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "run_id": d.run_id,
        "schedule": d.schedule_name,
        "intended_run_at": _iso(d.intended_run_at),
        "attempts": d.attempts,
        "error_type": d.error_type,
        "error": d.error,
        "error_traceback": d.error_traceback,
        "params": d.params,
        "checkpoint": d.checkpoint,
        "created_at": _iso(d.created_at),
        "replayed_at": _iso(d.replayed_at),
        "replayed_by": d.replayed_by,
    }


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = argparse.ArgumentParser(prog="python -m agent.scheduler", description="Operate the ACTP scheduler.")
    parser.add_argument("--db", default=None, help="SQLite path or SQLAlchemy URL (default: the worker's)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", parents=[common], help="schedules with their next run, last outcome and breaker")
    p.add_argument("--all", action="store_true", help="include disabled schedules")
    p = sub.add_parser("runs", parents=[common], help="recent runs, newest first")
    p.add_argument("--schedule", default=None)
    p.add_argument("--status", default=None, choices=[s.value for s in RunStatus])
    p.add_argument("--limit", type=_positive_int, default=20)
    p = sub.add_parser("disable", parents=[common], help="stop a schedule from producing runs")
    p.add_argument("name")
    p.add_argument("--reason", default="disabled from the command line")
    p = sub.add_parser("enable", parents=[common], help="let a disabled schedule run again")
    p.add_argument("name")
    p = sub.add_parser("run-now", parents=[common], help="queue a manual run of a schedule")
    p.add_argument("name")
    p = sub.add_parser("simulate", parents=[common], help="the next fire times of a schedule or an expression")
    p.add_argument("target", metavar="EXPR|NAME")
    p.add_argument("--count", type=_positive_int, default=10)
    p.add_argument("--timezone", default="UTC")
    p.add_argument("--type", choices=[TriggerType.CALENDAR.value, TriggerType.INTERVAL.value], default=None)
    p = sub.add_parser("diagram", parents=[common], help="the state machines as Mermaid diagrams")
    p.add_argument("--machine", default="all", choices=["all", *MACHINES])
    p.add_argument("--format", default="mermaid", choices=["mermaid"])
    p = sub.add_parser("reset", parents=[common], help="close a schedule's open circuit breaker")
    p.add_argument("name")
    p = sub.add_parser("dlq", parents=[common], help="the dead-letter queue: list, show, replay, purge")
    p.add_argument("action", choices=["list", "show", "replay", "purge"])
    p.add_argument("id", nargs="?", default=None, help="run id or dead-letter id (show, replay)")
    p.add_argument("--schedule", default=None)
    p.add_argument("--all", action="store_true", help="list replayed ones too")
    p.add_argument("--force", action="store_true", help="replay even while the schedule's breaker is open")
    p.add_argument("--actor", default="cli", help="who replays (recorded)")
    p.add_argument("--older-than-days", type=_positive_int, default=None)
    p = sub.add_parser("alerts", parents=[common], help="the alert outbox")
    p.add_argument("--status", default=None, choices=["pending", "sending", "sent", "undeliverable"])
    p = sub.add_parser("reconcile", parents=[common], help="what a start would reconcile (--dry-run)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--worker-id", default=None)
    p = sub.add_parser("propose", parents=[common], help="submit an agent's schedule proposal (JSON file)")
    p.add_argument("file", metavar="FILE.json", help="the proposal as a JSON object; - reads stdin")
    p.add_argument("--tasks", action="append", default=[], metavar="MODULE", help=_TASKS_HELP)
    p = sub.add_parser("proposals", parents=[common], help="agent proposals and their status")
    p.add_argument("--status", default=None, choices=[s.value for s in ProposalStatus])
    p = sub.add_parser("approve", parents=[common], help="approve a proposal awaiting a human")
    p.add_argument("id")
    p.add_argument("--by", default=_operator(), help="who approves (recorded; default: your user name)")
    p.add_argument("--reason", default="", help="why (recorded)")
    p.add_argument("--tasks", action="append", default=[], metavar="MODULE", help=_TASKS_HELP)
    p = sub.add_parser("reject", parents=[common], help="reject a proposal, saying why")
    p.add_argument("id")
    p.add_argument("--reason", required=True, help="why (recorded)")
    p.add_argument("--by", default=_operator(), help="who rejects (recorded; default: your user name)")
    return parser


_TASKS_HELP = f"module with register(tasks, store), as for the worker; repeatable (default: ${TASKS_ENV})"


def _operator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "operator"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, clock: Clock | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input)."""
    stream = out or sys.stdout
    args = build_parser().parse_args(argv)
    store = None
    try:
        store = ScheduleStore(args.db or default_url(), clock=clock or SystemClock())
        commands = Commands(store, store.clock, stream, args.json)
        getattr(commands, args.command.replace("-", "_"))(args)
        return 0
    except (CliError, InvalidSchedule, SchedulerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if store is not None:
            store.close()
