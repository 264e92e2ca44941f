"""The engine: the loop (``loop``) composing its rooms, the per-tick database work (``tick``), runs
in flight (``execution``), reconciliation, breakers and the change feed (``feed``)."""

from .execution import CHECKPOINT_WAIT_SECONDS, CUT_GRACE_SECONDS
from .loop import (
    ALERT_SWEEP,
    DELIVERY_ON_STOP_SECONDS,
    LEASE_SECONDS,
    RECONCILE_TASK,
    ScheduleEngine,
    default_worker_id,
)
from .reconciliation import HEARTBEAT_SECONDS
from .tick import BATCH_AHEAD, PREPARE_AHEAD

__all__ = [
    "ALERT_SWEEP",
    "BATCH_AHEAD",
    "CHECKPOINT_WAIT_SECONDS",
    "CUT_GRACE_SECONDS",
    "DELIVERY_ON_STOP_SECONDS",
    "HEARTBEAT_SECONDS",
    "LEASE_SECONDS",
    "PREPARE_AHEAD",
    "RECONCILE_TASK",
    "ScheduleEngine",
    "default_worker_id",
]
