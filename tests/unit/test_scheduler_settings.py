"""The typed settings: read once from a mapping, defaults from the table, one error naming every bad variable."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agent.scheduler.config import BY_NAME, SERVICES, SETTINGS, ConfigError, read_env_file
from agent.scheduler.settings import Settings, check_settings, config_report, environment, load_settings
from agent.scheduler.tasks import TaskSpec

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "123456789:AAH-token"


def test_an_empty_environment_gives_the_tables_defaults() -> None:
    settings = load_settings({})
    assert settings.scheduler_db == str(Path("~/.actp/scheduler.db").expanduser())
    assert (settings.log_level, settings.log_format) == ("INFO", "human")
    assert settings.log_dir == Path("~/.actp/logs").expanduser()
    assert (settings.log_max_bytes, settings.log_keep, settings.run_retention_days) == (10485760, 7, 30)
    assert (settings.disk_min_free_mb, settings.http_timeout_seconds) == (1024.0, 20.0)
    assert settings.worker_id is None and settings.telegram_bot_token is None and settings.services == {}
    assert settings.alert_chat_ids == [] and settings.task_modules == []


def test_every_variable_of_the_table_is_a_field_aliased_to_its_name() -> None:
    aliases = {f.validation_alias for f in Settings.model_fields.values()} - {None}
    services = {f"ACTP_{s.upper()}_{kind}" for s in SERVICES for kind in ("URL", "KEY", "HEALTH_PATH")}
    listed = {s.name for s in SETTINGS} - services
    assert listed == aliases


def test_values_are_checked_and_typed_and_blanks_count_as_unset() -> None:
    settings = load_settings(
        {
            "ACTP_LOG_LEVEL": " debug ",
            "ACTP_WORKER_ID": "laptop-1",
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_ALLOWED_CHAT_IDS": "42, -1001",
            "ACTP_LOG_KEEP": "3",
            "ACTP_SCHEDULER_TASKS": "a.tasks, b",
            "ACTP_DISK_MIN_FREE_MB": "  ",
            "ACTP_CRM_URL": "https://crm.example.com",
            "ACTP_CRM_KEY": "sk-0123456789",
            "ACTP_BILLING_URL": "https://billing.example.com",
        }
    )
    assert settings.log_level == "DEBUG" and settings.effective_worker_id == "laptop-1"
    assert settings.alert_chat_ids == [42, -1001] and settings.log_keep == 3
    assert settings.task_modules == ["a.tasks", "b"] and settings.disk_min_free_mb == 1024.0
    assert settings.service("crm").url == "https://crm.example.com" and settings.service("crm").key == "sk-0123456789"
    assert settings.service("billing").health_path == "/api/health" and settings.service("upwork").url is None
    assert settings.is_set("ACTP_CRM_KEY") and not settings.is_set("ACTP_UPWORK_KEY")
    assert sorted(settings.secret_values()) == [TOKEN, "sk-0123456789"]
    assert TOKEN not in repr(settings) and "sk-0123456789" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "bad", "words"),
    [
        ("ACTP_LOG_LEVEL", "loud", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("ACTP_LOG_KEEP", "0", "a whole number, 1 or more"),
        ("ACTP_DISK_MIN_FREE_MB", "lots", "a number, 0 or more"),
        ("ACTP_SCHEDULER_DB", "mysql://h/db", "a SQLite file path, or a sqlite:// or postgresql:// URL"),
        ("TELEGRAM_ALERT_CHAT_IDS", "forty", "chat ids as whole numbers, comma-separated"),
        ("ACTP_TIMEZONE", "Mars/Olympus", "an IANA timezone name"),
        ("ACTP_SCHEDULER_TASKS", "not a module", "Python module names, comma-separated"),
        ("ACTP_CRM_URL", "crm.example.com", "a URL (http:// or https://) such as https://crm.example.com"),
        ("ACTP_BILLING_HEALTH_PATH", "health", 'a path starting with "/"'),
    ],
)
def test_each_bad_value_names_its_variable_and_what_it_allows(name: str, bad: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: bad})
    [problem] = caught.value.problems
    assert (problem.variable, problem.shown) == (name, bad)
    assert words in problem.allowed and f"{name}={bad!r}: {words}" in str(caught.value)


def test_every_bad_variable_is_listed_at_once_and_secrets_are_masked() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"ACTP_LOG_FORMAT": "xml", "TELEGRAM_BOT_TOKEN": "not-a-token-at-all", "ACTP_LOG_KEEP": "x"})
    assert [p.variable for p in caught.value.problems] == ["ACTP_LOG_FORMAT", "TELEGRAM_BOT_TOKEN", "ACTP_LOG_KEEP"]
    assert "not-a-token-at-all" not in str(caught.value) and "'not***'" in str(caught.value)
    assert str(caught.value).startswith("invalid configuration (3 variable(s)):")


def test_the_configuration_report_is_the_settings_reading() -> None:
    env = {
        "ACTP_LOG_LEVEL": "loud",
        "ACTP_RUN_RETENTION_DAYS": "-1",
        "SUPABASE_DB_URL": "mysql://u:pw@h/d",
        "ACTP_LOG_KEEP": " 4 ",
        "ACTP_BILLING_URL": "https://billing.example.com",
        "ACTP_CRM_KEY": "sk-0123456789",
    }
    report = config_report(env)
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert report.problems == caught.value.problems
    assert [p.variable for p in report.problems] == ["ACTP_LOG_LEVEL", "SUPABASE_DB_URL", "ACTP_RUN_RETENTION_DAYS"]
    settings = report.settings
    entries = report.entries
    assert (entries["ACTP_LOG_KEEP"].source, entries["ACTP_LOG_KEEP"].value, entries["ACTP_LOG_KEEP"].text) == (
        "env",
        settings.log_keep,
        "4",
    )
    assert (entries["ACTP_LOG_LEVEL"].source, settings.log_level) == ("invalid", "INFO")
    assert entries["ACTP_LOG_FORMAT"].source == "default" and entries["ACTP_WORKER_ID"].source == "unset"
    assert entries["ACTP_BILLING_URL"].value == settings.service("billing").url and report.services == ["billing"]
    assert entries["ACTP_CRM_KEY"].source == "env" and entries["ACTP_CRM_URL"].source == "unset"
    assert entries["ACTP_CRM_HEALTH_PATH"].source == "default"
    assert "ACTP_BILLING_KEY" not in entries  # a service outside the table lists what is set


def test_only_reads_the_variables_named_and_check_settings_reads_bad_ones_as_unset() -> None:
    env = {"ACTP_LOG_LEVEL": "loud", "ACTP_WORKER_ID": "w-2"}
    assert load_settings(env, only=["ACTP_WORKER_ID"]).worker_id == "w-2"
    settings, problems = check_settings(env)
    assert settings.log_level == BY_NAME["ACTP_LOG_LEVEL"].default and settings.worker_id == "w-2"
    assert [p.variable for p in problems] == ["ACTP_LOG_LEVEL"]


def test_a_tasks_required_variables_are_judged_by_the_settings() -> None:
    spec = TaskSpec(name="t", fn=lambda ctx: None, requires=("ACTP_CRM_KEY", "ACTP_CRM_URL"))
    settings = load_settings({"ACTP_CRM_URL": "https://crm.example.com"})
    assert spec.missing_configuration(settings) == ["ACTP_CRM_KEY"]


def test_an_env_file_is_read_under_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ACTP_WORKER_ID=from-file\nACTP_LOG_KEEP=4\n", encoding="utf-8")
    monkeypatch.setenv("ACTP_WORKER_ID", "from-environment")
    monkeypatch.delenv("ACTP_LOG_KEEP", raising=False)
    settings = load_settings(env_file=env_file)
    assert (settings.worker_id, settings.log_keep) == ("from-environment", 4)


def test_env_files_stack_under_the_environment_and_say_where_each_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beside, workdir = tmp_path / "beside.env", tmp_path / "workdir.env"
    beside.write_text("ACTP_WORKER_ID=beside\nACTP_LOG_KEEP=3\nACTP_LOG_LEVEL=DEBUG\n", encoding="utf-8")
    workdir.write_text("ACTP_WORKER_ID=workdir\nnot a line\n", encoding="utf-8")
    monkeypatch.setenv("ACTP_LOG_LEVEL", "INFO")
    monkeypatch.delenv("ACTP_WORKER_ID", raising=False)
    monkeypatch.delenv("ACTP_LOG_KEEP", raising=False)
    env = environment([beside, workdir, tmp_path / "missing.env", beside])
    assert (env.values["ACTP_WORKER_ID"], env.values["ACTP_LOG_KEEP"], env.values["ACTP_LOG_LEVEL"]) == (
        "workdir",  # the later file wins
        "3",
        "INFO",  # the environment wins over every file
    )
    assert env.from_file == {"ACTP_WORKER_ID": str(workdir), "ACTP_LOG_KEEP": str(beside)}
    assert env.files == (str(beside), str(workdir))  # read once each; a missing one is not listed
    assert [(p.variable, p.shown) for p in env.problems] == [(f"{workdir} line 2", "(not shown)")]
    with pytest.raises(ConfigError, match="line 2='\\(not shown\\)'"):
        read_env_file(workdir)


def test_an_env_file_that_is_no_file_to_read_is_a_problem_not_a_crash_nor_a_hang(tmp_path: Path) -> None:
    loop = tmp_path / "loop.env"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.env"
    dangling.symlink_to(tmp_path / "nowhere")
    fifo = tmp_path / "fifo.env"
    os.mkfifo(fifo)
    device = tmp_path / "device.env"
    device.symlink_to("/dev/zero")
    huge = tmp_path / "huge.env"
    huge.write_text("A=" + "x" * (2 * 1024 * 1024) + "\n")
    env = environment([loop, dangling, fifo, device, huge, tmp_path / "missing.env"])
    assert [p.variable for p in env.problems] == [str(loop), str(dangling), str(fifo), str(device), str(huge)]
    assert {p.shown for p in env.problems} == {"(unreadable)"}
    assert [p.allowed.rpartition(" (")[2] for p in env.problems] == [
        "OSError)",  # a symbolic link loop
        "a broken symbolic link)",
        "not a regular file)",
        "not a regular file)",
        f"got {huge.stat().st_size} bytes)",
    ]
    assert env.values == dict(os.environ)


#: The one module that reads the process environment; every other one is given a Settings.
ENVIRONMENT_READER = "agent/scheduler/settings.py"


def test_nothing_but_the_settings_module_reads_the_environment() -> None:
    sources = [*ROOT.glob("agent/**/*.py"), *ROOT.glob("jobs/**/*.py")]
    sources += [ROOT / n for n in ("worker.py", "telegram_bot.py", "cron_definitions.py")]
    # The process's environment only: a mapping passed in (``environ.get(...)``) is what a caller read here.
    reading = re.compile(r"os\.environ|getenv|from os import")
    found = sorted(
        str(p.relative_to(ROOT))
        for p in sources
        if reading.search(p.read_text(encoding="utf-8")) and str(p.relative_to(ROOT)) != ENVIRONMENT_READER
    )
    assert found == []
