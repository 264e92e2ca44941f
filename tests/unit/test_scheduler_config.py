"""The configuration table and its report: each variable checked, secrets masked, .env.example in step."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.scheduler import config as cfg
from agent.scheduler.config import (
    BY_NAME,
    SERVICES,
    SETTINGS,
    ConfigError,
    env_example,
    mask_secret,
    mask_url,
)
from agent.scheduler.logging_setup import configure_from, configure_logging
from agent.scheduler.settings import ConfigReport, config_report, load_settings


def load_config(environ: dict[str, str]) -> ConfigReport:
    """The report of ``environ``; ConfigError, as the worker refuses it, when a variable is bad."""
    load_settings(environ)
    report = config_report(environ)
    assert report.problems == ()
    return report


ROOT = Path(__file__).resolve().parents[2]

#: (good, bad) text per variable; bad None: the check takes any non-empty text.
CASES: dict[str, tuple[str, str | None]] = {
    "ACTP_SCHEDULER_DB": ("postgresql://actp:pw@db.example.com/actp", "mysql://root@db/actp"),
    "ACTP_WORKER_ID": ("laptop-1", "two words"),
    "ACTP_TIMEZONE": ("Europe/Berlin", "Mars/Olympus"),
    "TZ": ("EST5EDT,M3.2.0,M11.1.0", None),
    "ACTP_SCHEDULER_TASKS": ("my_tasks, team.tasks", "my-tasks"),
    "ACTP_LOG_LEVEL": ("debug", "LOUD"),
    "ACTP_LOG_FORMAT": ("json", "xml"),
    "TELEGRAM_BOT_TOKEN": ("123456:ABC-def_ghi", "not-a-token-at-all"),
    "TELEGRAM_ALERT_CHAT_IDS": ("42, -1001234567890", "42,@channel"),
    "TELEGRAM_ALLOWED_CHAT_IDS": ("42", "forty-two"),
    "TELEGRAM_APPROVER_CHAT_IDS": ("42,-1001234567890", "@alice"),
    "ACTP_APPROVER_OPERATORS": ("alice, bob", "Alice"),
    "TELEGRAM_API_BASE_URL": ("http://127.0.0.1:8081/bot", "127.0.0.1:8081"),
    "ACTP_OPERATOR_TIMEZONE": ("America/New_York", "EST5EDT,M3.2.0"),
    "SUPABASE_DB_URL": ("postgresql://postgres:s3cretpw@db.abc.supabase.co:5432/postgres", "https://abc.supabase.co"),
    "ACTP_DATA_DIR": ("~/data", None),
    "ACTP_DOWNLOAD_DIR": ("/var/tmp/dl", None),
    "ACTP_LOG_DIR": ("~/logs", None),
    "ACTP_LOG_MAX_BYTES": ("1000", "10MB"),
    "ACTP_LOG_KEEP": ("3", "0"),
    "ACTP_DISK_MIN_FREE_MB": ("512.5", "-1"),
    "ACTP_RUN_RETENTION_DAYS": ("14", "two weeks"),
    "ACTP_HTTP_TIMEOUT_SECONDS": ("2.5", "0"),
    "ACTP_TEST_POSTGRES_URL": ("postgresql://postgres@127.0.0.1:55432/postgres", "sqlite:///x.db"),
    "ACTP_TEST_PG_PORT": ("55433", "port"),
    "ACTP_TEST_PG_DATA": ("/tmp/pg", None),
    "ACTP_TEST_PG_BIN": ("/usr/lib/postgresql/16/bin", None),
    "ACTP_BENCH_QUICK": ("1", None),
}
for _service in SERVICES:
    CASES[f"ACTP_{_service.upper()}_URL"] = (f"https://{_service}.example.com", f"ftp://{_service}.example.com")
    CASES[f"ACTP_{_service.upper()}_KEY"] = ("sk-0123456789abcdef", None)
    CASES[f"ACTP_{_service.upper()}_HEALTH_PATH"] = ("/healthz", "healthz")


def test_every_variable_of_the_table_has_test_cases() -> None:
    assert sorted(CASES) == sorted(BY_NAME)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_a_good_value_is_taken_from_the_environment(name: str) -> None:
    good, _ = CASES[name]
    entry = load_config({name: good}).entries[name]
    assert (entry.source, entry.text) == ("env", good)
    assert entry.value is not None


@pytest.mark.parametrize("name", sorted(n for n, (_, bad) in CASES.items() if bad is not None))
def test_a_bad_value_raises_one_error_naming_the_variable_and_what_it_allows(name: str) -> None:
    _, bad = CASES[name]
    assert bad is not None
    with pytest.raises(ConfigError) as caught:
        load_config({name: bad})
    [problem] = caught.value.problems
    assert problem.variable == name and problem.allowed == BY_NAME[name].check.allowed
    assert name in str(caught.value) and BY_NAME[name].check.allowed in str(caught.value)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_a_missing_or_blank_variable_takes_its_default(name: str) -> None:
    for environ in ({}, {name: "   "}):
        entry = load_config(environ).entries[name]
        setting = BY_NAME[name]
        if setting.default is None:
            assert (entry.source, entry.value) == ("unset", None)
        else:
            assert entry.source == "default"
            assert entry.value == setting.check.parse(setting.default)


def test_parsed_values() -> None:
    config = load_config(
        {
            "ACTP_LOG_LEVEL": "warning",
            "TELEGRAM_ALERT_CHAT_IDS": "42, -100",
            "ACTP_SCHEDULER_TASKS": "a.b, c",
            "ACTP_DISK_MIN_FREE_MB": "12.5",
            "ACTP_LOG_KEEP": "3",
            "ACTP_DATA_DIR": "~/data",
        }
    )
    value = {name: entry.value for name, entry in config.entries.items()}
    assert (value["ACTP_LOG_LEVEL"], value["ACTP_LOG_FORMAT"]) == ("WARNING", "human")
    assert value["TELEGRAM_ALERT_CHAT_IDS"] == [42, -100]
    assert value["ACTP_SCHEDULER_TASKS"] == ["a.b", "c"]
    assert (value["ACTP_DISK_MIN_FREE_MB"], value["ACTP_LOG_KEEP"]) == (12.5, 3)
    assert value["ACTP_DATA_DIR"] == Path("~/data").expanduser()
    assert value["TELEGRAM_BOT_TOKEN"] is None and config.entries["TELEGRAM_BOT_TOKEN"].source == "unset"


def test_every_bad_variable_is_listed_in_one_error_with_secrets_masked() -> None:
    environ = {
        "ACTP_TIMEZONE": "Mars/Olympus",
        "TELEGRAM_ALERT_CHAT_IDS": "42,x",
        "ACTP_DISK_MIN_FREE_MB": "lots",
        "ACTP_LOG_FORMAT": "xml",
        "ACTP_MPLITE_URL": "ftp://mplite",
        "TELEGRAM_BOT_TOKEN": "supersecrettokenvalue",
        "SUPABASE_DB_URL": "mysql://root:hunter2hunter2@db/x",
        "ACTP_LOG_LEVEL": "INFO",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(environ)
    error = caught.value
    assert [p.variable for p in error.problems] == [
        "ACTP_TIMEZONE",
        "ACTP_LOG_FORMAT",
        "TELEGRAM_BOT_TOKEN",
        "TELEGRAM_ALERT_CHAT_IDS",
        "SUPABASE_DB_URL",
        "ACTP_DISK_MIN_FREE_MB",
        "ACTP_MPLITE_URL",
    ]
    text = str(error)
    assert text.startswith("invalid configuration (7 variable(s)):")
    assert "supersecrettokenvalue" not in text and "hunter2hunter2" not in text
    assert "'sup***'" in text and "mysql://root:***@db/x" in text
    report = config_report(environ)
    assert report.problems == error.problems and report.entries["ACTP_LOG_FORMAT"].source == "invalid"
    assert report.entries["ACTP_LOG_FORMAT"].value is None and report.entries["ACTP_LOG_FORMAT"].shown == "xml"
    assert report.entries["TELEGRAM_BOT_TOKEN"].shown == "sup***" and report.settings.log_level == "INFO"


def test_service_variables_outside_the_table_are_checked_by_the_same_rules() -> None:
    config = load_config({"ACTP_BILLING_URL": "https://billing.example.com", "ACTP_BILLING_KEY": "k" * 20})
    assert config.services == ["billing"]
    assert config.entries["ACTP_BILLING_KEY"].setting.secret
    with pytest.raises(ConfigError, match="ACTP_BILLING_URL"):
        load_config({"ACTP_BILLING_URL": "billing.example.com"})


def test_warnings_name_what_is_probably_not_meant() -> None:
    config = load_config(
        {
            "TELEGRAM_BOT_TOKEN": "123456:ABC",
            "ACTP_MPLITE_URL": "https://mplite.example.com",
            "ACTP_TIMEZON": "UTC",
            "ACTP_MPLTE_KEY": "abc",
        }
    )
    warnings = "\n".join(config.warnings)
    assert "TELEGRAM_BOT_TOKEN is set but no chat ids" in warnings
    assert "ACTP_MPLITE_URL is set without ACTP_MPLITE_KEY" in warnings
    assert "ACTP_TIMEZON is not a variable the worker reads (did you mean ACTP_TIMEZONE?)" in warnings
    assert "ACTP_MPLTE_KEY names a service the legacy jobs do not call (did you mean ACTP_MPLITE_KEY?)" in warnings
    assert load_config({}).warnings == ()


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("postgresql://actp:pw@db.example.com:5432/actp", "postgresql://actp:***@db.example.com:5432/actp"),
        ("postgresql://actp@db.example.com/actp", "postgresql://actp@db.example.com/actp"),
        ("sqlite:////home/me/.actp/scheduler.db", "sqlite:////home/me/.actp/scheduler.db"),
        ("https://svc.example.com/api?api_key=abc&page=2", "https://svc.example.com/api?api_key=***&page=2"),
        ("postgresql://u:p%40ss@h/db?sslpassword=x", "postgresql://u:***@h/db?sslpassword=***"),
    ],
)
def test_urls_lose_their_passwords(value: str, shown: str) -> None:
    assert mask_url(value) == shown


def test_secrets_show_a_prefix_only_when_long() -> None:
    assert mask_secret("123456789:AAH-token") == "123***"
    assert mask_secret("short") == "***"
    config = load_config(
        {
            "TELEGRAM_BOT_TOKEN": "123456789:AAH-token",
            "SUPABASE_DB_URL": "postgresql://postgres:s3cretpw@db.x.co:5432/postgres",
            "ACTP_MPLITE_KEY": "sk-0123456789",
            "ACTP_SCHEDULER_DB": "/srv/actp/scheduler.db",
        }
    )
    shown = {row["name"]: row["value"] for row in config.display()}
    assert shown["TELEGRAM_BOT_TOKEN"] == "123***"
    assert shown["SUPABASE_DB_URL"] == "postgresql://postgres:***@db.x.co:5432/postgres"
    assert shown["ACTP_MPLITE_KEY"] == "sk-***"
    assert shown["ACTP_SCHEDULER_DB"] == "/srv/actp/scheduler.db"
    assert sorted(config.settings.secret_values()) == ["123456789:AAH-token", "s3cretpw", "sk-0123456789"]


def test_env_example_is_generated_from_the_table() -> None:
    """Regenerate with: .venv/bin/python -m agent.scheduler config --env-example > .env.example"""
    assert (ROOT / ".env.example").read_text(encoding="utf-8") == env_example()
    listed = re.findall(r"^#([A-Z][A-Z0-9_]*)=", env_example(), flags=re.MULTILINE)
    assert listed == [s.name for s in SETTINGS]


def _variables_read_by_the_code() -> set[str]:
    sources = [*ROOT.glob("agent/**/*.py"), *ROOT.glob("jobs/**/*.py"), *ROOT.glob("bench/**/*.py")]
    sources += [*ROOT.glob("scripts/*.sh"), ROOT / "tests" / "conftest.py"]
    sources += [ROOT / n for n in ("worker.py", "telegram_bot.py", "service_registry.py", "cron_definitions.py")]
    sources = [p for p in sources if p.name not in ("config.py", "logging_setup.py") or p.parent.name != "scheduler"]
    pattern = re.compile(r"""["'{]((?:ACTP|TELEGRAM|SUPABASE)_[A-Z0-9_]*[A-Z0-9])[:"'}-]""")
    found: set[str] = set()
    for path in sources:
        if path.exists():
            found |= set(pattern.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_variable_the_code_reads_is_in_the_table() -> None:
    found = _variables_read_by_the_code()
    assert {"ACTP_SCHEDULER_DB", "ACTP_WORKER_ID", "TELEGRAM_BOT_TOKEN", "ACTP_TEST_PG_PORT"} <= found
    assert sorted(found - set(BY_NAME)) == []


def test_the_table_agrees_with_the_code_that_reads_the_variables() -> None:
    import cron_definitions
    from agent.scheduler.store import DEFAULT_DB_PATH
    from jobs import health, http, local

    used = {j.params["service"] for j in cron_definitions.CRON_JOBS if "service" in (j.params or {})}
    assert sorted(used | set(cron_definitions.HEALTH_CHECKED_SERVICES)) == sorted(SERVICES)
    defaults = {s.name: s.default for s in SETTINGS}
    assert defaults["ACTP_SCHEDULER_DB"] == str(DEFAULT_DB_PATH)
    # The jobs take every value from the settings, whose defaults are the table's: none of their own.
    for module in (local, http, health):
        assert [n for n in vars(module) if n.startswith("DEFAULT_")] == []
    settings = load_settings({})
    assert settings.download_dir == Path(defaults["ACTP_DOWNLOAD_DIR"] or "").expanduser()
    assert settings.log_max_bytes == int(defaults["ACTP_LOG_MAX_BYTES"] or 0)
    assert settings.http_timeout_seconds == float(defaults["ACTP_HTTP_TIMEOUT_SECONDS"] or 0)
    assert settings.service("mplite").health_path == defaults["ACTP_MPLITE_HEALTH_PATH"]
    assert cfg.service_settings("mplite")[0].name == http.url_variable("mplite")
    assert cfg.service_settings("mplite")[1].name == http.key_variable("mplite")


# ---------------------------------------------------------------------- logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = logging.getLogger("transitions").level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("transitions").setLevel(quiet)


def test_json_lines_carry_time_level_logger_message_and_extra_fields(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    log = logging.getLogger("agent.scheduler.test")
    log.info("run %s started", "r1", extra={"schedule": "poll", "run_id": "r1", "reason": "due"})
    log.debug("not shown")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "run r1 started" and first["level"] == "INFO"
    assert first["logger"] == "agent.scheduler.test"
    assert (first["schedule"], first["run_id"], first["reason"]) == ("poll", "r1", "due")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["time"])
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exc"]


def test_human_lines_append_extra_fields(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "human", stream=out)
    logging.getLogger("worker").debug("tick", extra={"schedule": "poll"})
    assert out.getvalue().rstrip().endswith("DEBUG worker: tick [schedule=poll]")


def test_transitions_chatter_below_warning_is_quiet(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "human", stream=out)
    chatty = logging.getLogger("transitions.core")
    chatty.setLevel(logging.DEBUG)  # even when the library's own logger lets INFO through
    chatty.info("Executed callback 'x'")
    logging.getLogger("transitions").warning("a real problem")
    text = out.getvalue()
    assert "Executed callback" not in text and "a real problem" in text
    assert logging.getLogger("transitions").level == logging.WARNING


def test_configuring_again_replaces_the_handler_and_secrets_are_redacted(restore_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "human", stream=first)
    settings = load_settings({"TELEGRAM_BOT_TOKEN": "123456:SECRETSECRET", "ACTP_LOG_FORMAT": "json"})
    configure_from(settings, stream=second)
    logging.getLogger("x").warning("token %s rejected", "123456:SECRETSECRET", extra={"detail": "123456:SECRETSECRET"})
    assert first.getvalue() == ""
    line = json.loads(second.getvalue())
    assert line["message"] == "token *** rejected" and line["detail"] == "***"
    assert "SECRETSECRET" not in second.getvalue()


def test_bad_level_or_format_is_refused(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="one of human, json"):
        configure_logging("INFO", "xml")
    with pytest.raises(ValueError, match="DEBUG, INFO"):
        configure_logging("LOUD", "human")


def test_an_env_file_fills_what_the_environment_lacks(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\n\nACTP_LOG_FORMAT=json\nexport ACTP_WORKER_ID='laptop 1'\nTELEGRAM_ALERT_CHAT_IDS=\"42\"\n"
    )
    assert cfg.read_env_file(env_file) == {
        "ACTP_LOG_FORMAT": "json",
        "ACTP_WORKER_ID": "laptop 1",
        "TELEGRAM_ALERT_CHAT_IDS": "42",
    }  # the environment winning over the file: test_scheduler_settings
    assert cfg.read_env_file(tmp_path / "missing.env") == {}
    env_file.write_text("ACTP_LOG_FORMAT json\n")
    with pytest.raises(ConfigError, match="line 1"):
        cfg.read_env_file(env_file)
    assert cfg.read_env_file(ROOT / ".env.example") == {}  # everything in it is commented out


def test_an_env_file_that_cannot_be_read_or_holds_nul_is_a_config_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / ".env"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"\.env"):
        cfg.read_env_file(folder)
    nul = tmp_path / "nul.env"
    nul.write_text("ACTP_LOG_LEVEL=de\x00bug\n")
    with pytest.raises(ConfigError, match=r"nul\.env line 1"):
        cfg.read_env_file(nul)
