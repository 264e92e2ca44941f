"""The durable scheduler of the ACTP worker: the public API, and nothing else."""

from .clock import Clock, FakeClock, SystemClock
from .definition import ScheduleDefinition
from .enums import (
    BreakerState,
    ConcurrencyPolicy,
    MissedRunPolicy,
    RiskTier,
    RunStatus,
    ShutdownPolicy,
    TriggerType,
)
from .errors import InvalidSchedule, SchedulerError
from .proposals import ScheduleProposal
from .schedule_store import ScheduleStore
from .scheduled_run import ScheduledRun

__all__ = [
    "BreakerState",
    "Clock",
    "ConcurrencyPolicy",
    "FakeClock",
    "InvalidSchedule",
    "MissedRunPolicy",
    "RiskTier",
    "RunStatus",
    "ScheduleDefinition",
    "ScheduleProposal",
    "ScheduleStore",
    "ScheduledRun",
    "SchedulerError",
    "ShutdownPolicy",
    "SystemClock",
    "TriggerType",
]
