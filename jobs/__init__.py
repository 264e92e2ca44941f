"""The worker's task functions: what the legacy cron table's schedules call.

``register(tasks, store)`` adds them to a TaskRegistry; local jobs get the store (state, alerts,
clock). Jobs that talk to a cloud service all go through one generic HTTP task,
``jobs.call_service``, parametrized by the schedule's params (see :mod:`jobs.http`).
"""

from __future__ import annotations

import functools

from agent.scheduler.engine import default_worker_id
from agent.scheduler.enums import RiskTier
from agent.scheduler.settings import Settings
from agent.scheduler.store import ScheduleStore
from agent.scheduler.tasks import TaskRegistry

from .health import HealthCheck
from .http import call_service
from .local import LocalJobs
from .reports import Reports

__all__ = ["TASK_NAMES", "register"]

#: Every task ``register`` adds, by name.
TASK_NAMES = (
    "jobs.heartbeat",
    "jobs.temp_cleanup",
    "jobs.log_rotation",
    "jobs.disk_space_check",
    "jobs.db_maintenance",
    "jobs.service_health_check",
    "jobs.daily_summary",
    "jobs.dlq_digest",
    "jobs.call_service",
)


def register(
    tasks: TaskRegistry, store: ScheduleStore, *, worker_id: str | None = None, settings: Settings | None = None
) -> None:
    """Register the jobs' tasks; ``worker_id`` (default: ACTP_WORKER_ID or the host name) names the heartbeat.

    ``settings`` are the worker's; without them each job reads the variables it needs at each run.
    """
    local = LocalJobs(store, worker_id or default_worker_id(settings), settings)
    reports = Reports(store)
    health = HealthCheck(store, settings)
    tasks.add("jobs.heartbeat", local.heartbeat, side_effects=["database"], description=local.heartbeat.__doc__ or "")
    tasks.add("jobs.temp_cleanup", local.temp_cleanup, side_effects=["filesystem"], description="delete old downloads")
    tasks.add("jobs.log_rotation", local.log_rotation, side_effects=["filesystem"], description="rotate *.log files")
    tasks.add("jobs.disk_space_check", local.disk_space_check, side_effects=["alerts"], description="watch free space")
    tasks.add("jobs.db_maintenance", local.db_maintenance, side_effects=["database"], description="prune old runs")
    tasks.add(
        "jobs.service_health_check",
        health.service_health_check,
        side_effects=["network", "alerts"],
        description="probe the configured services' health URLs",
    )
    tasks.add("jobs.daily_summary", reports.daily_summary, side_effects=["alerts"], description="the day's runs")
    tasks.add("jobs.dlq_digest", reports.dlq_digest, side_effects=["alerts"], description="dead letters waiting")
    tasks.add(
        "jobs.call_service",
        functools.wraps(call_service)(functools.partial(call_service, settings=settings)),
        risk_tier=RiskTier.MEDIUM,
        side_effects=["network"],
        description="call a cloud service: params service, method, path (ACTP_<SERVICE>_URL, ACTP_<SERVICE>_KEY)",
    )
