"""Durability proven on the real worker process: SIGTERM under each shutdown policy, kill -9, restarts.

Each test's scenario drives its own worker processes on its own database; the scenarios run side by side.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from agent.scheduler import RunStatus, ScheduleStore
from tests.system.worker_process import WorkerProcess, wait_for

pytestmark = pytest.mark.system


@dataclass
class Rig:
    """One database, one ledger, and the worker processes started on them."""

    tmp: Path
    schedules: str
    extra_env: dict[str, str] = field(default_factory=dict)
    kills: list[float] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "worker.db"

    @property
    def ledger(self) -> Path:
        return self.tmp / "ledger.txt"

    @property
    def spans(self) -> Path:
        return self.tmp / "spans.txt"

    def start(self) -> WorkerProcess:
        env = {
            "SAMPLE_LEDGER": str(self.ledger),
            "SAMPLE_SPANS": str(self.spans),
            "SAMPLE_SCHEDULES": self.schedules,
            **self.extra_env,
        }
        return WorkerProcess(self.db, self.tmp / "worker.log", env).start()

    def runs(self, schedule: str) -> list:  # type: ignore[type-arg]
        with ScheduleStore(self.db) as store:
            return store.runs(schedule=schedule)

    def status(self, schedule: str) -> list[RunStatus]:
        return [r.status for r in self.runs(schedule)] if self.db.exists() else []

    def ledger_lines(self) -> list[str]:
        return self.ledger.read_text().splitlines() if self.ledger.exists() else []

    def kill(self, worker: WorkerProcess) -> None:
        self.kills.append(time.time())
        worker.signal(signal.SIGKILL)
        worker.wait(timeout=10)


def stop(worker: WorkerProcess, limit: float = 10) -> float:
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=limit) == 0, worker.log()
    return time.monotonic() - began


def marker(rig: Rig) -> dict:  # type: ignore[type-arg]
    with ScheduleStore(rig.db) as store:
        state = store.get_state("worker:system-test")
    assert state is not None
    return state


def graceful_finish(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "graceful_once", {"SAMPLE_SLOW_SECONDS": "2"})
    worker = rig.start()
    try:
        wait_for(lambda: rig.status("graceful_once") == [RunStatus.RUNNING], 30, "the run to start")
        stop(worker)
    finally:
        worker.kill()
    [run] = rig.runs("graceful_once")
    assert (run.status, run.outcome) == (RunStatus.SUCCEEDED, "slow done")
    assert len(rig.ledger_lines()) == 1 and marker(rig)["clean"] is True


def requeue(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "requeue_once", {"SAMPLE_SLOW_SECONDS": "30"})
    worker = rig.start()
    try:
        wait_for(lambda: rig.status("requeue_once") == [RunStatus.RUNNING], 30, "the run to start")
        assert stop(worker) < 5
        [run] = rig.runs("requeue_once")
        assert (run.status, run.attempt, run.reason) == (RunStatus.PENDING, 1, "shutdown: requeued (policy requeue)")
        assert rig.ledger_lines() == [] and marker(rig)["clean"] is True
        rig.extra_env["SAMPLE_SLOW_SECONDS"] = "0.2"
        worker = rig.start()
        wait_for(lambda: rig.status("requeue_once") == [RunStatus.SUCCEEDED], 30, "the requeued run to succeed")
        stop(worker)
    finally:
        worker.kill()
    [run] = rig.runs("requeue_once")
    assert run.attempt == 1
    assert [line.split()[0] for line in rig.ledger_lines()] == [run.idempotency_key]


def checkpoint_and_stop(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "steps_once", {"SAMPLE_STEPS": "10", "SAMPLE_STEP_SECONDS": "0.3"})
    worker = rig.start()
    try:
        wait_for(lambda: len(rig.ledger_lines()) >= 3, 30, "three steps")
        stop(worker)
        [run] = rig.runs("steps_once")
        done_before = len(rig.ledger_lines())
        assert run.status is RunStatus.PAUSED
        assert run.checkpoint == {"next": done_before} and done_before < 10
        worker = rig.start()
        wait_for(lambda: rig.status("steps_once") == [RunStatus.SUCCEEDED], 30, "the resumed run to finish")
        stop(worker)
    finally:
        worker.kill()
    steps = [int(line.split()[-1]) for line in rig.ledger_lines()]
    assert steps == list(range(10))  # every step exactly once, across the pause
    assert rig.runs("steps_once")[0].outcome == "all 10 steps"


def executions(rig: Rig) -> list[tuple[float, float]]:
    """(start, end) of every execution of the slow task; one cut short by a kill ends at that kill."""
    starts: dict[str, float] = {}
    spans = []
    for line in rig.spans.read_text().splitlines():
        kind, run_id, _key, at = line.split()
        if kind == "START":
            if run_id in starts:  # started again after a kill: the earlier execution died with it
                spans.append((starts[run_id], min(k for k in rig.kills if k > starts[run_id])))
            starts[run_id] = float(at)
        else:
            spans.append((starts.pop(run_id), float(at)))
    spans += [(s, min((k for k in rig.kills if k > s), default=time.time())) for s in starts.values()]
    return sorted(spans)


def kill_in_flight(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "ledger_every_second,forbid_slow", {"SAMPLE_SLOW_SECONDS": "1.5"})
    worker = rig.start()
    try:
        wait_for(
            lambda: RunStatus.RUNNING in rig.status("forbid_slow") and len(rig.ledger_lines()) >= 2,
            30,
            "runs in flight",
        )
        rig.kill(worker)
        left = {
            r.run_id for r in rig.runs("forbid_slow") + rig.runs("ledger_every_second") if r.status is RunStatus.RUNNING
        }
        assert left
        time.sleep(1.5)  # a real outage: occurrences fall due while nothing runs
        worker = rig.start()
        wait_for(
            lambda: all(r.status is not RunStatus.RUNNING for r in rig.runs("forbid_slow") if r.run_id in left),
            30,
            "orphans to be handled",
        )
        # The schedule goes on after the restart: three more of its runs succeed.
        done = len([r for r in rig.runs("ledger_every_second") if r.status is RunStatus.SUCCEEDED])
        wait_for(
            lambda: len([r for r in rig.runs("ledger_every_second") if r.status is RunStatus.SUCCEEDED]) >= done + 3,
            30,
            "three more runs after the restart",
        )
        stop(worker)
    finally:
        worker.kill()
    with ScheduleStore(rig.db) as store:
        report = store.reports(limit=1)[0].report
    assert report["previous_shutdown"] == "crash"
    assert report["orphans_found"] == len(left) == report["orphans_requeued"]
    every = rig.runs("ledger_every_second")
    intended = [r.intended_run_at for r in every]
    assert intended == [intended[0] + timedelta(seconds=i) for i in range(len(intended))]
    assert all(r.status is RunStatus.SUCCEEDED for r in every[:-3])
    spans = executions(rig)
    assert all(b_start >= a_end for (_, a_end), (b_start, _) in pairwise(spans)), spans


def random_kills(tmp_path: Path) -> str:
    # Each execution records itself, then works 0.4 s more: a kill in that window re-executes it.
    rig = Rig(tmp_path, "ledger_every_second", {"SAMPLE_AFTER_SECONDS": "0.4"})
    rng = random.Random(20271313)
    cycles = 10  # the chaos storm kills 20 times more, over 100 schedules
    in_flight_at_kill: set[str] = set()
    began = time.monotonic()
    worker = rig.start()
    try:
        for _ in range(cycles):
            wait_for(lambda: len(rig.ledger_lines()) > 0, 30, "the first run")
            time.sleep(rng.uniform(0.3, 1.5))
            rig.kill(worker)
            in_flight_at_kill |= {
                r.idempotency_key for r in rig.runs("ledger_every_second") if r.status is RunStatus.RUNNING
            }
            time.sleep(rng.uniform(0.0, 1.0))
            worker = rig.start()
        runs_before_end = len(rig.runs("ledger_every_second"))
        wait_for(lambda: len(rig.runs("ledger_every_second")) >= runs_before_end + 2, 30, "runs after the last restart")
        stop(worker)
    finally:
        worker.kill()
    elapsed = time.monotonic() - began
    runs = rig.runs("ledger_every_second")
    intended = [r.intended_run_at for r in runs]
    # The covered span, first to last intended time, has one run per second and none twice.
    assert intended == [intended[0] + timedelta(seconds=i) for i in range(len(intended))]
    settled = [r for r in runs if r.status is not RunStatus.PENDING]
    assert all(r.status is RunStatus.SUCCEEDED for r in settled), Counter(r.status for r in settled)
    executed = Counter(line.split()[0] for line in rig.ledger_lines())
    assert {r.idempotency_key for r in settled} <= set(executed)
    again = {key for key, n in executed.items() if n > 1}
    # At least once, never lost: an occurrence ran twice only if it was in flight at a kill.
    assert again <= in_flight_at_kill
    assert in_flight_at_kill, "no kill caught a run in flight: the test exercised nothing"
    return (
        f"kill -9 cycles: {cycles}, occurrences: {len(runs)}, re-executions: {sum(executed[k] - 1 for k in again)}, "
        f"in flight at a kill: {len(in_flight_at_kill)}, elapsed: {elapsed:.1f} s"
    )


# ---------------------------------------------------------------------------------------------- the tests

#: Each test's scenario (above; it asserts as it goes). The scenarios run side by side, each with its
#: own worker processes, database and ledger, and spend most of their time waiting on the workers.
SCENARIOS: dict[str, Callable[[Path], str | None]] = {
    "test_sigterm_with_graceful_finish_lets_the_run_complete": graceful_finish,
    "test_sigterm_with_requeue_leaves_a_pending_run_that_runs_after_restart": requeue,
    "test_sigterm_with_checkpoint_and_stop_pauses_and_the_restart_finishes_the_rest_once": checkpoint_and_stop,
    "test_kill_9_in_flight_then_restart_reconciles_every_orphan_and_loses_nothing": kill_in_flight,
    "test_random_kill_9_cycles_lose_no_occurrence_and_rerun_only_what_was_in_flight": random_kills,
}


@pytest.fixture(scope="module")
def lives(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[str | None]]]:
    """The scenarios of the tests selected in this module, started together; a test waits for its own,
    and one that fails fails its test only."""
    selected = [getattr(item, "originalname", item.name) for item in request.session.items if item.path == request.path]
    wanted = {name: SCENARIOS[name] for name in selected if name in SCENARIOS}
    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        yield {name: pool.submit(fn, tmp_path_factory.mktemp(fn.__name__)) for name, fn in wanted.items()}


def outcome(lives: dict[str, Future[str | None]], request: pytest.FixtureRequest) -> None:
    figures = lives[request.node.originalname].result()
    if figures:
        print(figures)


def test_sigterm_with_graceful_finish_lets_the_run_complete(
    lives: dict[str, Future[str | None]], request: pytest.FixtureRequest
) -> None:
    outcome(lives, request)


def test_sigterm_with_requeue_leaves_a_pending_run_that_runs_after_restart(
    lives: dict[str, Future[str | None]], request: pytest.FixtureRequest
) -> None:
    outcome(lives, request)


def test_sigterm_with_checkpoint_and_stop_pauses_and_the_restart_finishes_the_rest_once(
    lives: dict[str, Future[str | None]], request: pytest.FixtureRequest
) -> None:
    outcome(lives, request)


def test_kill_9_in_flight_then_restart_reconciles_every_orphan_and_loses_nothing(
    lives: dict[str, Future[str | None]], request: pytest.FixtureRequest
) -> None:
    outcome(lives, request)


def test_random_kill_9_cycles_lose_no_occurrence_and_rerun_only_what_was_in_flight(
    lives: dict[str, Future[str | None]], request: pytest.FixtureRequest
) -> None:
    outcome(lives, request)
