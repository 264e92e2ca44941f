"""The scheduler's vocabulary: every policy and state as a lower-case string enum, stored as is."""

from __future__ import annotations

from enum import StrEnum


class TriggerType(StrEnum):
    """What makes a schedule produce runs."""

    #: Runs when the engine starts (``startup``) or stops (``shutdown``).
    LIFECYCLE = "lifecycle"
    #: Runs every fixed span of real time, anchored to the schedule's start (DST-blind).
    INTERVAL = "interval"
    #: Runs at the wall times of a cron expression in the schedule's IANA timezone.
    CALENDAR = "calendar"
    #: Runs once, at an ISO-8601 instant or a ``+duration`` after creation.
    DELAY = "delay"
    #: Runs once per event of the matching name (``engine.emit``, ``emit`` on the command line, the inbox).
    EVENT = "event"
    #: A periodic sweeper run by the engine, on an interval expression.
    RECONCILIATION = "reconciliation"


class MissedRunPolicy(StrEnum):
    """What to do with occurrences that became due while nothing was running them."""

    #: Run none of them; record one skipped run with the count.
    SKIP = "skip"
    #: Run the latest one once, recording how many it stands for.
    CATCH_UP_ONCE = "catch_up_once"
    #: Run every one, oldest first, up to the schedule's ``catch_up_limit``.
    CATCH_UP_ALL = "catch_up_all"


class ConcurrencyPolicy(StrEnum):
    """What to do when an occurrence is due while a run of the same schedule is in flight."""

    #: Skip the new occurrence with reason ``overlap``.
    FORBID = "forbid"
    #: Run both.
    ALLOW = "allow"
    #: Keep at most one pending run waiting behind the running one.
    ENQUEUE_ONE = "enqueue_one"
    #: Ask the running run to stop, then start the new one.
    REPLACE = "replace"


class ShutdownPolicy(StrEnum):
    """What happens to a schedule's running run when the worker stops."""

    #: Let it finish within the shutdown timeout, then requeue it.
    GRACEFUL_FINISH = "graceful_finish"
    #: Ask it to save a checkpoint and stop; it resumes from the checkpoint after restart.
    CHECKPOINT_AND_STOP = "checkpoint_and_stop"
    #: Cancel it at once and put it back to pending; the attempt is not counted as a failure.
    REQUEUE = "requeue"


class RiskTier(StrEnum):
    """How much harm a schedule's task can do, which decides how it may be approved."""

    #: Local, reversible work: auto-approved within the policy's limits.
    LOW = "low"
    #: Auto-approved only within stricter limits, otherwise waits for a human.
    MEDIUM = "medium"
    #: Always waits for a human approval.
    HIGH = "high"


class RunStatus(StrEnum):
    """The state of one scheduled run; the run machine's states."""

    #: Materialized and waiting to start.
    PENDING = "pending"
    #: Claimed by a worker and executing.
    RUNNING = "running"
    #: Finished without error.
    SUCCEEDED = "succeeded"
    #: Finished with an error (or orphaned); retry or dead letter decides what follows.
    FAILED = "failed"
    #: Failed for good after its retries; kept in the dead-letter queue.
    DEAD_LETTERED = "dead_lettered"
    #: Stopped at shutdown with a saved checkpoint; resumes on the next start.
    PAUSED = "paused"
    #: Did not execute, for the reason on the row (missed, overlap, not configured...).
    SKIPPED = "skipped"
    #: Cancelled by an operator or by a replacing run.
    CANCELLED = "cancelled"


#: Statuses from which no transition but ``replay`` (dead letters) leads anywhere.
TERMINAL_RUN_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.DEAD_LETTERED, RunStatus.SKIPPED, RunStatus.CANCELLED}
)


class BreakerState(StrEnum):
    """A schedule's circuit breaker; the breaker machine's states."""

    #: Runs flow normally.
    CLOSED = "closed"
    #: Tripped by consecutive failures: the schedule produces no runs.
    OPEN = "open"
    #: Cooldown elapsed: one trial run decides between closing and reopening.
    HALF_OPEN = "half_open"


class ProposalStatus(StrEnum):
    """An agent-proposed schedule on its way to activation; the proposal machine's states."""

    #: Received, not yet decided.
    SUBMITTED = "submitted"
    #: Failed validation or refused by a human.
    REJECTED = "rejected"
    #: Valid, but its risk needs a human approval.
    AWAITING_APPROVAL = "awaiting_approval"
    #: Approved by policy or by a human; not yet a schedule.
    APPROVED = "approved"
    #: Its schedule exists and runs.
    ACTIVE = "active"
    #: Waited for approval longer than allowed.
    EXPIRED = "expired"


class AlertStatus(StrEnum):
    """An alert in the outbox; the outbox machine's states."""

    #: Queued, waiting for a dispatcher (again, after a send that failed).
    PENDING = "pending"
    #: Claimed by one dispatcher that is sending it; a claim older than the lease may be taken again.
    SENDING = "sending"
    #: Delivered; kept as the record of what was said and when.
    SENT = "sent"
    #: Due while no notifier was configured; a dispatcher that has one sends it later.
    UNDELIVERABLE = "undeliverable"


class EventStatus(StrEnum):
    """An event in the inbox. Two states and one move (a conditional UPDATE), so no machine."""

    #: Written by a door (command line, topic, Telegram, ``engine.emit``); no worker has taken it yet.
    PENDING = "pending"
    #: Taken by exactly one worker, which created its runs in the same transaction (maybe none).
    CONSUMED = "consumed"


class ScheduleSource(StrEnum):
    """Who created a schedule."""

    #: An operator or the host program, through the API or the CLI.
    USER = "user"
    #: Migrated from the legacy ``cron_definitions.py`` table.
    LEGACY_CRON = "legacy_cron"
    #: Activated from an agent's proposal.
    AGENT = "agent"


class CallerKind(StrEnum):
    """What stands behind an identity."""

    #: An agent: it may propose schedules and use the operator topics, never approve or reject.
    AGENT = "agent"
    #: A person at a door that authenticates them (a Telegram chat, the local command line).
    HUMAN = "human"
    #: The scheduler's own proposal policy (auto-approval, expiry) or host code in the worker's process.
    SYSTEM = "system"
