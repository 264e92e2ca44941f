"""Every benchmark runs at a tiny size, so none can rot. Figures are not asserted: they are measured by hand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: ``name value unit [note]``
LINE = re.compile(r"^[a-z_.0-9]+\s+(-?[0-9]+\.[0-9]+|nan)\s+\S+")


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("burst.py", ["40", "1"]),
        ("steady.py", ["10", "1"]),
        ("idle.py", ["50"]),
        ("recovery.py", ["20"]),
        ("memory.py", ["300"]),
        ("hiccups.py", ["0.2"]),
    ],
)
def test_benchmark_runs_and_prints_one_line_per_figure(script: str, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "ACTP_BENCH_QUICK": "1"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines and all(LINE.match(line) for line in lines), done.stdout
