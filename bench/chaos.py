"""Chaos at full size: the scenarios of tests/system/test_scheduler_chaos.py on real worker processes.

python bench/chaos.py [scenario ...] [--size N] [--kills K] [--outage SECONDS] [--seed S]

Scenarios: storm-sqlite (N=100 schedules, K=20 kills), storm-postgres (N=100, K=20, 3 workers),
postgres-outage (N=30, 20 s), disk-full (N=30, 15 s full), db-deleted, sigterm-sync, loop-blocker;
default: all. PostgreSQL scenarios need ACTP_TEST_POSTGRES_URL (and ACTP_TEST_PG_BIN for the outage):
eval "$(bash scripts/test-postgres.sh start)". One line per figure; counts that must be 0 say so.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from _pytest.outcomes import Skipped
from common import report

from tests.system.test_scheduler_chaos import (
    Result,
    database_deleted,
    disk_full,
    fresh_postgres_database,
    kill_storm,
    loop_blocker,
    postgres_outage,
    sigterm_sync,
)

SCENARIOS = [
    "storm-sqlite",
    "storm-postgres",
    "postgres-outage",
    "disk-full",
    "db-deleted",
    "sigterm-sync",
    "loop-blocker",
]


def tmp(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"actp-chaos-{name}-"))


def number(value: Any) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | dict):
        return float(len(value))
    return float("nan")


def show(prefix: str, result: Result) -> None:
    size = ", ".join(f"{k}={v}" for k, v in result.size.items())
    report(f"{prefix}.elapsed", result.elapsed, "s", size)
    report(f"{prefix}.own_exits", len(result.own_exits), "exits", "must be 0; " + "; ".join(result.own_exits)[:300])
    bad_stops = {k: v for k, v in result.stop_codes.items() if v != 0}
    report(f"{prefix}.unclean_stops", len(bad_stops), "workers", f"must be 0 {bad_stops or ''}".rstrip())
    if result.audit is not None:
        a = result.audit
        report(f"{prefix}.occurrences", a.occurrences, "occ", f"{a.rows} rows {a.statuses}")
        for name, value in a.bad().items():
            report(f"{prefix}.{name}", value, "count", "must be 0")
        report(f"{prefix}.gaps", a.gaps, "occ", "occurrences with no row (part of lost)")
        report(f"{prefix}.began_then_skipped", a.began_then_skipped, "runs", "part of lost")
        report(f"{prefix}.ended_unrecorded", a.ended_unrecorded, "runs", "part of ran_twice")
        report(f"{prefix}.cut", a.cut, "attempts", "began and cut (kill, outage, shutdown)")
        report(f"{prefix}.re_executed", a.re_executed, "runs", "extra executions")
        report(f"{prefix}.re_executed_not_at_kill", a.re_executed_not_at_kill, "runs", "must be 0 in a kill storm")
        if a.examples:
            print(f"# {prefix} examples: " + " | ".join(a.examples[:6]), flush=True)
    for name, value in result.figures.items():
        note = ""
        if isinstance(value, list | dict):
            note = str(value)[:300]
        elif isinstance(value, str):
            note = value[:300]
        unit = "s" if name.endswith("_s") else "count"
        report(f"{prefix}.{name}", number(value), unit, note)


def run(scenario: str, args: argparse.Namespace) -> Result:
    if scenario == "storm-sqlite":
        where = tmp("storm-sqlite")
        return kill_storm(
            where, f"sqlite:///{where / 'chaos.db'}", schedules=args.size or 100, kills=args.kills or 20, seed=args.seed
        )
    if scenario == "storm-postgres":
        with fresh_postgres_database() as url:
            return kill_storm(
                tmp("storm-postgres"),
                url,
                schedules=args.size or 100,
                kills=args.kills or 20,
                workers=3,
                lease=3.0,
                up=(1.0, 4.0),
                down=(0.5, 4.0),
                seed=args.seed,
            )
    if scenario == "postgres-outage":
        with fresh_postgres_database() as url:
            return postgres_outage(tmp("pg-outage"), url, schedules=args.size or 30, outage=args.outage or 20.0)
    if scenario == "disk-full":
        return disk_full(tmp("disk-full"), schedules=args.size or 30, full_seconds=args.outage or 15.0)
    if scenario == "db-deleted":
        return database_deleted(tmp("db-deleted"), schedules=args.size or 20)
    if scenario == "sigterm-sync":
        return sigterm_sync(tmp("sigterm-sync"))
    if scenario == "loop-blocker":
        result = loop_blocker(tmp("loop-blocker"), block=args.outage or 6.0, timeout=1.0)
        result.figures["failed_with_timeout"] = (result.figures["status"], result.figures["reason"]) == (
            "failed",
            "timeout",
        )
        return result
    raise SystemExit(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--size", type=int, default=0, help="schedules (default per scenario)")
    parser.add_argument("--kills", type=int, default=0, help="kill -9 count of the storms (default 20)")
    parser.add_argument("--outage", type=float, default=0.0, help="seconds of outage / disk full / loop block")
    parser.add_argument("--seed", type=int, default=20270315)
    args = parser.parse_args(argv)
    chosen: list[str] = args.scenario or SCENARIOS
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    for scenario in chosen:
        prefix = "chaos." + scenario.replace("-", "_")
        try:
            result = run(scenario, args)
        except Skipped as exc:
            report(f"{prefix}.skipped", 1, "flag", str(exc.msg))
            continue
        show(prefix, result)


if __name__ == "__main__":
    main()
