"""The durable scheduler of the ACTP worker: the public API, and nothing else."""

from .clock import Clock as Clock
from .clock import FakeClock, SystemClock
from .definition import ScheduleDefinition
from .engine import ScheduleEngine
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
from .scheduled_run import ScheduledRun
from .store import ScheduleStore
from .tasks import RunContext, TaskRegistry

# ``Clock``, the protocol a custom clock implements, stays importable from here for type hints;
# the names below are the pinned public API.
__all__ = [
    "BreakerState",
    "ConcurrencyPolicy",
    "FakeClock",
    "InvalidSchedule",
    "MissedRunPolicy",
    "RiskTier",
    "RunContext",
    "RunStatus",
    "ScheduleDefinition",
    "ScheduleEngine",
    "ScheduleProposal",
    "ScheduleStore",
    "ScheduledRun",
    "SchedulerError",
    "ShutdownPolicy",
    "SystemClock",
    "TaskRegistry",
    "TriggerType",
]
