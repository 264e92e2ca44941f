"""install-service --tasks: the unit (systemd) and the agent (launchd) it writes run the user's tasks.

The command each service file holds is run as the service manager would run it (its arguments,
working directory and environment), with a tasks module that lives only in the working directory.
"""

from __future__ import annotations

import configparser
import os
import plistlib
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from agent.scheduler import RunStatus, ScheduleStore
from agent.scheduler.cli import main
from tests.system.worker_process import ROOT, wait_for

pytestmark = pytest.mark.system

#: A tasks module as a user writes it: one task and the schedule that runs it every second.
USER_TASKS = """
from pathlib import Path

from agent.scheduler import ScheduleDefinition, TriggerType
from agent.scheduler.errors import DuplicateSchedule


def register(tasks, store):
    @tasks.task("greet")
    def greet(ctx):
        with Path("greetings.txt").open("a") as f:
            f.write(ctx.idempotency_key + "\\n")
        return "hello"

    try:
        store.add(ScheduleDefinition(name="greet", trigger_type=TriggerType.INTERVAL, expression="1s", target="greet"))
    except DuplicateSchedule:
        pass
"""


def systemd_command(text: str) -> tuple[list[str], Path, dict[str, str]]:
    """ExecStart's arguments, the working directory and the Environment= variables, as systemd reads them."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    service = parser["Service"]

    def unescape(value: str) -> str:
        return value.replace("%%", "%").replace("$$", "$")

    args = [unescape(a) for a in shlex.split(service["ExecStart"])]
    assignments = (unescape(a).partition("=") for a in shlex.split(service["Environment"]))
    return args, Path(unescape(service["WorkingDirectory"])), {key: value for key, _, value in assignments}


def launchd_command(text: str) -> tuple[list[str], Path, dict[str, str]]:
    """ProgramArguments, WorkingDirectory and EnvironmentVariables, as launchd reads them."""
    agent = plistlib.loads(text.encode())
    return list(agent["ProgramArguments"]), Path(agent["WorkingDirectory"]), dict(agent["EnvironmentVariables"])


@pytest.mark.parametrize("system", ["linux", "macos"])
def test_the_service_written_with_tasks_runs_the_users_tasks(
    system: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project, home, db = tmp_path / "my project", tmp_path / "home", tmp_path / "scheduler.db"
    project.mkdir()
    home.mkdir()
    (project / "user_tasks.py").write_text(USER_TASKS)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("ACTP_SCHEDULER_TASKS", raising=False)
    options = ["--tasks", "user_tasks", "--db", str(db), "--workdir", str(project), "--worker", str(ROOT / "worker.py")]
    status = main(["install-service", "--system", system, *options])
    assert status == 0, capsys.readouterr().err
    if system == "linux":
        args, cwd, service_env = systemd_command((home / ".config/systemd/user/actp-worker.service").read_text())
    else:
        args, cwd, service_env = launchd_command((home / "Library/LaunchAgents/com.actp.worker.plist").read_text())
    assert cwd == project and args[-4:] == ["--db", str(db), "--tasks", "user_tasks"]

    # The service manager's environment: no PYTHONPATH of the test run, no settings of this machine.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("ACTP_", "TELEGRAM_"))}
    env.update(service_env, ACTP_LOG_DIR=str(tmp_path / "logs"), ACTP_WORKER_ID="service-test")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def greeted() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the service's worker exited with {proc.returncode}: {log.read_text()}")
            if not db.exists():
                return False
            with ScheduleStore(db) as store:
                return any(store.runs(schedule="greet", status=RunStatus.SUCCEEDED))

        wait_for(greeted, 60, "a succeeded run of the user's task")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    with ScheduleStore(db) as store:
        run = store.runs(schedule="greet", status=RunStatus.SUCCEEDED)[0]
    assert run.outcome == "hello"
    assert run.idempotency_key in (project / "greetings.txt").read_text().split()
