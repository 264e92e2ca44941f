"""The command line a newcomer can trust: read commands open the database read-only and create
nothing, every failure is one line (a JSON object under ``--json``) with exit status 2 naming the
database or the option at fault, and the texts name schedules, not internal ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleEngine, ScheduleStore, TaskRegistry
from agent.scheduler import cli as cli_module
from agent.scheduler import schema as schema_module
from agent.scheduler.cli import main
from agent.scheduler.errors import DatabaseNotFound, SchemaMissing, StoreError
from agent.scheduler.views import clip
from tests.conftest import postgres_url, run_async

ROOT = Path(__file__).resolve().parents[2]
MakeSchedule = Callable[..., ScheduleDefinition]
LONG_REASON = (
    "the overlap policy forbids a second run while the previous run of this schedule is still running, "
    "so this occurrence was skipped and recorded"
)
#: Every command that only reads, as the operator types it (after ``--db DB``).
READ_COMMANDS = [
    ["list", "--all"],
    ["list", "--json"],
    ["runs"],
    ["runs", "--schedule", "sweep", "--json"],
    ["status"],
    ["status", "--json"],
    ["alerts"],
    ["timeline", "--all"],
    ["timeline", "sweep", "--json"],
    ["simulate", "sweep"],
    ["dlq", "list"],
    ["dlq", "list", "--schedule", "sweep"],
    ["reconcile", "--dry-run"],
]
#: The same, for a database that must not be opened at all: each refuses it in one line.
OPENING_COMMANDS = [*READ_COMMANDS, ["dlq", "show", "run_1"]]


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and modification time."""
    return {
        p.relative_to(directory).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
    }


def cli(db: Path | str, clock: FakeClock, *args: str) -> tuple[int, str]:
    """``python -m agent.scheduler --db DB ARGS`` in this process: the exit status and stdout."""
    out = StringIO()
    try:
        code = main(["--db", str(db), *args], out=out, clock=clock)
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        code = exc.code
    return code, out.getvalue()


def one_line(capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """The single error line on stderr (nothing on stdout), ``error: ...`` or under ``--json`` a JSON
    object; its message names each of ``names``."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    if captured.err.startswith("{"):
        message = json.loads(captured.err)["error"]
    else:
        assert captured.err.startswith("error: "), captured.err
        message = captured.err.removeprefix("error: ")
    for name in names:
        assert name in message, (name, message)
    return message


def seed(db: Path, clock: FakeClock, make_schedule: MakeSchedule) -> None:
    """A database with two schedules and a skipped run, closed (no ``-wal`` left beside it)."""
    with ScheduleStore(db, clock=clock) as store:
        store.add(make_schedule("sweep"))
        store.add(make_schedule("report", trigger_type="calendar", expression="0 6 * * *"))
        run = store.create_run(store.get("sweep"), clock.now() - timedelta(minutes=5))
        assert run is not None
        store.transition(run, "skip", reason=LONG_REASON)
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m agent.scheduler ARGS`` as a process."""
    return subprocess.run(
        [sys.executable, "-m", "agent.scheduler", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make files and directories read-only, for root too (``chattr +i``) where that is who runs the tests."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make a file read-only for root here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def run_worker(
    *args: str, cwd: Path = ROOT, modules: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``worker.py ARGS`` as a process that is expected to stop at once; ``modules`` go on its path."""
    environ = {**os.environ, **(env or {})}
    if modules is not None:
        environ["PYTHONPATH"] = f"{modules}{os.pathsep}{ROOT}"
    return subprocess.run(
        [sys.executable, str(ROOT / "worker.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------- read commands create nothing


@pytest.mark.parametrize("args", OPENING_COMMANDS, ids=" ".join)
def test_a_read_command_on_a_mistyped_database_refuses_it_and_creates_nothing(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    typo = tmp_path / "typo" / "scheduler.db"
    assert cli(typo, clock, *args) == (2, "")
    one_line(capsys, f"no database at {typo}", "check --db")
    assert listing(tmp_path) == {}


def test_a_missing_database_from_the_environment_names_the_variable(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    typo = tmp_path / "nowhere" / "scheduler.db"
    monkeypatch.setenv("ACTP_SCHEDULER_DB", str(typo))
    assert main(["list"], out=StringIO(), clock=clock) == 2
    one_line(capsys, f"no database at {typo}", "ACTP_SCHEDULER_DB")
    assert listing(tmp_path) == {}


def test_every_read_command_leaves_the_database_and_its_directory_as_they_were(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    before = listing(tmp_path)
    for args in READ_COMMANDS:
        code, out = cli(db, clock, *args)
        assert code == 0, (args, capsys.readouterr().err)
        assert out
    assert capsys.readouterr().err == ""
    assert listing(tmp_path) == before  # no -wal, no -shm, not a byte or an mtime changed


def test_a_read_beside_a_worker_that_has_the_database_open_sees_its_commits_and_adds_no_file(
    store: ScheduleStore, db_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("sweep"))
    names = sorted(p.name for p in db_path.parent.iterdir())
    assert f"{db_path.name}-wal" in names  # the writer's WAL: the reader goes through it
    db_before = db_path.stat().st_size, db_path.stat().st_mtime_ns
    code, out = cli(db_path, clock, "list", "--json")
    assert code == 0 and [item["name"] for item in json.loads(out)] == ["sweep"]
    assert sorted(p.name for p in db_path.parent.iterdir()) == names
    assert (db_path.stat().st_size, db_path.stat().st_mtime_ns) == db_before
    store.add(make_schedule("later"))  # the writer goes on writing after the read
    assert {s.name for s in store.list()} == {"sweep", "later"}


def test_a_read_only_database_file_is_read_and_nothing_is_created_beside_it(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    before = listing(tmp_path)
    with read_only(db):
        done = run_cli("--db", str(db), "list", "--all", "--json")
        assert done.returncode == 0, done.stderr
        assert sorted(item["name"] for item in json.loads(done.stdout)) == ["report", "sweep"]
        assert listing(tmp_path) == before


def test_a_read_only_database_in_a_read_only_directory_is_read(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db = home / "scheduler.db"
    seed(db, clock, make_schedule)
    before = listing(home)
    with read_only(db, home):
        for args in (["list", "--all", "--json"], ["status", "--json"], ["runs", "--json"]):
            done = run_cli("--db", str(db), *args)
            assert done.returncode == 0, (args, done.stderr)
            assert json.loads(done.stdout) is not None
        assert listing(home) == before


def test_an_empty_file_is_not_a_schedule_database_and_stays_empty(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "empty.db"
    db.touch()
    before = listing(tmp_path)
    assert cli(db, clock, "list") == (2, "")
    one_line(capsys, str(db), "no scheduler schema")
    assert listing(tmp_path) == before


def test_a_read_does_not_upgrade_an_older_schema(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    older = schema_module.SCHEMA_VERSION - 1
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(older),))
    before = listing(tmp_path)
    assert cli(db, clock, "status") == (2, "")
    one_line(capsys, str(db), f"schema version {older}, older than this code's {schema_module.SCHEMA_VERSION}")
    assert listing(tmp_path) == before
    with pytest.raises(SchemaMissing):
        ScheduleStore(db, read_only=True)
    assert listing(tmp_path) == before


def test_a_write_command_still_creates_the_database(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "new" / "scheduler.db"
    code, out = cli(db, clock, "dlq", "purge", "--older-than-days", "30")
    assert (code, out) == (0, "0 dead letter(s) purged\n")
    with ScheduleStore(db, read_only=True) as store:
        assert store.list() == []


def test_diagram_reads_no_database(tmp_path: Path, clock: FakeClock) -> None:
    code, out = cli(tmp_path / "none" / "scheduler.db", clock, "diagram", "--machine", "breaker")
    assert code == 0 and "stateDiagram" in out
    assert listing(tmp_path) == {}


def test_a_read_only_store_refuses_a_write_and_names_the_database(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    before = listing(tmp_path)
    with ScheduleStore(db, clock=clock, read_only=True) as store:
        assert store.read_only and store.get("sweep").enabled
        with pytest.raises(StoreError, match=str(db)):
            store.disable("sweep", reason="not allowed")
    assert listing(tmp_path) == before
    with pytest.raises(DatabaseNotFound, match="no database at"):
        ScheduleStore(tmp_path / "absent.db", read_only=True)
    assert listing(tmp_path) == before


def test_postgresql_read_only_reads_refuses_writes_and_a_missing_schema() -> None:
    url = postgres_url()
    engine = create_engine(url)
    try:
        schema_module.metadata.drop_all(engine)
        with pytest.raises(SchemaMissing, match="no scheduler schema"):
            ScheduleStore(url, read_only=True)
        with engine.connect() as conn:
            assert not set(inspect(conn).get_table_names()) & set(schema_module.metadata.tables)
        with ScheduleStore(url) as writer:
            writer.add(ScheduleDefinition(name="sweep", trigger_type="interval", expression="5m", target="sweep"))
        with ScheduleStore(url, read_only=True) as reader:
            assert [s.name for s in reader.list()] == ["sweep"]
            with pytest.raises(StoreError, match="read-only transaction"):
                reader.disable("sweep", reason="not allowed")
        with ScheduleStore(url) as writer:
            assert writer.get("sweep").enabled
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_every_read_command_works_on_postgresql_in_its_read_only_session(pg_url: str, clock: FakeClock) -> None:
    url = pg_url
    with ScheduleStore(url, clock=clock) as writer:
        writer.add(ScheduleDefinition(name="sweep", trigger_type="interval", expression="5m", target="sweep"))
    for args in [*READ_COMMANDS, ["events"]]:
        code, out = cli(url, clock, *args)
        assert code == 0 and out, (args, out)
    code, out = cli(url, clock, "reconcile", "--dry-run")
    assert out.startswith("reconciliation dry run, nothing changed") and "1 schedules" in out


def test_a_postgresql_failure_is_one_line_naming_the_url_without_its_password(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_url()
    base, _, _ = url.rpartition("/")
    scheme, _, rest = base.partition("://")
    host = rest.rpartition("@")[2]
    wrong = f"{scheme}://actp:s3cret-pw@{host}/no_such_database_here"
    assert cli(wrong, clock, "list") == (2, "")
    err = one_line(capsys, "no_such_database_here", "actp:***@")
    assert "s3cret-pw" not in err


# ---------------------------------------------------------------------- one line, exit 2, also as JSON


def test_as_a_process_a_missing_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "scheduler.db"
    done = run_cli("--db", str(typo), "list")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: no database at {typo}: reading does not create one (check --db)\n"
    done = run_cli("--db", str(typo), "status", "--json")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1
    assert json.loads(done.stderr) == {"error": f"no database at {typo}: reading does not create one (check --db)"}
    assert listing(tmp_path) == {}


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["list", "--json"], ["no database at"]),
        (["runs", "--limit", "0", "--json"], ["runs: argument --limit", "from 1 to"]),
        (["--json", "timeline"], ["unrecognized arguments", "--json"]),
    ],
    ids=["store", "option", "misplaced"],
)
def test_under_json_an_error_is_one_json_object_on_stderr(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], args: list[str], names: list[str]
) -> None:
    assert cli(tmp_path / "typo" / "x.db", clock, *args)[0] == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    message = json.loads(captured.err)["error"]
    for name in names:
        assert name in message


def test_a_database_error_names_the_file(tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n" * 200)
    before = listing(tmp_path)
    for args in (["list"], ["dlq", "purge", "--older-than-days", "1"]):
        assert cli(junk, clock, *args) == (2, "")
        one_line(capsys, str(junk), "not a database")
    assert listing(tmp_path) == before


def test_a_missing_tasks_module_is_one_line_naming_it(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    proposal = tmp_path / "p.json"
    proposal.write_text("{}")
    assert cli(db, clock, "propose", str(proposal), "--tasks", "no_such_tasks_module")[0] == 2
    one_line(capsys, "--tasks no_such_tasks_module", "cannot import")


# ---------------------------------------------------------------------- the worker's --tasks


def test_the_worker_with_a_missing_tasks_module_says_so_in_one_line_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "w" / "scheduler.db"
    done = run_worker("--db", str(db), "--tasks", "no_such_tasks_module", "--no-legacy")
    assert done.returncode == 2
    assert done.stderr.startswith("error: --tasks no_such_tasks_module: cannot import the module: ")
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert listing(tmp_path) == {}


def test_the_worker_with_a_tasks_module_that_fails_to_import_names_it(tmp_path: Path) -> None:
    (tmp_path / "broken_tasks.py").write_text("raise RuntimeError('no credentials here')\n")
    db = tmp_path / "w" / "scheduler.db"
    done = run_worker("--db", str(db), "--tasks", "broken_tasks", "--no-legacy", modules=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "error: --tasks broken_tasks: importing the module failed: RuntimeError: no credentials here\n"
    )
    assert not db.parent.exists()


def test_the_worker_takes_its_tasks_modules_from_the_settings_when_no_tasks_option_is_given(tmp_path: Path) -> None:
    db = tmp_path / "w" / "scheduler.db"
    done = run_worker("--db", str(db), "--no-legacy", env={"ACTP_SCHEDULER_TASKS": "no_such_tasks_module"})
    assert done.returncode == 2
    assert done.stderr.startswith("error: --tasks no_such_tasks_module: cannot import the module: ")
    assert listing(tmp_path) == {}


def test_the_worker_and_the_command_line_read_the_dotenv_of_their_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a service runs them (launchd's and systemd's WorkingDirectory): the worker and the command
    line see the same settings, so ``status`` looks at the worker's database."""
    workdir = tmp_path / "service"
    workdir.mkdir()
    db = tmp_path / "from-dotenv.db"
    (workdir / ".env").write_text(f"ACTP_SCHEDULER_DB={db}\nACTP_SCHEDULER_TASKS=tasks_named_in_dotenv\n")
    monkeypatch.delenv("ACTP_SCHEDULER_DB", raising=False)
    monkeypatch.delenv("ACTP_SCHEDULER_TASKS", raising=False)
    done = run_worker("--no-legacy", cwd=workdir)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --tasks tasks_named_in_dotenv: cannot import the module: ")
    monkeypatch.setattr(cli_module, "ENV_FILE", ".env")  # the suite points it away (conftest)
    monkeypatch.chdir(workdir)
    out = StringIO()
    assert main(["config", "--json"], out=out) == 0
    shown = json.loads(out.getvalue())
    assert shown["database"] == {"value": str(db), "source": "ACTP_SCHEDULER_DB"}
    [tasks] = [v for v in shown["variables"] if v["name"] == "ACTP_SCHEDULER_TASKS"]
    assert (tasks["value"], tasks["source"]) == ("tasks_named_in_dotenv", ".env")
    with ScheduleStore(f"sqlite:///{db}") as store:
        store.add(ScheduleDefinition(name="seen", trigger_type="interval", expression="1h", target="t"))
    out = StringIO()
    assert main(["list", "--json"], out=out) == 0
    assert [s["name"] for s in json.loads(out.getvalue())] == ["seen"]
    monkeypatch.setenv("ACTP_SCHEDULER_DB", str(tmp_path / "elsewhere.db"))  # the environment wins
    out = StringIO()
    assert main(["config", "--json"], out=out) == 0
    assert json.loads(out.getvalue())["database"]["value"] == str(tmp_path / "elsewhere.db")


def test_a_bad_dotenv_line_is_named_never_shown_and_stops_only_what_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another project's .env, with a key written over several lines: the command line still works,
    ``config`` names the file and lines without their text, and the worker refuses to start."""
    (tmp_path / ".env").write_text(
        'ACTP_LOG_FORMAT=json\nPRIVATE_KEY="-----BEGIN KEY-----\nMIIsecretpart\n-----END KEY-----"\n'
    )
    monkeypatch.setattr(cli_module, "ENV_FILE", ".env")
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "s.db"
    with ScheduleStore(f"sqlite:///{db}") as store:
        store.add(ScheduleDefinition(name="ok", trigger_type="interval", expression="1h", target="t"))
    out = StringIO()
    assert main(["--db", str(db), "list", "--json"], out=out) == 0
    assert [s["name"] for s in json.loads(out.getvalue())] == ["ok"]
    out = StringIO()
    assert main(["config", "--json"], out=out) == 2
    problems = json.loads(out.getvalue())["problems"]
    assert [p["variable"] for p in problems] == [".env line 3", ".env line 4"]  # line 2 is NAME=value
    assert {p["value"] for p in problems} == {"(not shown)"}
    err = capsys.readouterr().err
    assert "MIIsecretpart" not in out.getvalue() + err and "BEGIN" not in out.getvalue() + err
    done = run_worker("--no-legacy", "--db", str(db), cwd=tmp_path)
    assert done.returncode == 2 and "line 3='(not shown)'" in done.stderr, done.stderr
    assert "MIIsecretpart" not in done.stderr and "BEGIN" not in done.stderr


@pytest.mark.parametrize("bad", ["a symbolic link loop", "a line that is not NAME=value"])
def test_the_worker_stops_with_status_2_on_a_bad_dotenv_beside_it_or_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    import worker

    beside, workdir = tmp_path / "checkout", tmp_path / "service"
    beside.mkdir()
    workdir.mkdir()
    monkeypatch.setattr(worker, "HERE", beside)
    monkeypatch.chdir(workdir)
    if bad == "a symbolic link loop":
        (workdir / ".env").symlink_to(workdir / ".env")
    else:
        (beside / ".env").write_text("ACTP_LOG_FORMAT=json\n-----END KEY-----\n")
    assert worker.main(["--no-legacy", "--db", str(tmp_path / "never.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration") and err.count("\n") == 1 and "END KEY" not in err
    assert not (tmp_path / "never.db").exists()


def test_a_tasks_module_whose_register_fails_stops_the_worker_with_one_line_and_status_2(tmp_path: Path) -> None:
    (tmp_path / "failing_tasks.py").write_text("def register(tasks, store):\n    raise KeyError('SOME_TOKEN')\n")
    db = tmp_path / "w" / "scheduler.db"
    done = run_worker("--db", str(db), "--tasks", "failing_tasks", "--no-legacy", modules=tmp_path)
    assert done.returncode == 2, done.stderr  # a restart would not help: the service stays stopped
    errors = [line for line in done.stderr.splitlines() if "failing_tasks" in line]
    assert len(errors) == 1 and "its register(tasks, store) failed: KeyError: 'SOME_TOKEN'" in errors[0]
    assert "Traceback" not in done.stderr


DUPLICATE_REGISTER = """
from agent.scheduler import ScheduleDefinition

def register(tasks, store):
    tasks.add("noop", lambda ctx: None)
    for _ in range(2):
        store.add(ScheduleDefinition(name="twice", trigger_type="interval", expression="1h", target="noop"))
"""
INVALID_REGISTER = """
from agent.scheduler import ScheduleDefinition

def register(tasks, store):
    store.add(ScheduleDefinition(name="bad", trigger_type="calendar", expression="every now and then", target="noop"))
"""


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (DUPLICATE_REGISTER, "failed: DuplicateSchedule: "),
        (INVALID_REGISTER, "failed: InvalidSchedule: invalid expression="),
    ],
    ids=["duplicate schedule", "invalid schedule"],
)
def test_a_tasks_module_whose_register_breaks_a_scheduler_rule_is_named_in_one_line_with_status_2(
    tmp_path: Path, source: str, words: str
) -> None:
    """A scheduler error from the module's own register (not from the database) is the operator's to fix."""
    (tmp_path / "rule_tasks.py").write_text(source)
    db = tmp_path / "w" / "scheduler.db"
    done = run_worker("--db", str(db), "--tasks", "rule_tasks", "--no-legacy", modules=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "rule_tasks" in line]
    assert len(errors) == 1 and "--tasks rule_tasks: its register(tasks, store) failed" in errors[0], done.stderr
    assert words in errors[0] and "Traceback" not in done.stderr


@pytest.mark.parametrize("zone", ["Mars/Base", "../../etc/passwd", "Europe/Nowhere"])
@pytest.mark.parametrize("command", [["simulate", "15m"], ["timeline", "--all"]])
def test_an_unknown_timezone_is_one_line_naming_the_option(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], zone: str, command: list[str]
) -> None:
    db = tmp_path / "scheduler.db"
    assert cli(db, clock, *command, "--timezone", zone)[0] == 2
    one_line(capsys, "--timezone", zone, "IANA timezone name")
    assert listing(tmp_path) == {}


# ---------------------------------------------------------------------- names, not ids; words, not pieces


def test_simulate_of_an_unknown_name_says_no_schedule_has_it(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    assert cli(db, clock, "simulate", "no_such_name") == (2, "")
    err = one_line(capsys, "no schedule named 'no_such_name'")
    assert "invalid expression" not in err
    code, out = cli(db, clock, "simulate", "15m", "--count", "2")
    assert code == 0 and len(out.splitlines()) == 2
    assert cli(db, clock, "simulate", "15x") == (2, "")
    one_line(capsys, "invalid expression='15x'")


def test_dlq_list_of_an_unknown_schedule_is_an_error_naming_it(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    assert cli(db, clock, "dlq", "list", "--schedule", "no_such_name") == (2, "")
    one_line(capsys, "--schedule", "no schedule named 'no_such_name'")
    assert cli(db, clock, "dlq", "list", "--schedule", "sweep") == (0, "no dead letters\n")


def test_reset_of_a_closed_breaker_names_the_schedule_not_its_id(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    with ScheduleStore(db, clock=clock) as store:
        schedule_id = store.get("sweep").id
    assert cli(db, clock, "reset", "sweep") == (2, "")
    err = one_line(capsys, "reset sweep: its breaker is closed")
    assert schedule_id not in err


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [
        ("short", 10, "short"),
        ("alpha beta gamma", 16, "alpha beta gamma"),
        ("alpha beta gamma", 15, "alpha beta..."),
        ("alpha beta gamma", 12, "alpha..."),
        ("alpha\nbeta\tgamma", 40, "alpha beta gamma"),
        ("x" * 30, 10, "x" * 30),
        ("x" * 30 + " tail", 10, "x" * 30 + "..."),
        ("", 5, ""),
    ],
)
def test_clip_cuts_at_a_word_boundary_with_an_ellipsis(text: str, width: int, shown: str) -> None:
    assert clip(text, width) == shown


def test_a_table_cuts_a_long_reason_between_words(
    tmp_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    db = tmp_path / "scheduler.db"
    seed(db, clock, make_schedule)
    code, out = cli(db, clock, "runs")
    assert code == 0
    row = out.splitlines()[1]
    shown = row[row.index("the overlap policy") :]
    assert shown.endswith("...") and len(shown) <= 70
    kept = shown.removesuffix("...")
    assert LONG_REASON.startswith(kept) and LONG_REASON[len(kept)] == " "


def test_the_registry_takes_its_views_from_the_views_module_not_the_command_line() -> None:
    code = "import sys, agent.scheduler.adapters.service_registry; print('agent.scheduler.cli' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr


# ---------------------------------------------------------------------- reconcile --dry-run beside a worker


@run_async
async def test_a_dry_run_beside_a_healthy_worker_says_dry_run_and_running_not_crash(
    store: ScheduleStore, db_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("sweep"))
    engine = ScheduleEngine(store, TaskRegistry(), clock=clock, worker_id="w1")
    await engine.start()
    try:
        # The command runs its own event loop: in a thread, beside this test's.
        code, out = await asyncio.to_thread(cli, db_path, clock, "reconcile", "--dry-run", "--worker-id", "w1")
        assert code == 0
        head = out.splitlines()[0]
        assert head.startswith("reconciliation dry run, nothing changed (previous: running)")
        assert "crash" not in out
        code, raw = await asyncio.to_thread(
            cli, db_path, clock, "reconcile", "--dry-run", "--worker-id", "w1", "--json"
        )
        data: dict[str, Any] = json.loads(raw)
        assert (data["dry_run"], data["previous_shutdown"]) == (True, "running")
        clock.advance(timedelta(hours=1))  # no heartbeat for an hour: that worker is gone
        code, out = await asyncio.to_thread(cli, db_path, clock, "reconcile", "--dry-run", "--worker-id", "w1")
        assert out.startswith("reconciliation dry run, nothing changed (previous: crash)")
    finally:
        await engine.stop()
