"""Shared helpers of the benchmarks: temporary databases, timing, medians, one printed line per figure."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tmp_db(name: str) -> Path:
    """A fresh SQLite path in a new temporary directory."""
    return Path(tempfile.mkdtemp(prefix="actp-bench-")) / f"{name}.db"


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def report(name: str, value: float, unit: str, note: str = "") -> None:
    """One line per figure: ``name value unit [note]``."""
    print(f"{name:<48} {value:12.3f} {unit:<6} {note}".rstrip(), flush=True)


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def size_from_argv(default: int) -> int:
    """``python bench/x.py [N]``: N overrides the size (the smoke test passes a tiny one)."""
    return int(sys.argv[1]) if len(sys.argv) > 1 else default
