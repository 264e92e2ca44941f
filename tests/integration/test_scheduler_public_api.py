"""The public API as outside code sees it: a fresh interpreter, outside the repository, runs the documented example."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import agent.scheduler

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "fixtures" / "public_api_example.py"

#: Mirrors the "Public API" section of the architecture: the names outside code relies on.
#: Adding or dropping one is a deliberate change of both.
PUBLIC_API = frozenset(
    {
        "ScheduleStore",
        "ScheduleDefinition",
        "ScheduledRun",
        "ScheduleEngine",
        "TaskRegistry",
        "RunContext",
        "TriggerType",
        "MissedRunPolicy",
        "ConcurrencyPolicy",
        "ShutdownPolicy",
        "RiskTier",
        "RunStatus",
        "BreakerState",
        "ScheduleProposal",
        "SchedulerError",
        "InvalidSchedule",
        "SystemClock",
        "FakeClock",
    }
)

#: A fresh interpreter importing the scheduler and its libraries takes well under a second;
#: the bound only keeps a hung example from hanging the suite.
SUBPROCESS_TIMEOUT_SECONDS = 90


def run_example(tmp_path: Path) -> dict[str, object]:
    """Run the example from ``tmp_path`` with only the repository root on the import path."""
    script = tmp_path / EXAMPLE.name
    shutil.copy(EXAMPLE, script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "scheduler.db")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_documented_names_are_the_public_api() -> None:
    assert set(agent.scheduler.__all__) == PUBLIC_API
    assert len(agent.scheduler.__all__) == len(PUBLIC_API)
    for name in PUBLIC_API:
        assert getattr(agent.scheduler, name) is not None


def test_outside_code_runs_the_documented_example_end_to_end(tmp_path: Path) -> None:
    out = run_example(tmp_path)

    assert Path(str(out["module"])).resolve() == ROOT / "agent" / "scheduler" / "__init__.py"
    assert set(out["all"]) == PUBLIC_API  # type: ignore[arg-type]
    assert out["invalid_field"] == "expression"
    assert out["names"] == ["stalled", "sweep"]
    assert out["disabled"] == "maintenance"
    assert out["disabled_get"] == [False, "maintenance"]
    assert out["enabled"] is True
    assert out["report"] == "ReconciliationReport"
    assert out["now"] == "2027-03-13T00:30:00+00:00"
    # Thirty minutes of a */5 schedule: six occurrences, each run once, in order.
    assert out["sweep_runs"] == [
        {
            "intended_run_at": f"2027-03-13T00:{m:02d}:00+00:00",
            "status": "succeeded",
            "attempt": 1,
            "outcome": f"swept 00:{m:02d}",
            "error": None,
        }
        for m in (5, 10, 15, 20, 25, 30)
    ]
    assert out["event_id"] is True
    assert out["stalled_runs"] == [
        {
            "intended_run_at": "2027-03-13T00:30:00+00:00",
            "status": "succeeded",
            "attempt": 1,
            "outcome": "restarted sync on job.stalled",
            "error": None,
        }
    ]
    assert out["dead_letters"] == 0
    assert out["contexts"] == [
        {"schedule": "sweep", "attempt": 1, "checkpoint": None, "key_has_schedule_id": True, "stop_requested": False}
    ]
