"""A fresh clone does what the README says: the quickstart's ``make run``, then "Your first tasks module" as written.

The committed HEAD is cloned into a temporary directory and given a venv of its own: the
dependencies come from this checkout's venv (a ``.pth`` file, nothing is downloaded), the package
is installed editable from the clone, and ``make`` finds it installed. HOME is a temporary
directory, so ``~/.actp/scheduler.db`` and ``~/actp-tasks`` land there. The section's blocks are
read from the clone's README by their markers (see ``tests/markdown_blocks.py``): files are
written, the worker's command is started and stays running, commands run one after another in
the clone through ``bash`` and must succeed, and what the README shows of their output and of the
worker's log must appear, by shape.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.scheduler import RunStatus, ScheduleStore
from agent.scheduler.errors import SchedulerError
from tests.markdown_blocks import Block, command_lines, missing_lines, section_blocks
from tests.system.worker_process import ROOT, wait_for

pytestmark = pytest.mark.system

#: The longest one step may take: a command, the worker's start or stop, a run (a loaded machine: generous).
STEP_SECONDS = 60
#: The legacy cron table's jobs, which the worker migrates on its first start.
LEGACY_JOBS = 33
#: What the quickstart is: these two commands.
QUICKSTART = [["make", "run"], ["make", "test"]]


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_SECONDS, check=False)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def clean_environment(home: Path) -> dict[str, str]:
    """This process's environment without what would point the clone elsewhere, with HOME in ``home``."""
    dropped = ("PYTHON", "VIRTUAL_ENV", "ACTP_", "TELEGRAM_", "SUPABASE_", "MAKE", "MFLAGS", "PIP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    return env | {"HOME": str(home), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}


def fresh_venv(clone: Path, env: dict[str, str]) -> None:
    """The clone's .venv as ``make install`` leaves it, without downloading: dependencies from this venv."""
    venv = clone / ".venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], clone, env)
    python = str(venv / "bin" / "python")
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], clone, env).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", "."], clone, env)
    checksum = run(["sh", "-c", "cksum requirements.txt | cut -d' ' -f1"], clone, env).strip()
    (venv / f".installed-{checksum}").touch()  # the Makefile's stamp: requirements installed


def started(command: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``command`` in bash in its own process group, as a terminal runs it; stdout and stderr to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def interrupted(proc: subprocess.Popen[bytes], log: Path) -> int:
    """Ctrl-C: SIGINT to the process group; the exit status."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=STEP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STEP_SECONDS)
        raise AssertionError(f"still running {STEP_SECONDS}s after SIGINT\n{log.read_text(errors='replace')}") from None


def worker_in(proc: subprocess.Popen[bytes]) -> int:
    """The pid of the worker that ``proc`` (``make run``, in its own process group) started."""
    listing = subprocess.run(["ps", "-eo", "pid=,pgid=,args="], capture_output=True, text=True, check=True).stdout
    found = [
        int(pid)
        for pid, pgid, args in (line.split(maxsplit=2) for line in listing.splitlines() if line.count(" ") >= 2)
        if int(pgid) == proc.pid and "worker.py" in args.split() and "python" in args.split()[0]
    ]
    assert len(found) == 1, listing
    return found[0]


def stop_if_running(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STEP_SECONDS)


def readable(db: Path, check: Callable[[ScheduleStore], bool]) -> Callable[[], bool]:
    """A condition on the database, read-only; False while it does not exist or has no schema yet."""

    def holds() -> bool:
        if not db.exists():
            return False
        try:
            with ScheduleStore(db, read_only=True) as store:
                return check(store)
        except SchedulerError:
            return False

    return holds


def test_a_fresh_clone_runs_the_quickstart_and_the_first_tasks_module_as_the_readme_writes_them(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("the README is followed in a git clone of this checkout, and this is not one")
    clone, home, elsewhere = tmp_path / "actp", tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    env = clean_environment(home)
    run(["git", "clone", "--quiet", str(ROOT), str(clone)], tmp_path, env)
    fresh_venv(clone, env)
    python = clone / ".venv" / "bin" / "python"
    assert subprocess.run(["make", "-q", "install"], cwd=clone, env=env, check=False).returncode == 0
    imported = run([str(python), "-c", "import agent.scheduler as s; print(s.__file__)"], elsewhere, env).strip()
    assert Path(imported).is_relative_to(clone), imported  # the clone's package, not this checkout's

    readme = clone / "README.md"
    db = home / ".actp" / "scheduler.db"

    # The quickstart: `make run` on the embedded default, stopped with Ctrl-C.
    (quick,) = [b for b in section_blocks(readme, "Quickstart") if b.lang == "sh"]
    lines = command_lines(quick)
    assert [line.split("#")[0].split() for line in lines] == QUICKSTART
    log = tmp_path / "make-run.log"
    proc = started(lines[0], clone, env, log)
    try:
        wait_for(
            readable(db, lambda s: len(s.list()) == LEGACY_JOBS and len(s.reports(limit=5)) == 1),
            STEP_SECONDS,
            "the worker of `make run` to migrate the legacy jobs and start",
        )
        # Ctrl-C would reach make too, which then ends by SIGINT whatever the worker did: signal the
        # worker alone, so that make's exit status is the worker's.
        os.kill(worker_in(proc), signal.SIGINT)
        assert proc.wait(timeout=STEP_SECONDS) == 0, log.read_text(errors="replace")
    finally:
        stop_if_running(proc)
    with ScheduleStore(db, read_only=True) as store:
        assert len(store.list(enabled=None)) == LEGACY_JOBS

    # "Your first tasks module", block by block.
    steps = [b for b in section_blocks(readme, "Your first tasks module") if b.kind]
    kinds = [b.kind for b in steps]
    assert kinds.count("worker") == 1 and {"file", "commands", "output", "log"} <= set(kinds), kinds
    worker_log = tmp_path / "worker.log"
    worker: subprocess.Popen[bytes] | None = None
    outputs: list[str] = []
    try:
        for block in steps:
            if block.kind == "file":
                assert block.arg is not None
                path = Path(block.arg.replace("~", str(home), 1))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text)
            elif block.kind == "worker":
                (command,) = command_lines(block)
                worker = started(command, clone, env, worker_log)
                wait_for(
                    readable(db, lambda s: len(s.reports(limit=5)) == 2),
                    STEP_SECONDS,
                    "the worker with the tasks module to start",
                )
            elif block.kind == "log":
                shown(block, lambda: worker_log.read_text(errors="replace"))
            elif block.kind == "commands":
                outputs = [run(["bash", "-c", command], clone, env) for command in command_lines(block)]
            elif block.kind == "output":
                missing = missing_lines(block, "\n".join(outputs))
                assert missing == [], f"{block.where}: not in the output\n{missing}\n{''.join(outputs)}"
        assert worker is not None
        assert interrupted(worker, worker_log) == 0, worker_log.read_text(errors="replace")
    finally:
        stop_if_running(worker)

    with ScheduleStore(db, read_only=True) as store:
        (event_run,) = store.runs(schedule="on_report_ready")
        hourly = store.get("hello_hourly")
    assert event_run.status is RunStatus.SUCCEEDED and event_run.outcome == "report weekly is ready"
    assert event_run.params["payload"] == {"report": "weekly"} and event_run.params["event"] == "report.ready"
    assert hourly.source.value == "agent" and hourly.target == "hello"
    assert_the_service_finds_the_module(home, python, env)


def shown(block: Block, actual: Callable[[], str]) -> None:
    """Wait until every line ``block`` shows is in ``actual()`` (the worker's log grows as it works)."""
    try:
        wait_for(lambda: missing_lines(block, actual()) == [], STEP_SECONDS, f"the lines of {block.where}")
    except AssertionError:
        raise AssertionError(f"{block.where}: not logged\n{missing_lines(block, actual())}\n{actual()}") from None


def assert_the_service_finds_the_module(home: Path, python: Path, env: dict[str, str]) -> None:
    """The unit install-service wrote (Linux) runs the clone's worker in ~/actp-tasks, where it imports the module."""
    if sys.platform != "linux":
        return
    unit = (home / ".config" / "systemd" / "user" / "actp-worker.service").read_text()
    tasks_dir = home / "actp-tasks"
    assert f"WorkingDirectory={tasks_dir}\n" in unit
    assert f'"PYTHONPATH={tasks_dir}"' in unit
    assert f'ExecStart="{python}" "{python.parents[2] / "worker.py"}" "--tasks" "hello_tasks"' in unit
    service_env = env | {"PYTHONPATH": str(tasks_dir)}
    found = run([str(python), "-c", "import hello_tasks; print(hello_tasks.__file__)"], tasks_dir, service_env)
    assert Path(found.strip()) == tasks_dir / "hello_tasks.py"
