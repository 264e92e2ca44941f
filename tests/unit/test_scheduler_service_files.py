"""Service files: the launchd agent and the systemd unit render this machine's paths, parse, and stop gracefully."""

from __future__ import annotations

import configparser
import plistlib
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.scheduler import service_files as sf
from agent.scheduler.definition import DEFAULT_SHUTDOWN_TIMEOUT
from agent.scheduler.engine import CHECKPOINT_WAIT_SECONDS, DELIVERY_ON_STOP_SECONDS

#: Paths with a blank and an ampersand: both files must carry them intact.
WHERE = sf.Placement(
    repo=Path("/Users/ann/My Code/actp & co"),
    python=Path("/Users/ann/My Code/actp & co/.venv/bin/python"),
    home=Path("/Users/ann"),
    log_file=Path("/Users/ann/.actp/logs/worker.log"),
)


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    """ExecStart's arguments as systemd reads them (quotes, then %% and $$)."""
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(unit["Service"]["ExecStart"])]


def test_the_stop_timeout_outlasts_the_longest_drain() -> None:
    drain = 2 * DEFAULT_SHUTDOWN_TIMEOUT.total_seconds() + DELIVERY_ON_STOP_SECONDS
    assert sf.STOP_TIMEOUT_SECONDS == 90 > drain > CHECKPOINT_WAIT_SECONDS


def test_launchd_agent_parses_with_this_machines_paths() -> None:
    agent = plistlib.loads(sf.render("macos", WHERE).encode())
    assert agent["Label"] == sf.LAUNCHD_LABEL == "com.actp.worker"
    assert agent["ProgramArguments"][:2] == ["/bin/sh", "-c"]  # the wrapper: see test_launchd_restarts_...
    assert agent["ProgramArguments"][3:] == [str(WHERE.python), f"{WHERE.repo}/worker.py"]
    assert agent["WorkingDirectory"] == str(WHERE.repo)
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == "/Users/ann/.actp/logs/worker.log"
    assert agent["ExitTimeOut"] == sf.STOP_TIMEOUT_SECONDS
    assert agent["KeepAlive"] == {"SuccessfulExit": False}  # restarted when it fails, not after a clean stop
    assert agent["RunAtLoad"] is True


def test_systemd_unit_parses_with_this_machines_paths() -> None:
    unit = parse_unit(sf.render("linux", WHERE))
    service = unit["Service"]
    assert exec_start(unit) == [str(WHERE.python), f"{WHERE.repo}/worker.py"]
    assert service["WorkingDirectory"] == str(WHERE.repo)
    assert (service["KillSignal"], service["TimeoutStopSec"]) == ("SIGTERM", str(sf.STOP_TIMEOUT_SECONDS))
    assert (service["Restart"], service["KillMode"], service["RestartPreventExitStatus"]) == (
        "on-failure",
        "mixed",
        "2",
    )
    assert (service["StandardOutput"], service["StandardError"]) == ("journal", "journal")
    assert service["EnvironmentFile"] == f"-{WHERE.repo}/.env"
    assert unit["Install"]["WantedBy"] == "default.target"


@pytest.mark.parametrize(
    "db",
    ["/var/lib/actp/scheduler.db", "postgresql://actp:p%40ss$word@db.example.com/actp", 'C:"odd" & <db>'],
)
def test_the_db_argument_survives_each_format(db: str) -> None:
    where = sf.Placement(repo=WHERE.repo, python=WHERE.python, home=WHERE.home, log_file=WHERE.log_file, db=db)
    agent = plistlib.loads(sf.render("macos", where).encode())
    assert agent["ProgramArguments"][5:] == ["--db", db]
    assert exec_start(parse_unit(sf.render("linux", where)))[2:] == ["--db", db]


def test_the_templates_state_the_stop_policy_literally() -> None:
    plist = (sf.TEMPLATES_DIR / "com.actp.worker.plist").read_text()
    unit = (sf.TEMPLATES_DIR / "actp-worker.service").read_text()
    assert "<key>ExitTimeOut</key>\n    <integer>90</integer>" in plist
    assert all(line in unit.splitlines() for line in ("TimeoutStopSec=90", "KillSignal=SIGTERM", "Restart=on-failure"))
    assert "{{PYTHON}}" in plist and "{{PYTHON}}" in unit


def test_an_unknown_placeholder_or_an_unsafe_path_is_refused() -> None:
    with pytest.raises(sf.ServiceError, match="placeholders without a value: NOPE"):
        sf.render("linux", WHERE, template="ExecStart={{PYTHON}} {{NOPE}}\n")
    odd = sf.Placement(repo=Path('/srv/"quoted"'), python=WHERE.python, home=WHERE.home, log_file=WHERE.log_file)
    with pytest.raises(sf.ServiceError, match="cannot hold it"):
        sf.render("linux", odd)
    percent = sf.Placement(repo=Path("/srv/100%"), python=WHERE.python, home=WHERE.home, log_file=WHERE.log_file)
    assert parse_unit(sf.render("linux", percent))["Service"]["WorkingDirectory"] == "/srv/100%%"
    with pytest.raises(sf.ServiceError, match="one of macos, linux"):
        sf.render("windows", WHERE)


@pytest.mark.parametrize(("name", "system"), [("Darwin", "macos"), ("Linux", "linux"), ("linux", "linux")])
def test_the_system_is_recognized(name: str, system: str) -> None:
    assert sf.current_system(name) == system


def test_an_unknown_system_asks_for_system() -> None:
    with pytest.raises(sf.ServiceError, match="pass --system"):
        sf.current_system("Windows")


def test_destinations_and_load_commands() -> None:
    home = Path("/home/ann")
    assert sf.destination("macos", home=home) == home / "Library/LaunchAgents/com.actp.worker.plist"
    assert sf.destination("linux", home=home, environ={}) == home / ".config/systemd/user/actp-worker.service"
    xdg = sf.destination("linux", home=home, environ={"XDG_CONFIG_HOME": "/cfg"})
    assert xdg == Path("/cfg/systemd/user/actp-worker.service")
    linux = sf.service_file("linux", WHERE, environ={})
    assert linux.load_command == "systemctl --user daemon-reload && systemctl --user enable --now actp-worker"
    mac = sf.service_file("macos", WHERE, environ={})
    assert mac.load_command == "launchctl load -w /Users/ann/Library/LaunchAgents/com.actp.worker.plist"


def test_placement_uses_the_repositorys_venv_an_absolute_db_and_the_log_directory(tmp_path: Path) -> None:
    where = sf.placement(db="data/s.db", environ={"HOME": str(tmp_path), "ACTP_LOG_DIR": "~/logs"}, home=tmp_path)
    assert where.repo == sf.REPO_ROOT and (where.repo / "worker.py").exists()
    assert where.python.is_absolute() and where.python.name.startswith("python")
    assert where.db == str(Path.cwd() / "data/s.db")
    assert where.log_file == tmp_path / "logs" / "worker.log"
    assert sf.placement(environ={"HOME": str(tmp_path)}).log_file == tmp_path / ".actp/logs/worker.log"
    assert sf.database_argument("postgresql://h/db") == "postgresql://h/db"
    assert sf.database_argument("  ") is None


def test_systemd_restarts_on_every_failure_but_a_configuration_error() -> None:
    import worker

    service = parse_unit(sf.render("linux", WHERE))["Service"]
    assert service["Restart"] == "on-failure"  # any non-zero status (or signal) restarts...
    assert service["RestartPreventExitStatus"].split() == [str(worker.EXIT_CONFIGURATION)]  # ...but 2
    assert worker.EXIT_CONFIGURATION == 2
    assert worker.EXIT_DATABASE_REPLACED == 3 and worker.EXIT_FAILURE == 1  # both restart


@pytest.mark.parametrize(("status", "reported"), [(0, 0), (1, 1), (2, 0), (3, 3)])
def test_launchd_restarts_on_every_failure_but_a_configuration_error(
    tmp_path: Path, status: int, reported: int
) -> None:
    """The plist's wrapper, run for real: status 2 is reported as success (KeepAlive leaves it stopped)."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\n[ "$1" = "{WHERE.repo}/worker.py" ] || exit 99\nexit {status}\n')
    fake.chmod(0o755)
    where = sf.Placement(repo=WHERE.repo, python=fake, home=WHERE.home, log_file=WHERE.log_file)
    agent = plistlib.loads(sf.render("macos", where).encode())
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    done = subprocess.run(agent["ProgramArguments"], timeout=10, check=False)
    assert done.returncode == reported


def test_launchd_wrapper_forwards_sigterm_and_returns_the_workers_status(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ntrap 'exit 7' TERM\ntouch {ready}\nwhile :; do sleep 0.05; done\n")
    fake.chmod(0o755)
    where = sf.Placement(repo=WHERE.repo, python=fake, home=WHERE.home, log_file=WHERE.log_file)
    agent = plistlib.loads(sf.render("macos", where).encode())
    proc = subprocess.Popen(agent["ProgramArguments"])
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 7  # the worker got the signal, drained, and its status came through
