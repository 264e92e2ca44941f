"""The concurrency guard: what each due run of a schedule does, given what of it is in flight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.scheduler import ConcurrencyPolicy, ScheduledRun
from agent.scheduler.policies.concurrency import Action, decide_starts

T0 = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)


def run(minute: int, **kw: object) -> ScheduledRun:
    at = T0 + timedelta(minutes=minute)
    return ScheduledRun(
        run_id=f"r{minute}", schedule_id="s", schedule_name="s", intended_run_at=at, occurrence_key=str(minute), **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "due", "in_flight", "actions"),
    [
        ("forbid", [run(0), run(1)], 0, [Action.START, Action.SKIP]),
        ("forbid", [run(0)], 1, [Action.SKIP]),
        ("forbid", [run(0, catch_up=True)], 1, [Action.WAIT]),
        # A run that started before and was cut (an orphan's retry, a requeue) is work owed: it waits.
        ("forbid", [run(0, starts=1, attempt=2)], 1, [Action.WAIT]),
        ("forbid", [run(0, starts=1)], 1, [Action.WAIT]),
        ("enqueue_one", [run(0), run(1), run(2)], 1, [Action.WAIT, Action.SKIP, Action.SKIP]),
        ("enqueue_one", [run(0), run(1, starts=1)], 1, [Action.WAIT, Action.WAIT]),
        ("allow", [run(0), run(1)], 3, [Action.START, Action.START]),
        ("replace", [run(0), run(1)], 1, [Action.SKIP, Action.REPLACE]),
        ("replace", [run(0)], 0, [Action.START]),
    ],
)
def test_each_policy_decides_every_due_run(
    policy: str, due: list[ScheduledRun], in_flight: int, actions: list[Action]
) -> None:
    decisions = decide_starts(ConcurrencyPolicy(policy), due, in_flight)
    assert [d.action for d in decisions] == actions
    assert [d.run for d in decisions] == due
    assert all(d.reason for d in decisions)
