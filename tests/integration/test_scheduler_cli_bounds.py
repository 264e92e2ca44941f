"""The command line's bounds: every option has a range, bad input is one line and exit status 2, reads are capped.

Each refusal is checked the same way: exit status 2, exactly one line on stderr that starts with
``error:`` and names the option, no traceback, and the database unchanged (or, when there was
none, not created).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

import worker
from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore
from agent.scheduler.cli import (
    MAX_PURGE_DAYS,
    MAX_RUNS_LIMIT,
    MAX_SIMULATE_COUNT,
    MAX_TIMELINE_HOURS,
    PROPOSAL_BYTES,
    PROPOSAL_DEPTH,
    main,
)
from tests.integration.test_schedule_proposals import MODULE, proposal

ROOT = Path(__file__).resolve().parents[2]
MakeSchedule = Callable[..., ScheduleDefinition]
#: A number too big for any database integer, timedelta or loop.
HUGE = "9" * 30


def cli(db: Path, clock: FakeClock, *args: str) -> int:
    """``python -m agent.scheduler --db DB ARGS`` in this process; argparse's exit becomes the status."""
    try:
        return main(["--db", str(db), *args], out=StringIO(), clock=clock)
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        return exc.code


def one_error_line(capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """The single ``error:`` line on stderr, which must mention each of ``names``."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)
    return err


def snapshot(store: ScheduleStore) -> tuple[Any, ...]:
    return store.list(), store.runs(), store.dead_letters(), store.proposals(), store.alerts()


@pytest.fixture
def seeded(store: ScheduleStore, make_schedule: MakeSchedule, clock: FakeClock) -> ScheduleStore:
    """Two schedules, a finished run and a dead letter: something for every command to show or change."""
    store.add(make_schedule("report", trigger_type="calendar", expression="0 6 * * *", timezone="Europe/Berlin"))
    poll = store.add(make_schedule("poll", expression="15m", max_retries=0))
    run = store.create_run(poll, clock.now() - timedelta(minutes=15))
    assert run is not None
    failed = store.transition(store.transition(run, "start"), "fail", error="OSError: gone", error_type="OSError")
    store.transition(failed, "dead_letter")
    return store


# ---------------------------------------------------------------------- numeric options of the command line

#: (the command in front of the option, the option, lowest, highest, the unit the message names)
BOUNDS = [
    (["runs"], "--limit", 1, MAX_RUNS_LIMIT, ""),
    (["simulate", "* * * * *"], "--count", 1, MAX_SIMULATE_COUNT, ""),
    (["dlq", "purge"], "--older-than-days", 1, MAX_PURGE_DAYS, "days"),
    (["timeline", "--all"], "--hours", 1, MAX_TIMELINE_HOURS, "hours"),
]


@pytest.mark.parametrize(("command", "option", "low", "high", "unit"), BOUNDS, ids=[b[1] for b in BOUNDS])
def test_a_numeric_option_takes_its_bounds_and_refuses_one_beyond(
    seeded: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    option: str,
    low: int,
    high: int,
    unit: str,
) -> None:
    allowed = f"a whole number{' of ' + unit if unit else ''} from {low} to {high}"
    before = snapshot(seeded)
    for value in (low, high):
        assert cli(db_path, clock, *command, option, str(value)) == 0
    capsys.readouterr()
    for value in (low - 1, high + 1):
        assert cli(db_path, clock, *command, option, str(value)) == 2
        one_error_line(capsys, option, f"'{value}'", allowed)
    assert snapshot(seeded) == before  # reads, and a purge of letters younger than a day


@pytest.mark.parametrize(("command", "option", "low", "high", "unit"), BOUNDS, ids=[b[1] for b in BOUNDS])
@pytest.mark.parametrize(
    "value",
    [HUGE, f"-{HUGE}", "9" * 5000, "ten", "", "1.5"],
    ids=["huge", "huge-negative", "5000-digits", "word", "empty", "decimal"],
)
def test_a_numeric_option_refuses_a_huge_or_malformed_value_in_one_line_changing_nothing(
    seeded: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    option: str,
    low: int,
    high: int,
    unit: str,
    value: str,
) -> None:
    before = snapshot(seeded)
    assert cli(db_path, clock, *command, option, value) == 2
    err = one_error_line(capsys, option, f"a whole number{' of ' + unit if unit else ''} from {low} to {high}")
    assert len(err) < 300  # a 5000-digit value is not echoed whole
    assert snapshot(seeded) == before


@pytest.mark.parametrize(("command", "option", "low", "high", "unit"), BOUNDS, ids=[b[1] for b in BOUNDS])
def test_a_refused_option_creates_no_database(
    tmp_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    option: str,
    low: int,
    high: int,
    unit: str,
) -> None:
    fresh = tmp_path / "fresh" / "scheduler.db"
    assert cli(fresh, clock, *command, option, HUGE) == 2
    one_error_line(capsys, option)
    assert not fresh.parent.exists()


# ---------------------------------------------------------------------- text options and arguments


LONG = "x" * 10_000


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["disable", LONG], ["NAME", "at most 128 characters"]),
        (["enable", LONG], ["NAME", "at most 128 characters"]),
        (["run-now", LONG], ["NAME", "at most 128 characters"]),
        (["reset", LONG], ["NAME", "at most 128 characters"]),
        (["runs", "--schedule", LONG], ["--schedule", "at most 128 characters"]),
        (["timeline", LONG], ["NAME", "at most 128 characters"]),
        (["timeline", ""], ["NAME", "must not be empty"]),
        (["disable", ""], ["NAME", "must not be empty"]),
        (["dlq", "show", LONG], ["ID", "at most 128 characters"]),
        (["dlq", "list", "--schedule", LONG], ["--schedule", "at most 128 characters"]),
        (["disable", "poll", "--reason", LONG], ["--reason", "at most 500 characters"]),
        (["approve", "x", "--reason", LONG, "--tasks", MODULE], ["--reason", "at most 500 characters"]),
        (["reject", "x", "--reason", ""], ["--reason", "must not be empty"]),
        (["reconcile", "--dry-run", "--worker-id", LONG], ["--worker-id", "at most 128 characters"]),
        (["simulate", "* " * 50_000], ["EXPR|NAME", "at most 256 characters"]),
        (["simulate", "0 6 * * *", "--timezone", LONG], ["--timezone", "at most 64 characters"]),
        (["timeline", "--all", "--timezone", LONG], ["--timezone", "at most 64 characters"]),
        (["propose", "p.json", "--tasks", ""], ["--tasks", "dotted name"]),
        (["propose", "p.json", "--tasks", ".relative"], ["--tasks", "dotted name"]),
        (["approve", "x", "--tasks", "a b"], ["--tasks", "dotted name"]),
        (["install-service", "--print", "--db", ""], ["--db", "a SQLite file path or a database URL"]),
        (["reconcile", "--dry-run", "--worker-id", "\udcff"], ["--worker-id", "found '\\udcff' at position 0"]),
        (["reconcile", "--dry-run", "--worker-id", "w\x01\nx"], ["--worker-id", "found '\\x01' at position 1"]),
        (["disable", "poll\nx"], ["NAME", "found '\\n' at position 4"]),
        (["simulate", "* * * * *\x1b"], ["EXPR|NAME", "found '\\x1b'"]),
        (["install-service", "--print", "--db", "sqlite:////tmp/a%00b.db"], ["--db", "encoded NUL"]),
        (["install-service", "--print", "--db", "~no-such-user-here/x.db"], ["--db", "no such user's home"]),
        (["install-service", "--print", "--db", "sqlite:///file:m?mode=memory&uri=true"], ["--db", "in-memory"]),
        (["install-service", "--print", "--db", "sqlite:///file:x.db?uri=true"], ["--db", "file: URIs"]),
    ],
    ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else None,
)
def test_text_too_long_empty_or_malformed_is_one_line_and_changes_nothing(
    seeded: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    names: list[str],
) -> None:
    before = snapshot(seeded)
    assert cli(db_path, clock, *args) == 2
    err = one_error_line(capsys, *names)
    assert len(err) < 300
    assert snapshot(seeded) == before


def test_text_at_its_longest_is_taken_and_one_more_character_is_refused(
    seeded: ScheduleStore, db_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(db_path, clock, "disable", "poll", "--reason", "r" * 500) == 0
    assert seeded.get("poll").disabled_reason == "r" * 500
    # Read, and answered as any unknown name or bad expression is: the length is not the problem.
    assert cli(db_path, clock, "enable", "n" * 128) == 2
    one_error_line(capsys, "no schedule named 'nnn")
    assert cli(db_path, clock, "simulate", "1" + "0" * 255) == 2
    one_error_line(capsys, "invalid expression='1000")
    assert cli(db_path, clock, "simulate", "0 6 * * *", "--timezone", "America/Argentina/ComodRivadavia") == 0
    capsys.readouterr()
    before = snapshot(seeded)
    for args, names in [
        (["disable", "poll", "--reason", "r" * 501], ["--reason", "at most 500 characters"]),
        (["enable", "n" * 129], ["NAME", "at most 128 characters"]),
        (["simulate", "1" + "0" * 256], ["EXPR|NAME", "at most 256 characters"]),
        (["simulate", "0 6 * * *", "--timezone", "z" * 65], ["--timezone", "at most 64 characters"]),
    ]:
        assert cli(db_path, clock, *args) == 2
        one_error_line(capsys, *names)
    assert snapshot(seeded) == before


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("", "a SQLite file path or a database URL"),
        ("sqlite://", "in-memory"),
        ("sqlite:///", "in-memory"),
        (":memory:", "in-memory"),
        ("x" * 5000, "at most 4096 characters"),
    ],
)
def test_a_bad_db_is_one_line(
    clock: FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: str, message: str
) -> None:
    monkeypatch.setenv("ACTP_SCHEDULER_DB", "/nonexistent/never/used.db")
    with pytest.raises(SystemExit) as exc:
        main(["--db", db, "list"], out=StringIO(), clock=clock)
    assert exc.value.code == 2
    one_error_line(capsys, "--db", message)


def test_a_directory_as_db_is_one_line(tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    for db in (str(tmp_path), f"sqlite:///{tmp_path}"):
        with pytest.raises(SystemExit) as exc:
            main(["--db", db, "status"], out=StringIO(), clock=clock)
        assert exc.value.code == 2
        one_error_line(capsys, "--db", "is a directory")


@pytest.mark.parametrize("value", ["sqlite://", "directory"])
def test_a_bad_database_in_the_environment_is_one_line(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ACTP_SCHEDULER_DB", str(tmp_path) if value == "directory" else value)
    assert main(["status"], out=StringIO(), clock=clock) == 2
    one_error_line(capsys, "ACTP_SCHEDULER_DB", "is a directory" if value == "directory" else "in-memory")


def test_a_bad_tasks_module_in_the_environment_is_one_line(
    seeded: ScheduleStore,
    db_path: Path,
    tmp_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(proposal()))
    for value in (".relative", f"{MODULE},,a b"):
        monkeypatch.setenv("ACTP_SCHEDULER_TASKS", value)
        assert cli(db_path, clock, "propose", str(path)) == 2
        one_error_line(capsys, f"ACTP_SCHEDULER_TASKS={value!r}", "Python module names, comma-separated")
    assert seeded.proposals() == []


# ---------------------------------------------------------------------- argparse's own errors


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["frobnicate"], ["COMMAND", "invalid choice", "'frobnicate'", "'list'"]),
        ([], ["COMMAND", "required"]),
        (["runs", "--nope"], ["unrecognized arguments", "--nope"]),
        (["runs", "--status", "exploded"], ["runs:", "--status", "invalid choice", "'succeeded'"]),
        (["runs", "--limit"], ["runs:", "--limit", "expected one argument"]),
        (["approve"], ["approve:", "ID", "required"]),
        (["reject", "x"], ["reject:", "--reason", "required"]),
        (["dlq", "empty"], ["dlq:", "invalid choice", "'purge'"]),
        (["runs", "--status", LONG], ["--status", "invalid choice", "'pending'"]),
        (["runs", LONG], ["unrecognized arguments"]),
    ],
    ids=lambda v: " ".join(v)[:30] if isinstance(v, list) else None,
)
def test_argparse_errors_are_one_line_naming_the_argument(
    db_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], args: list[str], names: list[str]
) -> None:
    assert cli(db_path, clock, *args) == 2
    err = one_error_line(capsys, *names)
    assert "usage:" not in err and len(err) < 400
    assert not db_path.exists()


def test_help_still_prints_the_usage(db_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(db_path, clock, "runs", "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m agent.scheduler runs") and f"1 to {MAX_RUNS_LIMIT}" in out


# ---------------------------------------------------------------------- propose reads at most PROPOSAL_BYTES


def padded(size: int, **overrides: Any) -> bytes:
    """A valid proposal, padded with JSON whitespace to exactly ``size`` bytes."""
    text = json.dumps(proposal(**{"proposed_by": None, **overrides})).encode()  # the user running it proposes
    assert len(text) <= size
    return text + b" " * (size - len(text))


def test_a_proposal_of_exactly_the_cap_is_read_and_one_byte_more_is_refused_unstored(
    store: ScheduleStore, db_path: Path, tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    over = tmp_path / "over.json"
    over.write_bytes(padded(PROPOSAL_BYTES + 1, name="over"))
    assert cli(db_path, clock, "propose", str(over), "--tasks", MODULE) == 2
    one_error_line(capsys, f"propose {over}:", "bigger than 256 KiB")
    assert store.proposals() == [] and store.list() == []
    at_cap = tmp_path / "p.json"
    at_cap.write_bytes(padded(PROPOSAL_BYTES))
    assert cli(db_path, clock, "propose", str(at_cap), "--tasks", MODULE) == 0
    assert [p.status for p in store.proposals()] == ["active"]


class EndlessStdin:
    """A standard input that never ends; a read without a size fails the test instead of eating memory."""

    def __init__(self) -> None:
        self.buffer = self
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("an unbounded read of an endless stdin")
        self.read_bytes += size
        return b"[" * size


def test_propose_from_an_endless_stdin_reads_one_byte_past_the_cap(
    store: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stdin = EndlessStdin()
    monkeypatch.setattr(sys, "stdin", stdin)
    assert cli(db_path, clock, "propose", "-", "--tasks", MODULE) == 2
    one_error_line(capsys, "propose -:", "bigger than 256 KiB")
    assert stdin.read_bytes == PROPOSAL_BYTES + 1
    assert store.proposals() == []


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A named pipe whose writer sends at most 8 MiB (so a reader without a cap ends too) and then stops."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    path = tmp_path / "endless.json"
    os.mkfifo(path)

    def write() -> None:
        fd = os.open(path, os.O_WRONLY)  # waits for the reader
        try:
            for _ in range(128):
                os.write(fd, b" " * 65536)
        except BrokenPipeError:
            pass  # the reader had enough
        finally:
            os.close(fd)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    yield path
    if writer.is_alive():  # no reader came: let the writer's open return and its writes fail
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    writer.join(timeout=10)
    assert not writer.is_alive()


def test_propose_from_a_named_pipe_stops_at_the_cap(
    store: ScheduleStore, db_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], fifo: Path
) -> None:
    assert cli(db_path, clock, "propose", str(fifo), "--tasks", MODULE) == 2
    one_error_line(capsys, f"propose {fifo}:", "bigger than 256 KiB")
    assert store.proposals() == []


def _limit_memory() -> None:
    # A reader without a cap fails here with MemoryError instead of exhausting the machine.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("source", ["/dev/zero", "-"])
def test_propose_from_dev_zero_is_refused_at_the_cap(
    store: ScheduleStore, db_path: Path, source: str, tmp_path: Path
) -> None:
    with open("/dev/zero", "rb") as zero:
        done = subprocess.run(
            [sys.executable, "-m", "agent.scheduler", "--db", str(db_path), "propose", source, "--tasks", MODULE],
            stdin=zero,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            preexec_fn=_limit_memory if sys.platform == "linux" else None,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: propose {source}: bigger than 256 KiB, the most a proposal may be\n"
    assert store.proposals() == []


def deep(levels: int) -> Any:
    """A proposal whose objects and arrays nest ``levels`` deep in all."""
    value: Any = []
    for _ in range(levels - 3):  # the proposal object, params and its key "a" take the other levels
        value = [value]
    return proposal(params={"a": value}, proposed_by=None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{nope", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[" * 100_000, f"JSON nested deeper than {PROPOSAL_DEPTH} levels"),
    ],
    ids=["not-json", "empty", "not-utf8", "too-deep-to-parse"],
)
def test_propose_refuses_what_is_not_a_proposal_file_unstored(
    store: ScheduleStore,
    db_path: Path,
    tmp_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    message: str,
) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    assert cli(db_path, clock, "propose", str(path), "--tasks", MODULE) == 2
    one_error_line(capsys, f"propose {path}:", message)
    assert store.proposals() == []


def test_propose_takes_a_proposal_nested_to_the_limit_and_refuses_one_level_more(
    store: ScheduleStore, db_path: Path, tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(deep(PROPOSAL_DEPTH + 1)))
    assert cli(db_path, clock, "propose", str(path), "--tasks", MODULE) == 2
    one_error_line(capsys, f"propose {path}:", f"JSON nested deeper than {PROPOSAL_DEPTH} levels")
    assert store.proposals() == []
    path.write_text(json.dumps(deep(PROPOSAL_DEPTH)))
    assert cli(db_path, clock, "propose", str(path), "--tasks", MODULE) == 0
    assert [p.status for p in store.proposals()] == ["active"]


@pytest.mark.parametrize("what", ["missing", "directory", "newline in its name"])
def test_propose_of_a_missing_file_or_a_directory_is_one_line(
    store: ScheduleStore, db_path: Path, tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    path = {"missing": tmp_path / "nothing.json", "directory": tmp_path}.get(what, tmp_path / "a\nb.json")
    assert cli(db_path, clock, "propose", str(path), "--tasks", MODULE) == 2
    shown = str(path) if str(path).isprintable() else repr(str(path))
    one_error_line(capsys, f"propose {shown}: cannot read it")
    assert store.proposals() == []


# ---------------------------------------------------------------------- worker.py


#: (option, lowest, highest)
WORKER_BOUNDS = [
    ("--tick", worker.TICK_MIN_SECONDS, worker.TICK_MAX_SECONDS),
    ("--lease", worker.LEASE_MIN_SECONDS, worker.LEASE_MAX_SECONDS),
]


@pytest.mark.parametrize(("option", "low", "high"), WORKER_BOUNDS, ids=[b[0] for b in WORKER_BOUNDS])
def test_a_worker_option_takes_its_bounds_and_refuses_just_beyond(
    capsys: pytest.CaptureFixture[str], option: str, low: float, high: float
) -> None:
    for value in (low, high):
        args = worker.parse_args([option, f"{value:g}"])
        assert getattr(args, option.removeprefix("--")) == value
    for text in (f"{low * 0.99:g}", f"{high + 1:g}"):
        with pytest.raises(SystemExit) as exc:
            worker.parse_args([option, text])
        assert exc.value.code == 2
        one_error_line(capsys, option, f"'{text}'", f"a number of seconds from {low:g} to {high:g}")


@pytest.mark.parametrize(("option", "low", "high"), WORKER_BOUNDS, ids=[b[0] for b in WORKER_BOUNDS])
@pytest.mark.parametrize(
    "value",
    [HUGE, "1e999", "inf", "nan", "-1", "0", "x", ""],
    ids=["huge", "1e999", "inf", "nan", "negative", "zero", "word", "empty"],
)
def test_a_worker_option_refuses_a_huge_or_malformed_value_in_one_line(
    capsys: pytest.CaptureFixture[str], option: str, low: float, high: float, value: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        worker.parse_args([option, value])
    assert exc.value.code == 2
    one_error_line(capsys, option, f"a number of seconds from {low:g} to {high:g}")


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--worker-id", "w" * 129], ["--worker-id", "at most 128 characters"]),
        (["--worker-id", ""], ["--worker-id", "must not be empty"]),
        (["--tasks", ""], ["--tasks", "dotted name"]),
        (["--tasks", "..up"], ["--tasks", "dotted name"]),
        (["--db", ""], ["--db", "a SQLite file path or a database URL"]),
        (["--db", "sqlite://"], ["--db", "in-memory"]),
        (["--log-level", "LOUD"], ["--log-level", "invalid choice", "'INFO'"]),
        (["--bogus"], ["unrecognized arguments", "--bogus"]),
    ],
    ids=lambda v: " ".join(v)[:30] if isinstance(v, list) else None,
)
def test_a_worker_text_option_is_checked(capsys: pytest.CaptureFixture[str], args: list[str], names: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        worker.parse_args(args)
    assert exc.value.code == 2
    one_error_line(capsys, *names)


def test_the_worker_refuses_a_directory_as_its_database_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "ACTP_SCHEDULER_DB": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "worker.py"), "--no-legacy"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ACTP_SCHEDULER_DB: ") and done.stderr.count("\n") == 1
    assert done.stderr.endswith(": is a directory; give a SQLite file path in it\n")
    assert list(tmp_path.iterdir()) == []


def test_the_worker_refuses_a_bad_option_before_opening_anything(tmp_path: Path) -> None:
    db = tmp_path / "w" / "scheduler.db"
    done = subprocess.run(
        [sys.executable, str(ROOT / "worker.py"), "--db", str(db), "--tick", "inf", "--no-legacy"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == "error: argument --tick: 'inf': must be a number of seconds from 0.1 to 3600\n"
    assert not db.parent.exists()
