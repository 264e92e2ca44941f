"""The scheduler's exceptions: one base, a few subclasses, ids as attributes, messages that say what to do."""

from __future__ import annotations

import reprlib
from typing import Any

#: The longest a value is shown in an error message, in characters.
SHORT_CHARS = 160

_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60
_short_repr.maxlevel = 3
_short_repr.maxdict = _short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxset = 6


def short(value: Any) -> str:
    """A bounded repr, safe on huge, deeply nested and unprintable values (control characters are escaped)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        text = _short_repr.repr(value)
    except Exception:  # a repr may raise anything; the message only needs to say what it was
        return f"<a {type(value).__name__}>"
    return text if len(text) <= SHORT_CHARS else text[: SHORT_CHARS - 3] + "..."


class SchedulerError(Exception):
    """Base of every error the scheduler raises on purpose."""


class InvalidSchedule(SchedulerError, ValueError):
    """A schedule field has a value that is not allowed; nothing was written.

    Fix the field named in ``field`` to one of the values described in ``allowed``. The message
    shows the value shortened (a huge value is never printed whole); ``value`` holds it as given.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}={short(value)}: {allowed}")


class TooLong(InvalidSchedule):
    """A text, a list or the params are longer than the field allows; shorten the field named in ``field``."""


class DuplicateSchedule(InvalidSchedule):
    """A schedule with this name already exists; choose another name or update the existing one."""

    def __init__(self, name: str) -> None:
        super().__init__("name", name, "a name not already used by another schedule")
        self.name = name


class ScheduleNotFound(SchedulerError, LookupError):
    """No schedule has this name or id; ``list`` shows the schedules that exist."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {short(name)}; list the schedules to see the names")


class RunNotFound(SchedulerError, LookupError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {short(run_id)}")


class InvalidTransition(SchedulerError):
    """The machine has no such transition from the current state; the row is unchanged."""

    def __init__(self, entity_id: str, state: str, trigger: str, detail: str = "") -> None:
        self.entity_id = entity_id
        self.state = state
        self.trigger = trigger
        self.detail = detail
        why = f": {detail}" if detail else ""
        super().__init__(f"cannot {trigger} {entity_id} from state {state!r}{why}")

    @property
    def run_id(self) -> str:
        """The id of the run (or schedule, for the breaker) that refused the trigger."""
        return self.entity_id


class GuardRejected(InvalidTransition):
    """The transition exists, but its guard (a policy) refused it; ``reason`` says why."""

    def __init__(self, entity_id: str, state: str, trigger: str, reason: str) -> None:
        super().__init__(entity_id, state, trigger, reason)
        self.reason = reason


class StaleState(SchedulerError):
    """Someone else moved this row first: its stored state is not the one this transition expected.

    Reload the row and decide again; the transition was not applied.
    """

    def __init__(
        self,
        entity_id: str,
        expected: str,
        actual: str | None,
        trigger: str,
        *,
        holder: str | None = None,
        attempts: tuple[int, int] | None = None,
    ) -> None:
        self.entity_id = entity_id
        self.expected = expected
        self.actual = actual
        self.trigger = trigger
        self.holder = holder
        now = "is gone" if actual is None else f"is now {actual!r}"
        if attempts is not None and attempts[0] != attempts[1]:
            # Same status, another attempt: the run was taken over (and retried) in between.
            now = f"was taken over: attempt {attempts[1]} is now {actual!r} (this was attempt {attempts[0]})"
        by = f"{holder}" if holder else "another worker, thread or process"
        super().__init__(
            f"{trigger} on {entity_id} lost the race: expected state {expected!r}, but it {now} (moved by {by})"
        )


class StaleRun(StaleState):
    """A run's status changed under us; another worker, thread or process moved it."""

    @property
    def run_id(self) -> str:
        """The id of the run that was moved by someone else."""
        return self.entity_id


class StaleBreaker(StaleState):
    """A schedule's breaker state changed under us."""


class StoreError(SchedulerError):
    """The database failed in a way that retrying did not fix; the cause is chained."""


class TaskNotConfigured(SchedulerError):
    """A task cannot run here because its configuration is missing; its run ends ``skipped``.

    Set the configuration named in ``missing`` (for example an environment variable).
    """

    def __init__(self, missing: str, detail: str = "") -> None:
        self.missing = missing
        extra = f" ({detail})" if detail else ""
        super().__init__(f"not configured: set {missing}{extra}")


class DatabaseUnavailable(StoreError):
    """The database cannot be reached or written now (connection lost, server restarting, disk full,
    read-only, locked for too long); the transaction did not commit.

    Transient: wait and try again. The engine's loop does, with backoff, until the database is back.
    """


class DatabaseReplaced(StoreError):
    """The SQLite file the store opened was deleted or replaced by another file at the same path.

    Writing on would go into a file nobody will read again: stop, and start the worker again to open
    the file now at the path (the previous history is gone with the old file unless it was restored).
    """

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"the database file {path} {detail}: stopping rather than writing into a file nobody reads")


class EventRefused(SchedulerError):
    """An event was not written to the inbox: its emitter may not send it now (an agent over its hourly quota)."""


class OperatorActionRequired(SchedulerError):
    """Base of errors a restart cannot fix (a bad setting, a schema newer than the code, a twin worker).

    The worker exits with status 2 on these, and its service does not restart it until the operator acts.
    """


class WorkerIdInUse(OperatorActionRequired):
    """Another live worker on this host uses the same worker id; give each worker its own ``--worker-id``."""


class SchemaTooNew(OperatorActionRequired, StoreError):
    """The database was written by a newer version of the scheduler; upgrade the code before opening it."""


class DatabaseNotFound(StoreError):
    """A read-only store was asked to open a database that does not exist; nothing was created.

    Check the path or URL (``--db``, ``ACTP_SCHEDULER_DB``): a read never creates a database.
    """


class SchemaMissing(StoreError):
    """A read-only store found no scheduler schema, or an older one it may not upgrade; nothing was changed.

    Open the database once with a command that writes, or start the worker, to create or upgrade it.
    """
