"""Structural promises: a pure core, a pinned public API, and an honest feature list."""

from __future__ import annotations

import ast
import inspect
import json
import sys
from pathlib import Path

import agent.scheduler

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "agent" / "scheduler"

#: Modules that must stay free of I/O, and the pure modules they may lean on.
CORE = ["triggers.py", "clock.py", "errors.py", "identity.py", "limits.py", "policies", "machines"]
PURE_SUPPORT = {
    "enums",
    "errors",
    "limits",
    "definition",
    "scheduled_run",
    "records",
    "triggers",
    "clock",
    "policies",
    "machines",
}
#: Absolute imports the core may use: pure standard library and the pure third-party libraries.
ALLOWED = {
    "__future__",
    "abc",
    "bisect",
    "calendar",
    "collections",
    "dataclasses",
    "datetime",
    "enum",
    "functools",
    "hashlib",
    "itertools",
    "json",
    "math",
    "re",
    "reprlib",
    "typing",
    "unicodedata",
    "uuid",
    "zoneinfo",
    "croniter",
    "transitions",
}
#: asyncio only for the real clock's sleep.
ALLOWED_IN = {"clock.py": {"asyncio"}}


def core_files() -> list[Path]:
    out: list[Path] = []
    for entry in CORE:
        path = PKG / entry
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def imported_modules(path: Path, source: str | None = None) -> list[str]:
    """Absolute names of what ``path`` imports; relative imports resolved against its package."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: list[str] = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                names.append(".".join([*base, node.module]))
            else:
                names += [".".join([*base, a.name]) for a in node.names]
    return names


def offences(path: Path, source: str | None = None) -> list[str]:
    """Imports of ``path`` that reach outside the pure core and the allowed libraries."""
    allowed = ALLOWED | ALLOWED_IN.get(path.name, set())
    bad = []
    for name in imported_modules(path, source):
        parts = name.split(".")
        if parts[:2] == ["agent", "scheduler"]:
            if len(parts) < 3 or parts[2] not in PURE_SUPPORT:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
        elif parts[0] not in allowed:
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_the_core_imports_no_database_network_or_os_module() -> None:
    assert [o for path in core_files() for o in offences(path)] == []


def test_the_pure_support_modules_import_no_io_either() -> None:
    support = ("enums", "definition", "scheduled_run", "records")
    assert [o for name in support for o in offences(PKG / f"{name}.py")] == []


def test_every_machine_and_its_policies_are_checked_as_core() -> None:
    checked = {str(p.relative_to(PKG)) for p in core_files()}
    for kind in ("run_lifecycle", "breaker", "proposal", "outbox"):
        assert f"machines/{kind}.py" in checked
    assert {"policies/outbox.py", "policies/breaker.py", "policies/retry.py"} <= checked
    assert offences(PKG / "machines" / "outbox.py") == offences(PKG / "policies" / "outbox.py") == []


#: The host's own modules at the repository root: the package never imports them (it installs without them).
HOST_MODULES = {"service_registry", "cron_definitions", "worker", "telegram_bot", "jobs"}


def host_imports(path: Path, source: str | None = None) -> list[str]:
    """Imports of ``path`` that reach the host's root modules."""
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for name in imported_modules(path, source)
        if name.split(".")[0] in HOST_MODULES
    ]


def test_nothing_in_the_package_imports_the_hosts_root_modules() -> None:
    assert [o for path in sorted((ROOT / "agent").rglob("*.py")) for o in host_imports(path)] == []


def test_the_host_import_checker_would_catch_one() -> None:
    bad = "import worker\nfrom service_registry import ServiceRegistry\nfrom jobs.sync import x\nimport json\n"
    found = host_imports(PKG / "adapters" / "x.py", bad)
    assert [f.split(" imports ")[1] for f in found] == ["worker", "service_registry", "jobs.sync"]


def test_the_checker_would_catch_a_forbidden_import() -> None:
    bad = "import sqlite3\nfrom sqlalchemy import text\nfrom ..store import ScheduleStore\nfrom . import retry\n"
    found = offences(PKG / "policies" / "x.py", bad)
    assert [f.split(" imports ")[1] for f in found] == ["sqlite3", "sqlalchemy", "agent.scheduler.store"]


def test_nothing_but_the_system_clock_reads_the_wall_clock() -> None:
    readers = []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        if any(s in text for s in ("datetime.now(", "datetime.utcnow(", "time.time(")) and path.name != "clock.py":
            readers.append(str(path.relative_to(ROOT)))
    assert readers == []


def test_public_api_is_pinned() -> None:
    from tests.integration.test_scheduler_public_api import PUBLIC_API

    assert sorted(agent.scheduler.__all__) == sorted(PUBLIC_API)
    for name in agent.scheduler.__all__:
        assert getattr(agent.scheduler, name) is not None


def _test_exists(node_id: str) -> bool:
    path, _, rest = node_id.partition("::")
    file = ROOT / path
    if not file.exists():
        return False
    names = [n.split("[")[0] for n in rest.split("::") if n]
    scope: list[ast.stmt] = ast.parse(file.read_text()).body
    for name in names:
        found = [
            n for n in scope if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == name
        ]
        if not found:
            return False
        scope = found[0].body if isinstance(found[0], ast.ClassDef) else []
    return True


def test_features_file_lists_the_fourteen_features_and_names_real_tests_for_each_passing_one() -> None:
    data = json.loads((ROOT / "prd-015-features.json").read_text())
    features = data["features"]
    assert [f["id"] for f in features] == [f"SCHED-{i:03d}" for i in range(1, 15)]
    for f in features:
        assert set(f) >= {"id", "title", "passes", "tests"} and isinstance(f["passes"], bool)
        if f["passes"]:
            assert f["tests"], f"{f['id']} passes without naming a test"
            missing = [t for t in f["tests"] if not _test_exists(t)]
            assert missing == [], f"{f['id']} names missing tests: {missing}"


def test_the_feature_check_notices_a_missing_test() -> None:
    assert _test_exists("tests/unit/test_scheduler_architecture.py::test_public_api_is_pinned")
    assert not _test_exists("tests/unit/test_scheduler_architecture.py::test_that_does_not_exist")
    assert not _test_exists("tests/unit/nowhere.py::test_x")
    assert sys.version_info >= (3, 11)


def test_the_readme_shows_the_machines_as_the_code_defines_them() -> None:
    from agent.scheduler.machines.diagrams import all_mermaid

    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```mermaid\n")[1:]]
    assert blocks == list(all_mermaid().values())


def test_docs_state_machines_is_generated_from_the_code() -> None:
    from agent.scheduler.machines.diagrams import state_machines_markdown

    assert (ROOT / "docs" / "state-machines.md").read_text() == state_machines_markdown()


#: The engine's rooms that run on its database thread: no event loop, no task, no room of the loop's.
DB_SIDE = ["tick.py", "reconciliation.py", "breakers.py", "due.py", "events.py"]
#: The loop's rooms, which the database side must not reach into.
LOOP_SIDE = {"agent.scheduler.engine.loop", "agent.scheduler.engine.execution", "agent.scheduler.engine.feed"}
#: A newcomer reads an engine module in one sitting.
ENGINE_MODULE_LINES = 700


def test_the_engine_s_database_side_never_touches_the_event_loop() -> None:
    found = []
    for name in DB_SIDE:
        path = PKG / "engine" / name
        for module in imported_modules(path):
            if module.split(".")[0] in ("asyncio", "concurrent", "threading") or module in LOOP_SIDE:
                found.append(f"{name} imports {module}")
    assert found == []


def test_the_database_side_check_would_catch_an_asyncio_import() -> None:
    source = "import asyncio\nfrom .execution import Execution\nfrom .tick import TickWork\n"
    names = imported_modules(PKG / "engine" / "tick.py", source)
    assert names == ["asyncio", "agent.scheduler.engine.execution", "agent.scheduler.engine.tick"]


def test_every_engine_module_is_small_enough_to_read_in_one_sitting() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PKG / "engine").glob("*.py")}
    assert {"loop.py", "tick.py", "execution.py", "reconciliation.py", "breakers.py", "feed.py"} <= set(sizes)
    assert {name: n for name, n in sizes.items() if n > ENGINE_MODULE_LINES} == {}


def test_the_engine_lives_only_in_its_package() -> None:
    from agent.scheduler import engine

    assert not [n for n in ("schedule_engine.py", "change_feed.py", "execution.py") if (PKG / n).exists()]
    assert sorted(engine.__all__) == sorted(
        [
            "ALERT_SWEEP",
            "BATCH_AHEAD",
            "CHECKPOINT_WAIT_SECONDS",
            "CUT_GRACE_SECONDS",
            "DELIVERY_ON_STOP_SECONDS",
            "HEARTBEAT_SECONDS",
            "LEASE_SECONDS",
            "PREPARE_AHEAD",
            "RECONCILE_TASK",
            "ScheduleEngine",
            "default_worker_id",
        ]
    )
    assert agent.scheduler.ScheduleEngine is engine.ScheduleEngine


#: The store's rooms, and the longest any of them may grow.
STORE_ROOMS = {
    "connection.py",
    "rows.py",
    "schedules.py",
    "runs.py",
    "outbox.py",
    "proposals.py",
    "state.py",
    "events.py",
}
STORE_MODULE_LINES = 900


def test_the_store_lives_only_in_its_package_one_room_per_concern() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PKG / "store").glob("*.py")}
    assert not (PKG / "schedule_store.py").exists()
    assert set(sizes) >= STORE_ROOMS
    assert {name: n for name, n in sizes.items() if n > STORE_MODULE_LINES} == {}


def test_the_engine_names_the_store_only_by_what_it_needs() -> None:
    from agent.scheduler.store import EngineStore, ScheduleStore

    # Every method of the narrow interface is the store's, with the same signature.
    needed = [n for n, v in vars(EngineStore).items() if callable(v) and not n.startswith("_")]
    assert len(needed) >= 30
    differs = {
        n: (str(inspect.signature(getattr(EngineStore, n))), str(inspect.signature(getattr(ScheduleStore, n))))
        for n in needed
        if str(inspect.signature(getattr(EngineStore, n))) != str(inspect.signature(getattr(ScheduleStore, n)))
    }
    assert differs == {}
    # And the engine's rooms are written against it, never against the whole store.
    wide = [p.name for p in (PKG / "engine").glob("*.py") if _imports_whole_store(p)]
    assert wide == []


def _imports_whole_store(path: Path) -> bool:
    return any(
        isinstance(node, ast.ImportFrom) and any(a.name == "ScheduleStore" for a in node.names)
        for node in ast.walk(ast.parse(path.read_text()))
    )
