"""The real worker as a subprocess, for crash and signal tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: How often the tests look at the database or the process while waiting for something.
POLL_SECONDS = 0.1


class WorkerProcess:
    """``python worker.py --db DB --tasks tests.fixtures.sample_tasks --no-legacy`` with its own log file."""

    def __init__(
        self, db: Path | str, log: Path, env: dict[str, str], *extra: str, worker_id: str = "system-test"
    ) -> None:
        self.db, self.log_path, self.env, self.extra, self.worker_id = str(db), log, env, extra, worker_id
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        args = [sys.executable, str(ROOT / "worker.py"), "--db", self.db, "--tasks", "tests.fixtures.sample_tasks"]
        args += ["--no-legacy", "--tick", "1", "--worker-id", self.worker_id, *self.extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        return self

    def signal(self, signum: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
