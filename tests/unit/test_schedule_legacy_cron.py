"""The legacy cron table and its adapter: 33 entries, their cadences, the policy of each kind, bad entries, timezone."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

import jobs
from agent.scheduler import ConcurrencyPolicy, MissedRunPolicy, RiskTier, ScheduleStore, TriggerType
from agent.scheduler.adapters.legacy_cron import (
    BUILTIN_TASKS,
    KIND_POLICIES,
    CronJob,
    JobKind,
    LegacyCronError,
    MigrationResult,
    legacy_id,
    to_definition,
    to_definitions,
    worker_timezone,
)
from agent.scheduler.enums import ScheduleSource
from agent.scheduler.errors import InvalidSchedule
from agent.scheduler.tasks import TaskRegistry
from cron_definitions import CALL_SERVICE, CRON_JOBS
from jobs.http import ServiceCall, key_variable, url_variable

#: The issue's list: name -> cron expression, or interval in seconds.
EXPECTED_CADENCES: dict[str, str | int] = {
    "worker_heartbeat": 60,
    "temp_cleanup": "0 * * * *",
    "log_rotation": "0 0 * * *",
    "disk_space_check": 600,
    "scheduler_db_maintenance": "30 3 * * *",
    "stale_run_sweeper": 300,
    "service_health_check": 300,
    "daily_summary_telegram": "0 21 * * *",
    "dlq_digest": "0 9 * * *",
    "mplite_queue_poll": 10,
    "genlite_jobs_poll": 10,
    "adlite_deployments_poll": 60,
    "workflow_task_poll": 30,
    "cloud_bridge_poll": 15,
    "acquisition_discovery": "0 6 * * *",
    "acquisition_scoring": "0 7 * * *",
    "acquisition_warmup": "0 8 * * *",
    "acquisition_outreach": "0 9 * * *",
    "acquisition_sync": "0 */4 * * *",
    "acquisition_followup": "0 10 * * *",
    "acquisition_report": "0 9 * * 1",
    "twitter_research": "0 */6 * * *",
    "threads_research": "30 */6 * * *",
    "youtube_analytics_ingest": "0 3 * * *",
    "metrics_rollup": "15 * * * *",
    "content_calendar_plan": "0 5 * * *",
    "publish_due_posts": "*/5 * * * *",
    "crm_sync": "*/30 * * * *",
    "email_inbox_sync": "*/15 * * * *",
    "email_sequence_send": "0 14 * * 1-5",
    "upwork_scan": "0 */2 * * *",
    "memory_compaction": "0 4 * * *",
    "weekly_strategy_review": "0 10 * * 0",
}
POLLERS = {
    "mplite_queue_poll",
    "genlite_jobs_poll",
    "adlite_deployments_poll",
    "workflow_task_poll",
    "cloud_bridge_poll",
}


def job(**overrides: Any) -> CronJob:
    fields: dict[str, Any] = {
        "name": "sample",
        "kind": JobKind.DAILY,
        "task": "t",
        "description": "d",
        "cron": "0 6 * * *",
    }
    fields.update(overrides)
    return CronJob(**fields)


def test_the_table_has_the_33_jobs_with_their_cadences() -> None:
    assert len(CRON_JOBS) == 33
    assert {j.name: (j.cron if j.cron is not None else j.interval_seconds) for j in CRON_JOBS} == EXPECTED_CADENCES
    assert all(j.description for j in CRON_JOBS)


def test_every_entry_becomes_a_legacy_schedule_with_a_stable_id_and_the_worker_s_timezone() -> None:
    definitions = to_definitions(CRON_JOBS, timezone="America/New_York")
    for entry, d in zip(CRON_JOBS, definitions, strict=True):
        assert (d.name, d.id, d.source, d.target) == (
            entry.name,
            legacy_id(entry.name),
            ScheduleSource.LEGACY_CRON,
            entry.task,
        )
        if entry.cron is not None:
            assert (d.trigger_type, d.expression, d.timezone) == (TriggerType.CALENDAR, entry.cron, "America/New_York")
        else:
            assert d.expression == f"{entry.interval_seconds}s"
            assert d.trigger_type in (TriggerType.INTERVAL, TriggerType.RECONCILIATION)
    sweeper = next(d for d in definitions if d.name == "stale_run_sweeper")
    assert (sweeper.trigger_type, sweeper.target) == (TriggerType.RECONCILIATION, "scheduler.reconcile")
    # Same entry, same id: what makes a second migration a no-op.
    assert [d.id for d in to_definitions(CRON_JOBS, timezone="UTC")] == [d.id for d in definitions]


def test_policies_derive_from_the_kind() -> None:
    by_name = {d.name: d for d in to_definitions(CRON_JOBS, timezone="UTC")}
    kinds = {j.name: j.kind for j in CRON_JOBS}
    assert {n for n, k in kinds.items() if k is JobKind.POLLER} == POLLERS
    for name in POLLERS:
        d = by_name[name]
        assert (d.missed_run_policy, d.concurrency_policy) == (MissedRunPolicy.SKIP, ConcurrencyPolicy.FORBID)
        assert d.grace <= timedelta(seconds=10) and d.timeout == timedelta(seconds=60)
    for name, kind in kinds.items():
        d = by_name[name]
        policy = KIND_POLICIES[kind]
        if kind in (JobKind.DAILY, JobKind.WEEKLY):
            assert d.missed_run_policy is MissedRunPolicy.CATCH_UP_ONCE, name
        assert d.concurrency_policy is ConcurrencyPolicy.FORBID, name
        assert (d.grace, d.retry_backoff, d.breaker_cooldown) == (
            policy.grace,
            policy.retry_backoff,
            policy.breaker_cooldown,
        )
        assert d.timeout is not None and d.max_retries == policy.max_retries
    # Entries override what they set themselves.
    assert by_name["acquisition_outreach"].risk_tier is RiskTier.HIGH
    assert by_name["acquisition_discovery"].risk_tier is KIND_POLICIES[JobKind.DAILY].risk_tier
    assert by_name["worker_heartbeat"].timeout == timedelta(seconds=30)
    assert by_name["temp_cleanup"].missed_run_policy is MissedRunPolicy.SKIP
    assert by_name["log_rotation"].missed_run_policy is MissedRunPolicy.CATCH_UP_ONCE


def test_every_target_is_a_registered_task_and_every_http_entry_names_a_valid_call() -> None:
    tasks = TaskRegistry()
    jobs.register(tasks, cast(ScheduleStore, object()), worker_id="unit")
    assert tasks.names() == sorted(jobs.TASK_NAMES)
    assert {j.task for j in CRON_JOBS} <= set(tasks.names()) | BUILTIN_TASKS
    to_definitions(CRON_JOBS, timezone="UTC", tasks=tasks)  # raises on an unknown task
    http = [j for j in CRON_JOBS if j.task == CALL_SERVICE]
    assert len(http) == 24
    for entry in http:
        call = ServiceCall.from_params(entry.params)
        assert call.method in ("GET", "POST") and call.path.startswith("/api/")
        assert url_variable(call.service).startswith("ACTP_") and key_variable(call.service).endswith("_KEY")
    assert url_variable("mplite") == "ACTP_MPLITE_URL" and key_variable("cloud_bridge") == "ACTP_CLOUD_BRIDGE_KEY"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cron": "61 * * * *"}, "expression"),
        ({"cron": "0 6 * *"}, "expression"),
        ({"cron": None}, "cron/interval_seconds"),
        ({"interval_seconds": 60}, "cron/interval_seconds"),
        ({"cron": None, "interval_seconds": 0}, "interval_seconds"),
        ({"cron": None, "interval_seconds": 1.5}, "interval_seconds"),
        ({"kind": "hourly"}, "kind"),
        ({"task": "no spaces allowed"}, "target"),
        ({"params": {"not": {1, 2}}}, "params"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_seconds": "1m"}, "timeout_seconds"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_entry_and_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(LegacyCronError) as caught:
        to_definition(job(name="broken_job", **overrides), timezone="UTC")
    assert caught.value.job == "broken_job"
    assert caught.value.field == field
    assert "legacy cron entry 'broken_job'" in str(caught.value)
    assert isinstance(caught.value.__cause__, InvalidSchedule | type(None))


def test_a_duplicate_name_or_an_unregistered_task_is_refused_naming_the_entry() -> None:
    with pytest.raises(LegacyCronError, match=r"'twice'.*a name used by one entry only"):
        to_definitions([job(name="twice"), job(name="twice")], timezone="UTC")
    tasks = TaskRegistry()
    tasks.add("t", lambda ctx: None)
    with pytest.raises(LegacyCronError, match=r"'orphan'.*task='missing'.*registered task: t"):
        to_definitions([job(name="ok"), job(name="orphan", task="missing")], timezone="UTC", tasks=tasks)


def test_migration_result_summary() -> None:
    assert MigrationResult(added=("a", "b"), present=("c",)).summary() == "added 2, already present 1"
    text = MigrationResult(added=(), present=("c",), retired=("x",), conflicts=("y",)).summary()
    assert text.startswith("added 0, already present 1") and "(x)" in text and "(y)" in text


class TestWorkerTimezone:
    def test_actp_timezone_wins(self, tmp_path: Path) -> None:
        env = {"ACTP_TIMEZONE": "Asia/Tokyo", "TZ": "Europe/Berlin"}
        assert worker_timezone(env, localtime=tmp_path / "none") == "Asia/Tokyo"

    def test_a_bad_actp_timezone_is_an_error_naming_it(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidSchedule) as caught:
            worker_timezone({"ACTP_TIMEZONE": "Mars/Olympus"}, localtime=tmp_path / "none")
        assert caught.value.field == "ACTP_TIMEZONE"

    @pytest.mark.parametrize("tz", ["Europe/Berlin", ":Europe/Berlin", "/usr/share/zoneinfo/Europe/Berlin"])
    def test_tz_next(self, tmp_path: Path, tz: str) -> None:
        assert worker_timezone({"TZ": tz}, localtime=tmp_path / "none") == "Europe/Berlin"

    def test_then_the_localtime_link_then_utc(self, tmp_path: Path) -> None:
        link = tmp_path / "localtime"
        link.symlink_to("/usr/share/zoneinfo/America/New_York")
        # A POSIX rule in TZ is not an IANA name: passed over.
        assert worker_timezone({"TZ": "EST5EDT,M3.2.0,M11.1.0"}, localtime=link) == "America/New_York"
        mac = tmp_path / "mac_localtime"
        mac.symlink_to("/var/db/timezone/zoneinfo/Australia/Sydney")
        assert worker_timezone({}, localtime=mac) == "Australia/Sydney"
        plain = tmp_path / "plain_file"
        plain.write_bytes(b"TZif")
        assert worker_timezone({}, localtime=plain) == "UTC"
        assert worker_timezone({}, localtime=tmp_path / "missing") == "UTC"
        odd = tmp_path / "odd_link"
        odd.symlink_to("/somewhere/else")
        assert worker_timezone({}, localtime=odd) == "UTC"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"method": "GET", "path": "/x"}, "params.service"),
        ({"service": "Bad-Name", "path": "/x"}, "params.service"),
        ({"service": "s", "method": "TRACE", "path": "/x"}, "params.method"),
        ({"service": "s", "path": "x"}, "params.path"),
        ({"service": "s", "path": "/x", "timeout_seconds": 0}, "params.timeout_seconds"),
        ({"service": "s", "path": "/x", "query": ["a"]}, "params.query"),
        ({"service": "s", "path": "/x", "auth": "yes"}, "params.auth"),
    ],
)
def test_a_bad_http_call_is_refused_naming_the_param(params: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ServiceCall.from_params(params)
