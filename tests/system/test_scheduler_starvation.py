"""A slow schedule never starves the others, and SIGTERM ends within the shutdown bound.

The real worker runs a ``healthy`` 1 s schedule with an instant task beside four 1 s schedules
whose task takes 5 s (7 s under replace) and ignores stop requests, one per concurrency policy:
async tasks in one test, sync tasks on threads in the other (``tests.fixtures.starvation_tasks``).
After about 8 s it gets SIGTERM. From the ``scheduled_runs`` rows, the task ledger and what the
database showed while it ran:

- the healthy schedule starts on time (``started_at - intended_run_at``, and the task's own first
  line against the intended time) and none of its occurrences is skipped or missing;
- each slow schedule's runs follow its concurrency policy;
- the worker exits 0 within the shutdown bound, each run recorded as its shutdown policy says, and
  no row says other than the ledger (a task that ended is ``succeeded``, a run recorded otherwise
  never ended).

A last test stops a worker whose tasks leave code running that no stop can end (a thread of
``asyncio.to_thread``, a task that swallows its cancel): the exit is still bounded.

The three workers (async, sync, leftover) run side by side, each on its own database and ledger.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.scheduler import RunStatus, ScheduledRun, ScheduleStore
from agent.scheduler.engine import CUT_GRACE_SECONDS
from tests.fixtures.starvation_tasks import LEDGER_ENV, LEFTOVER_ENV, SLOW_ENV, SLOW_POLICIES
from tests.system.worker_process import POLL_SECONDS, WorkerProcess, wait_for
from worker import EXIT_GRACE_SECONDS

pytestmark = pytest.mark.system

TASKS_MODULE = "tests.fixtures.starvation_tasks"
#: How long each slow task works, and the shutdown timeout of the slow schedules (seconds).
SLOW_SECONDS = 5.0
SHUTDOWN_TIMEOUT = 3.0
#: How long the worker runs from the healthy schedule's first start to SIGTERM (seconds, about).
RUN_SECONDS = 8.0
#: The healthy schedule's largest lateness (seconds). On an idle 2-core machine it starts 1-2 ms
#: late in the database and its task begins 5-15 ms late, alone and beside the slow schedules
#: alike. A schedule starved by another would be late by a whole interval (or skipped); 1 s leaves
#: room for a loaded CI machine (other test processes, a busy disk) and still tells the two apart.
LATENESS_BOUND = 1.0
#: The worker's exit after SIGTERM: the longest shutdown timeout of the runs in flight plus this
#: (seconds). Measured 0.05-0.1 s over the timeout; the rest is room for a loaded machine.
STOP_MARGIN = 3.0
STILL_RUNNING = "shutdown: still running at the shutdown timeout"
#: What a slow schedule's run still running at the cutoff is recorded as (reason prefixes), by the
#: kind of its task and its shutdown policy (SLOW_POLICIES). A replaced run asked to stop before the
#: signal stays "replaced"; a thread is never requeued at once, it has the shutdown timeout.
SHUTDOWN_REASONS = {
    "async": {
        "slow_forbid": (STILL_RUNNING,),
        "slow_allow": ("shutdown: requeued (policy requeue)",),
        "slow_enqueue_one": ("shutdown: no checkpoint saved, requeued",),
        "slow_replace": ("replaced by a newer occurrence", STILL_RUNNING),
    },
    "sync": {
        "slow_forbid": (STILL_RUNNING,),
        "slow_allow": (STILL_RUNNING,),
        "slow_enqueue_one": ("shutdown: no checkpoint saved, requeued",),
        "slow_replace": ("replaced by a newer occurrence", STILL_RUNNING),
    },
}


@dataclass(frozen=True, slots=True)
class Line:
    """One ledger line: ``kind schedule run_id unix_time``."""

    kind: str
    schedule: str
    run_id: str
    at: float


def read_ledger(path: Path) -> list[Line]:
    if not path.exists():
        return []
    out = []
    for text in path.read_text().splitlines():
        kind, schedule, run_id, at = text.split()
        out.append(Line(kind, schedule, run_id, float(at)))
    return out


@dataclass
class Watched:
    """What the database showed while the worker ran, per schedule: the most runs running, and the
    most waiting, at once. A due run is started or skipped within the lateness bound: one pending
    longer than that past its time waits (a run just due, or prepared ahead of its time, does not)."""

    running: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    waiting: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def look(self, store: ScheduleStore) -> None:
        waits_since = datetime.now(UTC) - timedelta(seconds=LATENESS_BOUND)
        running: dict[str, int] = defaultdict(int)
        waiting: dict[str, int] = defaultdict(int)
        for run in store.runs(status=[RunStatus.RUNNING, RunStatus.PENDING]):
            if run.status is RunStatus.RUNNING:
                running[run.schedule_name] += 1
            elif run.intended_run_at <= waits_since:
                waiting[run.schedule_name] += 1
        for name, n in running.items():
            self.running[name] = max(self.running[name], n)
        for name, n in waiting.items():
            self.waiting[name] = max(self.waiting[name], n)


@dataclass
class Outcome:
    """Everything one worker's life left behind."""

    runs: list[ScheduledRun]
    ledger: list[Line]
    watched: Watched
    signalled_at: datetime
    exit_code: int | None
    stop_seconds: float
    log: str

    def rows(self, schedule: str) -> list[ScheduledRun]:
        return [r for r in self.runs if r.schedule_name == schedule]

    def lateness(self) -> list[float]:
        """Seconds from each started healthy run's intended time to its start (``started_at``)."""
        return [(r.started_at - r.intended_run_at).total_seconds() for r in self.rows("healthy") if r.started_at]

    def task_lateness(self) -> list[float]:
        """Seconds from each healthy run's intended time to its task's first line."""
        intended = {r.run_id: r.intended_run_at.timestamp() for r in self.rows("healthy")}
        return [e.at - intended[e.run_id] for e in self.ledger if e.kind == "BEGIN" and e.run_id in intended]

    def most_at_once(self, schedule: str) -> int:
        """The most executions of ``schedule`` whose task ran at the same time (from the ledger); a
        task cut by a cancel (no END) counts until its row's completion, or until the signal."""
        ends = {e.run_id: e.at for e in self.ledger if e.kind == "END"}
        completed = {r.run_id: r.completed_at for r in self.rows(schedule)}
        points: list[tuple[float, int]] = []
        for e in self.ledger:
            if e.kind == "BEGIN" and e.schedule == schedule:
                done = completed.get(e.run_id)
                end = ends.get(e.run_id, done.timestamp() if done else self.signalled_at.timestamp())
                points += [(e.at, 1), (end, -1)]
        most = now = 0
        for _, step in sorted(points):
            now += step
            most = max(most, now)
        return most

    def mismatches(self) -> list[str]:
        """Rows the ledger contradicts: a task that ended must be ``succeeded``, a run recorded
        otherwise must not have ended, and a skipped run never began."""
        began = {e.run_id for e in self.ledger if e.kind == "BEGIN"}
        ended = {e.run_id for e in self.ledger if e.kind == "END"}
        out = []
        for r in self.runs:
            did = "ended" if r.run_id in ended else "began" if r.run_id in began else "never began"
            wrong = (r.status is RunStatus.SUCCEEDED) != (did == "ended")
            if wrong or (r.status is RunStatus.SKIPPED and did != "never began"):
                out.append(f"{r.schedule_name} {r.intended_run_at:%H:%M:%S}: {r.status.value} ({r.reason}), {did}")
        return out

    def summary(self) -> str:
        late, task = self.lateness(), self.task_lateness()
        names = ["healthy", *(f"slow_{p}" for p in SLOW_POLICIES)]
        return (
            f"lateness max {max(late, default=0):.3f}s p95 {_p95(late):.3f}s median {_median(late):.3f}s "
            f"(task begin max {max(task, default=0):.3f}s) over {len(late)} runs; "
            f"stop {self.stop_seconds:.2f}s, exit {self.exit_code}; "
            f"rows { {n: _statuses(self.rows(n)) for n in names} }; "
            f"running at once {dict(self.watched.running)}; waiting at once {dict(self.watched.waiting)}; "
            f"ledger at once { {n: self.most_at_once(n) for n in names[1:]} }; mismatches {self.mismatches()}"
        )


def _statuses(rows: list[ScheduledRun]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r.status.value] += 1
    return dict(out)


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else max(values, default=0.0)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def between_occurrences(db: Path) -> None:
    """Sleep until halfway between two occurrences of ``healthy`` (the slow schedules' grid is the
    same, within milliseconds): no slow task ends near a shutdown cutoff, so no row depends on
    which of the two came first."""
    with ScheduleStore(db) as store:
        anchor = store.get("healthy").anchor_at
    assert anchor is not None
    phase = (datetime.now(UTC) - anchor).total_seconds() % 1.0
    time.sleep((0.5 - phase) % 1.0)


def live(
    tmp: Path, env: dict[str, str], *, until: str, run_seconds: float, stop_within: float, mid_grid: bool = True
) -> Outcome:
    """Start the worker with ``env``; once a ledger line of schedule ``until`` is written, let it run
    ``run_seconds`` while watching the database, then SIGTERM it and collect what it left."""
    db, ledger = tmp / "starve.db", tmp / "ledger.txt"
    env = {"SAMPLE_SCHEDULES": "", LEDGER_ENV: str(ledger), **env}
    worker = WorkerProcess(db, tmp / "worker.log", env, "--tasks", TASKS_MODULE, worker_id="starve").start()
    watched = Watched()
    try:
        wait_for(lambda: any(e.schedule == until for e in read_ledger(ledger)), 30, f"the first run of {until}")
        with ScheduleStore(db) as store:
            deadline = time.monotonic() + run_seconds
            while time.monotonic() < deadline:
                watched.look(store)
                assert worker.proc is not None and worker.proc.poll() is None, worker.log()
                time.sleep(POLL_SECONDS)
        if mid_grid:
            between_occurrences(db)
        signalled_at = datetime.now(UTC)
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        try:
            code: int | None = worker.wait(timeout=stop_within + 30)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - signalled
    finally:
        worker.kill()
    with ScheduleStore(db) as store:
        runs = store.runs()
    return Outcome(runs, read_ledger(ledger), watched, signalled_at, code, took, worker.log())


def beside_slow_schedules(tmp: Path, kind: str) -> Outcome:
    """The healthy schedule beside the four slow ones, their tasks of ``kind`` (async or sync)."""
    env = {SLOW_ENV: f"{kind}:{SLOW_SECONDS:g}:{SHUTDOWN_TIMEOUT:g}"}
    stop_within = SHUTDOWN_TIMEOUT + STOP_MARGIN
    return live(tmp, env, until="healthy", run_seconds=RUN_SECONDS, stop_within=stop_within)


#: The leftover test's shutdown timeout (seconds) and the bound on its worker's exit after SIGTERM.
LEFTOVER_SHUTDOWN_TIMEOUT = 1.0
LEFTOVER_STOP_BOUND = LEFTOVER_SHUTDOWN_TIMEOUT + CUT_GRACE_SECONDS + EXIT_GRACE_SECONDS + STOP_MARGIN


def with_leftover_tasks(tmp: Path) -> Outcome:
    """The healthy schedule beside two one-shot tasks whose code outlives their run."""
    env = {LEFTOVER_ENV: f"30:{LEFTOVER_SHUTDOWN_TIMEOUT:g}"}
    return live(tmp, env, until="deaf", run_seconds=0.5, stop_within=LEFTOVER_STOP_BOUND, mid_grid=False)


@pytest.fixture(scope="module")
def lives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Outcome]]]:
    """The module's three worker lives, run side by side: each is its own process with its own
    database and ledger, and spends most of its time waiting on its schedules, so they do not
    disturb one another. A test waits for the life it asserts on; one that fails fails its test only."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        yield {
            "async": pool.submit(beside_slow_schedules, tmp_path_factory.mktemp("starve_async"), "async"),
            "sync": pool.submit(beside_slow_schedules, tmp_path_factory.mktemp("starve_sync"), "sync"),
            "leftover": pool.submit(with_leftover_tasks, tmp_path_factory.mktemp("starve_leftover")),
        }


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_slow_schedule_under_each_concurrency_policy_never_delays_a_healthy_one(
    lives: dict[str, Future[Outcome]], kind: str
) -> None:
    out = lives[kind].result()
    print(f"{kind}: {out.summary()}")
    signalled = out.signalled_at

    # The worker stopped within the bound, cleanly.
    assert out.exit_code == 0, out.log[-3000:]
    assert out.stop_seconds <= SHUTDOWN_TIMEOUT + STOP_MARGIN, out.summary()

    # The healthy schedule: on time, every occurrence run, none skipped.
    healthy = out.rows("healthy")
    assert max(out.lateness()) <= LATENESS_BOUND, out.summary()
    assert max(out.task_lateness()) <= LATENESS_BOUND, out.summary()
    intended = [r.intended_run_at for r in healthy]
    assert intended == [intended[0] + timedelta(seconds=i) for i in range(len(intended))], intended
    assert len(intended) >= RUN_SECONDS
    for run in healthy:
        if run.intended_run_at < signalled - timedelta(seconds=0.5):
            assert run.status is RunStatus.SUCCEEDED, run
        else:  # prepared ahead of its time, then the stop came
            assert (run.status, run.reason) == (RunStatus.PENDING, None), run

    # Rows and ledger agree; nothing is left running, failed or paused.
    assert out.mismatches() == [], out.summary()
    assert {r.status for r in out.runs} <= {
        RunStatus.SUCCEEDED,
        RunStatus.SKIPPED,
        RunStatus.PENDING,
        RunStatus.CANCELLED,
    }, out.summary()

    # Each slow schedule follows its concurrency policy.
    def skipped_reasons(name: str) -> set[str | None]:
        return {r.reason for r in out.rows(name) if r.status is RunStatus.SKIPPED}

    assert out.most_at_once("slow_forbid") == out.watched.running["slow_forbid"] == 1, out.summary()
    assert skipped_reasons("slow_forbid") == {"overlap: a run of this schedule is in flight (forbid)"}
    assert out.most_at_once("slow_allow") >= 3 and out.watched.running["slow_allow"] >= 3, out.summary()
    assert skipped_reasons("slow_allow") == set()
    assert out.most_at_once("slow_enqueue_one") == 1
    assert out.watched.waiting["slow_enqueue_one"] == 1, out.summary()
    assert skipped_reasons("slow_enqueue_one") == {"enqueue_one: a run is already waiting (queue full)"}
    assert out.most_at_once("slow_replace") == 1, out.summary()
    assert skipped_reasons("slow_replace") == {"replace: superseded by a newer occurrence"}
    replaced = [
        r
        for r in out.rows("slow_replace")
        if r.status is not RunStatus.SKIPPED and r.completed_at and r.completed_at < signalled
    ]
    assert replaced, out.summary()
    if kind == "async":  # cut at the stop grace
        assert {(r.status, r.reason) for r in replaced} == {(RunStatus.CANCELLED, "replaced by a newer occurrence")}
    else:  # a thread cannot be cut: waited for, and recorded for what it did
        reason = "asked to stop (replaced by a newer occurrence); ended on its own"
        assert {(r.status, r.reason) for r in replaced} == {(RunStatus.SUCCEEDED, reason)}

    # What was still running at its cutoff is recorded as its shutdown policy says (what ended
    # before is succeeded, which the ledger confirmed above); the allow schedule always has some.
    for name, reasons in SHUTDOWN_REASONS[kind].items():
        cut = [r for r in out.rows(name) if r.status in (RunStatus.PENDING, RunStatus.CANCELLED) and r.reason]
        assert all(r.reason is not None and r.reason.startswith(reasons) for r in cut), (name, cut)
        assert cut or name != "slow_allow", out.summary()


def test_sigterm_ends_the_worker_even_when_task_code_outlives_its_run(lives: dict[str, Future[Outcome]]) -> None:
    out = lives["leftover"].result()
    print(f"leftover: stop {out.stop_seconds:.2f}s, exit {out.exit_code}")
    assert out.exit_code == 0, out.log[-3000:]
    assert out.stop_seconds <= LEFTOVER_STOP_BOUND
    assert {r.schedule_name: r.reason for r in out.runs if r.schedule_name != "healthy"} == {
        "offloaded": "shutdown: still running at the shutdown timeout",
        "deaf": "shutdown: still running at the shutdown timeout; it did not end when cancelled and is left to "
        "end with the process",
    }
    assert "the exit was held" in out.log
    assert [e for e in out.ledger if e.kind == "END" and e.schedule != "healthy"] == []
