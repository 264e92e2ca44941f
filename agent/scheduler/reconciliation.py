"""ReconciliationReport: what a start found and did (missed runs, orphans, paused runs, breakers)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(kw_only=True)
class ReconciliationReport:
    """Counts and actions of one startup reconciliation; persisted in ``reconciliation_reports``."""

    worker_id: str
    started_at: datetime
    finished_at: datetime | None = None
    dry_run: bool = False
    previous_shutdown: str = "unknown"
    """clean, crash or first_start: how the previous run of this worker ended (a dry run beside a
    worker of the same id that is up: running)."""
    downtime_seconds: float | None = None
    """Seconds since the previous life's last heartbeat, when known."""
    schedules_loaded: int = 0
    missed_detected: int = 0
    """Occurrences found due later than their grace."""
    missed_caught_up: int = 0
    """Catch-up runs created for them."""
    missed_skipped: int = 0
    """Missed occurrences recorded as skipped."""
    missed_coalesced: int = 0
    """Missed occurrences folded into a single catch-up run."""
    orphans_found: int = 0
    orphans_requeued: int = 0
    orphans_dead_lettered: int = 0
    paused_resumed: int = 0
    breakers_half_opened: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    _kept: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def keep(self) -> None:
        """Remember the counts as they are now (committed); ``restore()`` goes back to them."""
        self._kept = copy.deepcopy({k: v for k, v in vars(self).items() if k != "_kept"})

    def restore(self) -> None:
        """Back to the counts of the last ``keep()``: a transaction that runs again counts once."""
        if self._kept is not None:
            vars(self).update(copy.deepcopy(self._kept))

    @property
    def has_problems(self) -> bool:
        """True when a human should look: errors, warnings, or runs dead-lettered while down."""
        return bool(self.errors or self.warnings or self.orphans_dead_lettered)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (instants as ISO strings)."""
        data = asdict(self)
        del data["_kept"]
        for key in ("started_at", "finished_at"):
            if isinstance(data[key], datetime):
                data[key] = data[key].isoformat()
        return data

    def summary(self) -> str:
        """One line for the log; a dry run says so, and what a start would do."""
        head = (
            f"reconciliation dry run, nothing changed (previous: {self.previous_shutdown})"
            if self.dry_run
            else f"reconciliation ({self.previous_shutdown})"
        )
        return (
            f"{head}: {self.schedules_loaded} schedules, "
            f"missed {self.missed_detected} (caught up {self.missed_caught_up}, skipped {self.missed_skipped}, "
            f"coalesced {self.missed_coalesced}), orphans {self.orphans_found} (requeued {self.orphans_requeued}, "
            f"dead-lettered {self.orphans_dead_lettered}), paused resumed {self.paused_resumed}, "
            f"breakers half-opened {self.breakers_half_opened}, {len(self.warnings)} warning(s), "
            f"{len(self.errors)} error(s)"
        )
