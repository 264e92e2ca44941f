"""The legacy cron table: the worker's 33 recurring jobs, the source of the first migration.

One :class:`CronJob` per job: its cadence (a cron expression read in the worker's timezone, or an
interval in seconds), the task it calls, and its ``kind``, from which its policies derive
(``agent.scheduler.adapters.legacy_cron.KIND_POLICIES``): pollers skip missed runs and forbid
overlap, daily and weekly jobs catch up once. An entry overrides a policy by setting it here.

Jobs that call a cloud service go through the one generic HTTP task (``jobs.call_service``): its
``params`` name the service (base URL from ``ACTP_<SERVICE>_URL``, bearer key from
``ACTP_<SERVICE>_KEY``), the method and the path. Editing this table changes what the next start
migrates: new entries are added; entries already migrated keep what an operator set.
"""

from __future__ import annotations

from typing import Any

from agent.scheduler.adapters.legacy_cron import CronJob, JobKind
from agent.scheduler.enums import RiskTier, TriggerType

#: Task names the table uses (registered by ``jobs.register``; ``scheduler.reconcile`` is the engine's own).
HEARTBEAT = "jobs.heartbeat"
TEMP_CLEANUP = "jobs.temp_cleanup"
LOG_ROTATION = "jobs.log_rotation"
DISK_SPACE_CHECK = "jobs.disk_space_check"
DB_MAINTENANCE = "jobs.db_maintenance"
SERVICE_HEALTH_CHECK = "jobs.service_health_check"
DAILY_SUMMARY = "jobs.daily_summary"
DLQ_DIGEST = "jobs.dlq_digest"
CALL_SERVICE = "jobs.call_service"
RECONCILE = "scheduler.reconcile"

#: Services the health check probes (``GET <ACTP_<SERVICE>_URL><ACTP_<SERVICE>_HEALTH_PATH or /api/health>``).
HEALTH_CHECKED_SERVICES = (
    "mplite",
    "genlite",
    "adlite",
    "workflow",
    "cloud_bridge",
    "acquisition",
    "research",
    "metrics",
    "content",
    "publish",
    "crm",
    "email",
    "upwork",
    "memory",
    "strategy",
)


def call(service: str, method: str, path: str) -> dict[str, Any]:
    """``params`` of a job served by the generic HTTP task."""
    return {"service": service, "method": method, "path": path}


POLLER, INFRA, MAINTENANCE = JobKind.POLLER, JobKind.INFRASTRUCTURE, JobKind.MAINTENANCE
PERIODIC, DAILY, WEEKLY = JobKind.PERIODIC, JobKind.DAILY, JobKind.WEEKLY

CRON_JOBS: tuple[CronJob, ...] = (
    # --- worker infrastructure -------------------------------------------------------------------
    CronJob(
        name="worker_heartbeat",
        kind=INFRA,
        interval_seconds=60,
        task=HEARTBEAT,
        description="Heartbeat row in engine_state; also upserted to Supabase actp_worker_heartbeats when configured",
        timeout_seconds=30,
    ),
    CronJob(
        name="temp_cleanup",
        kind=INFRA,
        cron="0 * * * *",
        task=TEMP_CLEANUP,
        description="Delete files older than 24 h in the worker's download directory (ACTP_DOWNLOAD_DIR)",
    ),
    CronJob(
        name="log_rotation",
        kind=MAINTENANCE,
        cron="0 0 * * *",
        task=LOG_ROTATION,
        description="Rotate *.log in ACTP_LOG_DIR (over a size, or daily), keeping the newest ACTP_LOG_KEEP copies",
    ),
    CronJob(
        name="disk_space_check",
        kind=INFRA,
        interval_seconds=600,
        task=DISK_SPACE_CHECK,
        description="Alert when free space on the data directory falls below ACTP_DISK_MIN_FREE_MB",
        timeout_seconds=60,
    ),
    CronJob(
        name="scheduler_db_maintenance",
        kind=MAINTENANCE,
        cron="30 3 * * *",
        task=DB_MAINTENANCE,
        description="Prune finished runs older than ACTP_RUN_RETENTION_DAYS, then optimize the database",
    ),
    CronJob(
        name="stale_run_sweeper",
        kind=INFRA,
        interval_seconds=300,
        trigger_type=TriggerType.RECONCILIATION,
        task=RECONCILE,
        description="Sweep runs whose worker stopped renewing its lease (the engine's reconciliation)",
    ),
    CronJob(
        name="service_health_check",
        kind=INFRA,
        interval_seconds=300,
        task=SERVICE_HEALTH_CHECK,
        params={"services": list(HEALTH_CHECKED_SERVICES)},
        description="Probe each configured service's health URL; alert when one goes down or comes back",
        timeout_seconds=120,
    ),
    CronJob(
        name="daily_summary_telegram",
        kind=DAILY,
        cron="0 21 * * *",
        task=DAILY_SUMMARY,
        description="Summarize the day's runs (by status, failures, skip reasons) as an alert for Telegram",
    ),
    CronJob(
        name="dlq_digest",
        kind=DAILY,
        cron="0 9 * * *",
        task=DLQ_DIGEST,
        description="Summarize the dead letters waiting for replay as an alert for Telegram",
    ),
    # --- cloud queue pollers ---------------------------------------------------------------------
    CronJob(
        name="mplite_queue_poll",
        kind=POLLER,
        interval_seconds=10,
        task=CALL_SERVICE,
        params=call("mplite", "GET", "/api/queue/next"),
        description="Poll MPLite's publishing queue for the next item",
    ),
    CronJob(
        name="genlite_jobs_poll",
        kind=POLLER,
        interval_seconds=10,
        task=CALL_SERVICE,
        params=call("genlite", "GET", "/api/jobs/next"),
        description="Poll GenLite's generation queue for the next local render job",
    ),
    CronJob(
        name="adlite_deployments_poll",
        kind=POLLER,
        interval_seconds=60,
        task=CALL_SERVICE,
        params=call("adlite", "GET", "/api/deployments"),
        description="Poll AdLite's active ad deployments",
    ),
    CronJob(
        name="workflow_task_poll",
        kind=POLLER,
        interval_seconds=30,
        task=CALL_SERVICE,
        params=call("workflow", "GET", "/api/tasks/next"),
        description="Poll the workflow engine for the next task for this worker",
    ),
    CronJob(
        name="cloud_bridge_poll",
        kind=POLLER,
        interval_seconds=15,
        task=CALL_SERVICE,
        params=call("cloud_bridge", "GET", "/api/cloud-tasks/next"),
        description="Poll the cloud-to-local bridge for the next cloud task",
    ),
    # --- acquisition -----------------------------------------------------------------------------
    CronJob(
        name="acquisition_discovery",
        kind=DAILY,
        cron="0 6 * * *",
        task=CALL_SERVICE,
        params=call("acquisition", "POST", "/api/cron/discovery"),
        description="Discover new prospects",
    ),
    CronJob(
        name="acquisition_scoring",
        kind=DAILY,
        cron="0 7 * * *",
        task=CALL_SERVICE,
        params=call("acquisition", "POST", "/api/cron/scoring"),
        description="Score the prospects discovered",
    ),
    CronJob(
        name="acquisition_warmup",
        kind=DAILY,
        cron="0 8 * * *",
        task=CALL_SERVICE,
        params=call("acquisition", "POST", "/api/cron/warmup"),
        description="Warm up the best-scored prospects (engagement before outreach)",
    ),
    CronJob(
        name="acquisition_outreach",
        kind=DAILY,
        cron="0 9 * * *",
        task=CALL_SERVICE,
        params=call("acquisition", "POST", "/api/cron/outreach"),
        description="Send the day's outreach messages",
        risk_tier=RiskTier.HIGH,
    ),
    CronJob(
        name="acquisition_sync",
        kind=PERIODIC,
        cron="0 */4 * * *",
        task=CALL_SERVICE,
        params=call("acquisition", "POST", "/api/cron/sync"),
        description="Sync replies and prospect states with the CRM",
    ),
    CronJob(
        name="acquisition_followup",
        kind=DAILY,
        cron="0 10 * * *",
        task=CALL_SERVICE,
        params=call("acquisition", "POST", "/api/cron/followup"),
        description="Send follow-ups to prospects who did not answer",
        risk_tier=RiskTier.HIGH,
    ),
    CronJob(
        name="acquisition_report",
        kind=WEEKLY,
        cron="0 9 * * 1",
        task=CALL_SERVICE,
        params=call("acquisition", "POST", "/api/cron/report"),
        description="Weekly acquisition funnel report",
    ),
    # --- content, research and operations --------------------------------------------------------
    CronJob(
        name="twitter_research",
        kind=PERIODIC,
        cron="0 */6 * * *",
        task=CALL_SERVICE,
        params=call("research", "POST", "/api/cron/twitter-research"),
        description="Collect Twitter/X research",
    ),
    CronJob(
        name="threads_research",
        kind=PERIODIC,
        cron="30 */6 * * *",
        task=CALL_SERVICE,
        params=call("research", "POST", "/api/cron/threads-research"),
        description="Collect Threads research",
    ),
    CronJob(
        name="youtube_analytics_ingest",
        kind=DAILY,
        cron="0 3 * * *",
        task=CALL_SERVICE,
        params=call("metrics", "POST", "/api/cron/youtube-analytics"),
        description="Ingest YouTube analytics",
    ),
    CronJob(
        name="metrics_rollup",
        kind=PERIODIC,
        cron="15 * * * *",
        task=CALL_SERVICE,
        params=call("metrics", "POST", "/api/cron/metrics-rollup"),
        description="Roll up the last hour's performance metrics",
    ),
    CronJob(
        name="content_calendar_plan",
        kind=DAILY,
        cron="0 5 * * *",
        task=CALL_SERVICE,
        params=call("content", "POST", "/api/cron/content-calendar"),
        description="Plan the content calendar",
    ),
    CronJob(
        name="publish_due_posts",
        kind=PERIODIC,
        cron="*/5 * * * *",
        task=CALL_SERVICE,
        params=call("publish", "POST", "/api/cron/publish-scheduled"),
        description="Publish the posts that are due",
        risk_tier=RiskTier.HIGH,
    ),
    CronJob(
        name="crm_sync",
        kind=PERIODIC,
        cron="*/30 * * * *",
        task=CALL_SERVICE,
        params=call("crm", "POST", "/api/cron/sync"),
        description="Sync contacts and conversations with the CRM",
    ),
    CronJob(
        name="email_inbox_sync",
        kind=PERIODIC,
        cron="*/15 * * * *",
        task=CALL_SERVICE,
        params=call("email", "POST", "/api/cron/inbox-sync"),
        description="Sync the email inbox",
    ),
    CronJob(
        name="email_sequence_send",
        kind=DAILY,
        cron="0 14 * * 1-5",
        task=CALL_SERVICE,
        params=call("email", "POST", "/api/cron/sequence-send"),
        description="Send the due steps of email sequences (weekdays)",
        risk_tier=RiskTier.HIGH,
    ),
    CronJob(
        name="upwork_scan",
        kind=PERIODIC,
        cron="0 */2 * * *",
        task=CALL_SERVICE,
        params=call("upwork", "POST", "/api/cron/scan"),
        description="Scan Upwork for matching jobs",
    ),
    CronJob(
        name="memory_compaction",
        kind=DAILY,
        cron="0 4 * * *",
        task=CALL_SERVICE,
        params=call("memory", "POST", "/api/cron/compact"),
        description="Compact the agents' memory store",
    ),
    CronJob(
        name="weekly_strategy_review",
        kind=WEEKLY,
        cron="0 10 * * 0",
        task=CALL_SERVICE,
        params=call("strategy", "POST", "/api/cron/weekly-review"),
        description="Weekly strategy review",
    ),
)
