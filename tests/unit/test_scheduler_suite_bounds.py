"""The test suite's own promises: property tests bounded in examples, no assertion on wall-clock speed."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parents[1]
#: Reads of a real clock (``time.<name>()``, or the bare name imported from ``time``).
REAL_CLOCK_CALLS = {"perf_counter", "monotonic", "time"}
#: Files left out: the chaos storm (it keeps figures of its own, and is run apart from the suite).
LEFT_OUT = {"system/test_scheduler_chaos.py"}


def test_the_suite_s_hypothesis_profile_bounds_every_property_test() -> None:
    current = settings.default
    assert current.deadline is None and current.database is None
    assert current.max_examples <= 50
    assert HealthCheck.too_slow in current.suppress_health_check


def test_no_test_asserts_on_a_real_clock() -> None:
    found = [
        f"{path.relative_to(TESTS)}:{line}"
        for path in sorted(TESTS.rglob("test_*.py"))
        if str(path.relative_to(TESTS)) not in LEFT_OUT
        for line in clock_assertions(path.read_text())
    ]
    assert found == []
    # The check itself finds what it is for.
    assert clock_assertions("import time\nt = time.monotonic()\nassert time.monotonic() - t < 0.5\n") == [3]
    assert clock_assertions("elapsed = time.perf_counter() - began\nassert elapsed < 2\n") == [2]
    assert clock_assertions("assert time.monotonic() < deadline, 'waited too long'\n") == []  # a hang guard


def clock_assertions(source: str) -> list[int]:
    """Lines of ``assert`` statements that compare a duration read off a real clock (a difference
    with ``time.monotonic()``, ``perf_counter()`` or ``time.time()`` in it, or a name assigned one)
    with something: speed. ``time.monotonic() < deadline`` is a guard against a hang, not a duration."""
    tree = ast.parse(source)

    def duration(node: ast.AST) -> bool:
        return any(
            isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and any(_reads_clock(c) for c in ast.walk(n))
            for n in ast.walk(node)
        )

    timed = {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and duration(node.value)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Assert)
        and any(
            duration(c) or any(isinstance(n, ast.Name) and n.id in timed for n in ast.walk(c))
            for c in ast.walk(node.test)
            if isinstance(c, ast.Compare)
        )
    )


def _reads_clock(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else "time"
    return owner == "time" and name in REAL_CLOCK_CALLS
