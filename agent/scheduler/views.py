"""The dicts and human text shared by the command line, the registry's topics and the operator's bot.

Each function turns a stored value (a schedule, a run, a dead letter, a proposal, a report) into
what an operator or an agent is shown, so the three doors show the same thing the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from .definition import ScheduleDefinition
from .enums import EventStatus
from .reconciliation import ReconciliationReport
from .records import DeadLetter, InboxEvent, ProposalRecord
from .scheduled_run import ScheduledRun

#: What a cell or a quoted text cut short ends with.
ELLIPSIS = "..."
#: Shown in place of a control or format character (a newline, a right-to-left override).
REPLACEMENT = "\ufffd"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(instant: datetime | None) -> str | None:
    """The instant as ISO 8601 text; None stays None."""
    return None if instant is None else instant.isoformat()


def parse_instant(text: Any) -> datetime | None:
    """An ISO 8601 instant (naive text taken as UTC); None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


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


def span(delta: timedelta) -> str:
    """``2h 5m``: an unsigned span in its two largest units."""
    return humanize(abs(delta)).removeprefix("in ")


def one_line(text: Any) -> str:
    """``text`` on one line: runs of white space become one space, other unprintable characters REPLACEMENT."""
    words = ("".join(c if c.isprintable() else REPLACEMENT for c in word) for word in str(text).split())
    return " ".join(words)


def clip(text: str, width: int) -> str:
    """``text`` on one line, cut at a word boundary to at most ``width`` characters, ending ELLIPSIS.

    Never cuts inside a word: a first word longer than ``width`` is kept whole and followed by
    ELLIPSIS when more text follows it.
    """
    line = one_line(text)
    if len(line) <= width:
        return line
    room = max(width - len(ELLIPSIS), 0)
    cut = line.rfind(" ", 0, room + 1)
    if cut <= 0:
        first = line.split(" ", 1)[0]
        return first if first == line else first + ELLIPSIS
    return line[:cut].rstrip() + ELLIPSIS


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Left-aligned columns two spaces apart under ``headers``; trailing blanks dropped."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def next_run(schedule: ScheduleDefinition, now: datetime) -> datetime | None:
    """The stored next occurrence, or (before the engine has seen the schedule) the computed one."""
    if not schedule.enabled:
        return None
    if schedule.next_run_at is not None:
        return schedule.next_run_at
    if not schedule.is_time_based:
        return None
    return schedule.trigger(schedule.anchor_at or schedule.created_at or now).next_after(now)


def run_dict(run: ScheduledRun) -> dict[str, Any]:
    """A run as JSON-ready data."""
    return {
        "run_id": run.run_id,
        "schedule": run.schedule_name,
        "intended_run_at": iso(run.intended_run_at),
        "status": run.status.value,
        "attempt": run.attempt,
        "origin": run.origin,
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
        "outcome": run.outcome,
        "error": run.error,
        "reason": run.reason,
        "catch_up": run.catch_up,
        "coalesced_from": run.coalesced_from,
    }


def letter_dict(d: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON-ready data, its traceback included."""
    return {
        "id": d.id,
        "run_id": d.run_id,
        "schedule": d.schedule_name,
        "intended_run_at": iso(d.intended_run_at),
        "attempts": d.attempts,
        "error_type": d.error_type,
        "error": d.error,
        "error_traceback": d.error_traceback,
        "params": d.params,
        "checkpoint": d.checkpoint,
        "created_at": iso(d.created_at),
        "replayed_at": iso(d.replayed_at),
        "replayed_by": d.replayed_by,
    }


def proposal_dict(r: ProposalRecord) -> dict[str, Any]:
    """A proposal's state and decision as JSON-ready data (its report apart)."""
    return {
        "id": r.id,
        "name": r.name,
        "status": r.status,
        "proposed_by": r.proposed_by,
        "risk_tier": (r.report or {}).get("risk_tier"),
        "decided_by": r.decided_by,
        "decided_via": r.decided_via,
        "decided_at": iso(r.decided_at),
        "decision_reason": r.decision_reason,
        "schedule_id": r.schedule_id,
        "expires_at": iso(r.expires_at),
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
    }


def report_summary(report: dict[str, Any]) -> str | None:
    """The one-line summary of a stored reconciliation report; None when it cannot be read back."""
    names = set(ReconciliationReport.__dataclass_fields__)
    known = {k: v for k, v in report.items() if k in names and k not in ("started_at", "finished_at", "_kept")}
    try:
        rebuilt = ReconciliationReport(
            **{"worker_id": "?", **known, "started_at": parse_instant(report.get("started_at")) or _EPOCH}
        )
    except TypeError:
        return None
    return rebuilt.summary()


def event_dict(event: InboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "name": event.name,
        "payload": event.payload,
        "emitted_at": iso(event.emitted_at),
        "emitted_by": event.emitted_by,
        "status": event.status.value,
        "consumed_at": iso(event.consumed_at),
        "consumed_by": event.consumed_by,
        "runs": len(event.run_ids) if event.status is EventStatus.CONSUMED else None,
        "run_ids": list(event.run_ids),
        "reason": event.reason,
    }


def events_line(events: dict[str, Any]) -> str:
    """``events: 0 pending; last: job.done at 2027-03-13 12:00:00 UTC, 2 run(s)``."""
    line = f"events: {events['pending']} pending"
    last = events["last"]
    if last is None:
        return line + "; none emitted yet"
    at = parse_instant(last["emitted_at"])
    when = at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else "?"
    if last["status"] == EventStatus.PENDING.value:
        return f"{line}; last: {last['name']} at {when}, not consumed yet"
    line += f"; last: {last['name']} at {when}, {last['runs']} run(s)"
    return line + (f" ({last['reason']})" if last["reason"] else "")
