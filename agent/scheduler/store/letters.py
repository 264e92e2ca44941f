"""Dead letters: runs that failed for good, kept with everything to understand and replay them."""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta

from sqlalchemy import or_, select

from .. import limits, schema
from ..errors import RunNotFound
from ..records import DeadLetter
from ..scheduled_run import ScheduledRun
from .rows import dead_letter_from, lookup_key, to_db
from .runs import RunRows


class DeadLetterRows(RunRows):
    """Dead letters: listing, one by its id or its run's, replay through the run machine, purge."""

    def dead_letters(self, schedule: str | None = None, *, include_replayed: bool = True) -> builtins.list[DeadLetter]:
        """Dead-lettered runs, oldest first."""
        if schedule is not None:
            lookup_key("schedule", schedule)
        d = schema.dead_letters
        stmt = select(d).order_by(d.c.created_at, d.c.id)
        if schedule is not None:
            stmt = stmt.where(or_(d.c.schedule_name == schedule, d.c.schedule_id == schedule))
        if not include_replayed:
            stmt = stmt.where(d.c.replayed_at.is_(None))
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [dead_letter_from(row) for row in rows]

    def dead_letter(self, letter_or_run_id: str) -> DeadLetter:
        """One dead letter, by its id or its run's id (the newest for that run)."""
        lookup_key("letter_or_run_id", letter_or_run_id)
        d = schema.dead_letters
        stmt = (
            select(d)
            .where(or_(d.c.id == letter_or_run_id, d.c.run_id == letter_or_run_id))
            .order_by(d.c.created_at.desc())
        )
        row = self._tx(lambda c: c.execute(stmt).mappings().first())
        if row is None:
            raise RunNotFound(letter_or_run_id)
        return dead_letter_from(row)

    def replay_dead_letter(
        self, letter_or_run_id: str, *, actor: str, force: bool = False, now: datetime | None = None
    ) -> ScheduledRun:
        """Send a dead-lettered run back to pending through the machine, with a fresh retry budget.

        Refused (GuardRejected) while the schedule's breaker is open, unless ``force``.
        """
        limits.check_text("actor", actor, limits.NAME_CHARS, single_line=True)
        letter = self.dead_letter(letter_or_run_id)
        run = self.get_run(letter.run_id)
        return self.transition(run, "replay", now=now, actor=actor, force=force, reason=f"replayed by {actor}")

    def purge_dead_letters(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Delete dead letters created more than ``older_than`` ago; returns how many. Runs stay."""
        cutoff = to_db((now or self.clock.now()) - older_than)
        d = schema.dead_letters
        return int(self._tx(lambda c: c.execute(d.delete().where(d.c.created_at < cutoff)).rowcount))
