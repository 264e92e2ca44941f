"""Report jobs: the daily summary of runs and the dead-letter digest, queued as alerts for Telegram.

They compose text from the store and put it in the alert outbox (``store.add_alert``); delivering
it is the alert dispatcher's job. Times are shown in the schedule's own timezone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from agent.scheduler.enums import BreakerState, RunStatus
from agent.scheduler.store import ScheduleStore
from agent.scheduler.tasks import RunContext

from . import store_queries

#: The daily summary covers runs intended in the 24 h before its own intended time (runs due at that
#: very instant, still in flight, belong to the next summary).
SUMMARY_WINDOW = timedelta(hours=24)
#: Lines of each list a report shows before "... and N more".
MAX_LINES = 15
#: Characters of an error shown per line.
ERROR_CHARS = 160


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."


def _more(total: int) -> list[str]:
    return [f"  ... and {total - MAX_LINES} more"] if total > MAX_LINES else []


@dataclass
class Reports:
    """The report jobs of one worker, bound to its store."""

    store: ScheduleStore

    def daily_summary(self, ctx: RunContext) -> str:
        """Queue a ``daily_summary`` alert: the last 24 h of runs by status, what failed, why runs were skipped."""
        until = ctx.intended_run_at
        since = until - SUMMARY_WINDOW
        zone = ZoneInfo(ctx.schedule.timezone)
        counts = store_queries.run_counts(self.store, since, until)
        by_status: Counter[RunStatus] = Counter()
        failing: dict[str, Counter[RunStatus]] = defaultdict(Counter)
        for row in counts:
            by_status[row.status] += row.count
            if row.status in (RunStatus.FAILED, RunStatus.DEAD_LETTERED):
                failing[row.schedule][row.status] += row.count
        total = sum(by_status.values())
        stamp = until.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
        statuses = ", ".join(f"{n} {status.value}" for status, n in sorted(by_status.items())) or "none"
        lines = [
            f"Daily summary to {stamp}: {total} run(s) in the last 24 h ({statuses})",
            f"Schedules with runs: {len({row.schedule for row in counts})}",
        ]
        if failing:
            lines.append("Failed or dead-lettered:")
            ranked = sorted(failing.items(), key=lambda item: (-sum(item[1].values()), item[0]))
            for name, per in ranked[:MAX_LINES]:
                lines.append(f"  {name}: " + ", ".join(f"{n} {s.value}" for s, n in sorted(per.items())))
            lines += _more(len(ranked))
            errors = store_queries.recent_errors(self.store, since, until, limit=5)
            if errors:
                lines.append("Latest errors:")
                lines += [f"  {name} at {at.astimezone(zone):%H:%M}: {_first_line(err)}" for name, at, err in errors]
        reasons = store_queries.skip_reasons(self.store, since, until, limit=MAX_LINES)
        if reasons:
            lines.append("Skipped, by reason:")
            lines += [f"  {n} x {_first_line(reason)}" for reason, n in reasons]
        waiting = len(self.store.dead_letters(include_replayed=False))
        open_breakers = [s.name for s in self.store.list() if s.breaker_state is BreakerState.OPEN]
        lines.append(f"Dead letters waiting for replay: {waiting}")
        if open_breakers:
            lines.append(f"Open circuit breakers: {', '.join(open_breakers)}")
        self.store.add_alert(
            "daily_summary",
            "\n".join(lines),
            {
                "since": since.isoformat(),
                "until": until.isoformat(),
                "total": total,
                "by_status": {s.value: n for s, n in by_status.items()},
                "failing": {name: {s.value: n for s, n in per.items()} for name, per in failing.items()},
                "dead_letters_waiting": waiting,
                "open_breakers": open_breakers,
            },
        )
        return lines[0] + " (alert queued)"

    def dlq_digest(self, ctx: RunContext) -> str:
        """Queue a ``dlq_digest`` alert listing the dead letters waiting for replay; none waiting, no alert."""
        letters = self.store.dead_letters(include_replayed=False)
        if not letters:
            return "no dead letters waiting: nothing to send"
        zone = ZoneInfo(ctx.schedule.timezone)
        per_schedule = Counter(letter.schedule_name for letter in letters)
        lines = [f"{len(letters)} dead letter(s) waiting for replay, from {len(per_schedule)} schedule(s):"]
        newest_first = sorted(letters, key=lambda letter: letter.created_at or letter.intended_run_at, reverse=True)
        for letter in newest_first[:MAX_LINES]:
            when = _local(letter.intended_run_at, zone)
            error = _first_line(letter.error or letter.error_type or "(no error text)")
            lines.append(f"  {letter.schedule_name} @ {when}, {letter.attempts} attempt(s): {error}  [{letter.run_id}]")
        lines += _more(len(letters))
        lines.append("Replay with: python -m agent.scheduler dlq replay <run id>")
        self.store.add_alert(
            "dlq_digest",
            "\n".join(lines),
            {"count": len(letters), "by_schedule": dict(per_schedule), "run_ids": [d.run_id for d in letters[:100]]},
        )
        return f"{len(letters)} dead letter(s) from {len(per_schedule)} schedule(s): digest queued"


def _local(instant: datetime, zone: ZoneInfo) -> str:
    return instant.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
