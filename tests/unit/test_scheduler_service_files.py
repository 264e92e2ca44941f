"""Service files: the launchd agent and the systemd unit render the given paths and tasks, parse, stop gracefully."""

from __future__ import annotations

import configparser
import plistlib
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.scheduler import service_files as sf
from agent.scheduler.cli import main
from agent.scheduler.definition import DEFAULT_SHUTDOWN_TIMEOUT
from agent.scheduler.engine import CHECKPOINT_WAIT_SECONDS, DELIVERY_ON_STOP_SECONDS

#: Paths with a blank and an ampersand: both files must carry them intact.
WHERE = sf.Placement(
    workdir=Path("/Users/ann/My Code/actp & co"),
    python=Path("/Users/ann/My Code/actp & co/.venv/bin/python"),
    worker=Path("/Users/ann/My Code/actp & co/worker.py"),
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
    assert agent["ProgramArguments"][3:] == [str(WHERE.python), str(WHERE.worker)]
    assert agent["WorkingDirectory"] == agent["EnvironmentVariables"]["PYTHONPATH"] == str(WHERE.workdir)
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == "/Users/ann/.actp/logs/worker.log"
    assert agent["ExitTimeOut"] == sf.STOP_TIMEOUT_SECONDS
    assert agent["KeepAlive"] == {"SuccessfulExit": False}  # restarted when it fails, not after a clean stop
    assert agent["RunAtLoad"] is True


def test_systemd_unit_parses_with_this_machines_paths() -> None:
    unit = parse_unit(sf.render("linux", WHERE))
    service = unit["Service"]
    assert exec_start(unit) == [str(WHERE.python), str(WHERE.worker)]
    assert service["WorkingDirectory"] == str(WHERE.workdir)
    assert (service["KillSignal"], service["TimeoutStopSec"]) == ("SIGTERM", str(sf.STOP_TIMEOUT_SECONDS))
    assert (service["Restart"], service["KillMode"], service["RestartPreventExitStatus"]) == (
        "on-failure",
        "mixed",
        "2",
    )
    assert (service["StandardOutput"], service["StandardError"]) == ("journal", "journal")
    assert service["EnvironmentFile"] == f"-{WHERE.workdir}/.env"
    assert shlex.split(service["Environment"]) == ["PYTHONUNBUFFERED=1", f"PYTHONPATH={WHERE.workdir}"]
    assert unit["Install"]["WantedBy"] == "default.target"


@pytest.mark.parametrize(
    "db",
    ["/var/lib/actp/scheduler.db", "postgresql://actp:p%40ss$word@db.example.com/actp", 'C:"odd" & <db>'],
)
def test_the_db_argument_survives_each_format(db: str) -> None:
    where = WHERE.__class__(**{**placement_fields(WHERE), "db": db, "tasks": ("my_tasks", "team.tasks")})
    agent = plistlib.loads(sf.render("macos", where).encode())
    expected = ["--db", db, "--tasks", "my_tasks", "--tasks", "team.tasks"]
    assert agent["ProgramArguments"][5:] == expected
    assert exec_start(parse_unit(sf.render("linux", where)))[2:] == expected


def placement_fields(where: sf.Placement) -> dict[str, object]:
    return {name: getattr(where, name) for name in sf.Placement.__dataclass_fields__}


def test_without_tasks_or_db_the_worker_gets_no_arguments() -> None:
    assert WHERE.arguments == []
    assert plistlib.loads(sf.render("macos", WHERE).encode())["ProgramArguments"][5:] == []


def test_the_templates_state_the_stop_policy_literally() -> None:
    plist = sf.template_text("macos")
    unit = sf.template_text("linux")
    assert "<key>ExitTimeOut</key>\n    <integer>90</integer>" in plist
    assert all(line in unit.splitlines() for line in ("TimeoutStopSec=90", "KillSignal=SIGTERM", "Restart=on-failure"))
    assert "{{PYTHON}}" in plist and "{{PYTHON}}" in unit


def test_an_unknown_placeholder_or_an_unsafe_path_is_refused() -> None:
    with pytest.raises(sf.ServiceError, match="placeholders without a value: NOPE"):
        sf.render("linux", WHERE, template="ExecStart={{PYTHON}} {{NOPE}}\n")
    odd = WHERE.__class__(**{**placement_fields(WHERE), "workdir": Path('/srv/"quoted"')})
    with pytest.raises(sf.ServiceError, match="cannot hold it"):
        sf.render("linux", odd)
    percent = WHERE.__class__(**{**placement_fields(WHERE), "workdir": Path("/srv/100%")})
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
    assert sf.destination("macos", home=home, environ={}) == home / "Library/LaunchAgents/com.actp.worker.plist"
    assert sf.destination("linux", home=home, environ={}) == home / ".config/systemd/user/actp-worker.service"
    xdg = sf.destination("linux", home=home, environ={"XDG_CONFIG_HOME": "/cfg"})
    assert xdg == Path("/cfg/systemd/user/actp-worker.service")
    linux = sf.service_file("linux", WHERE, environ={})
    assert linux.load_command == "systemctl --user daemon-reload && systemctl --user enable --now actp-worker"
    mac = sf.service_file("macos", WHERE, environ={})
    assert mac.load_command == "launchctl load -w /Users/ann/Library/LaunchAgents/com.actp.worker.plist"


def test_placement_defaults_to_this_interpreter_and_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "worker.py").write_text("")
    monkeypatch.chdir(tmp_path)
    env = {"HOME": str(tmp_path), "ACTP_LOG_DIR": "~/logs"}
    where = sf.placement(db="data/s.db", tasks=["my_tasks"], environ=env, home=tmp_path)
    assert (where.workdir, where.worker) == (tmp_path, tmp_path / "worker.py")
    assert where.python == Path(sys.executable).absolute()
    assert where.db == str(tmp_path / "data/s.db")
    assert where.tasks == ("my_tasks",)
    assert where.log_file == tmp_path / "logs" / "worker.log"
    assert sf.placement(environ={"HOME": str(tmp_path)}).log_file == tmp_path / ".actp/logs/worker.log"


def test_placement_takes_explicit_paths_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "run.py").write_text("")
    monkeypatch.chdir(tmp_path)
    where = sf.placement(
        workdir=Path("srv"), worker=Path("bin/run.py"), python=Path(sys.executable), home=tmp_path, environ={}
    )
    assert (where.workdir, where.worker) == (tmp_path / "srv", tmp_path / "bin/run.py")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"workdir": Path("nope")}, "--workdir"),
        ({"python": Path("notes.txt")}, "notes.txt: not an executable file"),
        ({"worker": Path("missing.py")}, "--worker"),
        ({}, "no such file in the working directory; pass --worker PATH or --workdir DIR"),
    ],
)
def test_placement_names_the_option_that_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Path], words: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(sf.ServiceError, match=re.escape(words)):
        sf.placement(home=tmp_path, environ={}, **kwargs)


def test_the_package_knows_nothing_of_the_checkout() -> None:
    source = Path(sf.__file__).read_text()
    assert "REPO_ROOT" not in source and "parents[" not in source
    assert not hasattr(sf, "venv_python")
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
    fake.write_text(f'#!/bin/sh\n[ "$1" = "{WHERE.worker}" ] || exit 99\nexit {status}\n')
    fake.chmod(0o755)
    where = WHERE.__class__(**{**placement_fields(WHERE), "python": fake})
    agent = plistlib.loads(sf.render("macos", where).encode())
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    done = subprocess.run(agent["ProgramArguments"], timeout=10, check=False)
    assert done.returncode == reported


def test_launchd_wrapper_forwards_sigterm_and_returns_the_workers_status(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ntrap 'exit 7' TERM\ntouch {ready}\nwhile :; do sleep 0.05; done\n")
    fake.chmod(0o755)
    where = WHERE.__class__(**{**placement_fields(WHERE), "python": fake})
    agent = plistlib.loads(sf.render("macos", where).encode())
    proc = subprocess.Popen(agent["ProgramArguments"])
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 7  # the worker got the signal, drained, and its status came through


def install(home: Path, *args: str) -> list[str]:
    """ExecStart of the unit ``install-service --system linux ARGS`` writes under ``home``."""
    assert main(["install-service", "--system", "linux", *args]) == 0
    return exec_start(parse_unit((home / ".config/systemd/user/actp-worker.service").read_text()))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a worker script, with HOME in tmp_path and no tasks in the environment."""
    (tmp_path / "worker.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_CONFIG_HOME", "ACTP_SCHEDULER_TASKS", "ACTP_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_install_service_writes_the_tasks_into_the_unit(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = [str(Path(sys.executable).absolute()), str(project / "worker.py")]
    assert install(project) == worker
    assert install(project, "--tasks", "my_tasks", "team.tasks") == [
        *worker,
        *("--tasks", "my_tasks", "--tasks", "team.tasks"),
    ]
    assert install(project, "--tasks", "a", "--tasks", "b")[2:] == ["--tasks", "a", "--tasks", "b"]
    monkeypatch.setenv("ACTP_SCHEDULER_TASKS", " env_tasks, team.more ")
    assert install(project)[2:] == ["--tasks", "env_tasks", "--tasks", "team.more"]
    assert install(project, "--tasks", "given")[2:] == ["--tasks", "given"]  # the option wins


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--tasks"], "", "argument --tasks: expected at least one argument"),
        (["--tasks", "my-tasks"], "", "argument --tasks: 'my-tasks': must be a module's dotted name"),
        ([], "ok, bad name", "ACTP_SCHEDULER_TASKS='ok, bad name': Python module names, comma-separated"),
        (["--workdir", "nowhere"], "", "argument --workdir: 'nowhere': not a directory"),
        (["--worker", "nowhere.py"], "", "--worker "),
        (["--python", ""], "", "argument --python: '': must be a path on one line"),
    ],
)
def test_install_service_refuses_a_bad_option_in_one_line_naming_it(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    env: str,
    words: str,
) -> None:
    monkeypatch.setenv("ACTP_SCHEDULER_TASKS", env)
    try:
        status = main(["install-service", "--system", "linux", "--print", *args])
    except SystemExit as exc:  # argparse's own errors exit; the command's return the status
        status = int(exc.code or 0)
    assert status == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err
