"""Local housekeeping jobs: heartbeat, temp cleanup, log rotation, disk space check, database maintenance.

Each is a plain (sync) function run in a thread by the engine; it does its work on this machine and
returns a line saying what it did. Time comes from the store's clock; settings from the worker's Settings,
read at each run (see :mod:`jobs.config`).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent.scheduler.settings import Settings
from agent.scheduler.store import ScheduleStore
from agent.scheduler.tasks import RunContext

from . import config, store_queries
from .supabase import push_heartbeat

#: Files in the download directory older than this are deleted by temp cleanup.
TEMP_MAX_AGE = timedelta(hours=24)
#: A non-empty log whose last rotation is at least this old is rotated: daily, with slack for a late run.
DAILY_ROTATION_AFTER = timedelta(hours=20)
#: engine_state key prefix of the heartbeat rows; the key is ``heartbeat:<worker id>``.
HEARTBEAT_STATE_PREFIX = "heartbeat:"
#: engine_state key remembering whether the disk was low at the last check (alerts go out on a change).
DISK_STATE = "jobs.disk_space"
#: How many paths a failed cleanup names in its error.
ERRORS_SHOWN = 5


class CleanupError(OSError):
    """Some files could not be removed; the others were. The message names the first few and why."""


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover - the loop always returns


@dataclass
class LocalJobs:
    """The local jobs of one worker, bound to its store (for state, alerts and the clock) and its id."""

    store: ScheduleStore
    worker_id: str
    settings: Settings | None = None
    """The worker's settings; None: the variables each job needs, read at each run."""

    def _now(self) -> datetime:
        return self.store.clock.now()

    # ------------------------------------------------------------------ heartbeat

    def heartbeat(self, ctx: RunContext) -> str:
        """Write this worker's heartbeat row to engine_state and, when SUPABASE_DB_URL is set, to Supabase."""
        now = self._now()
        system: dict[str, Any] = {"pid": os.getpid(), "platform": platform.platform()}
        if hasattr(os, "getloadavg"):
            system["load_1m"] = round(os.getloadavg()[0], 2)
        hostname, os_version, python_version = socket.gethostname(), platform.platform(), platform.python_version()
        row = {
            "worker_id": self.worker_id,
            "hostname": hostname,
            "os_version": os_version,
            "python_version": python_version,
            "status": "online",
            "last_heartbeat": now.isoformat(),
            "intended_run_at": ctx.intended_run_at.isoformat(),
            "system_info": system,
        }
        self.store.put_state(HEARTBEAT_STATE_PREFIX + self.worker_id, row)
        url = config.current(self.settings, "SUPABASE_DB_URL").supabase_db_url
        if url is None:
            return f"heartbeat of {self.worker_id} recorded in engine_state (SUPABASE_DB_URL not set: no Supabase row)"
        push_heartbeat(
            url,
            worker_id=self.worker_id,
            hostname=hostname,
            os_version=os_version,
            python_version=python_version,
            at=now,
            system_info=system,
        )
        return f"heartbeat of {self.worker_id} recorded in engine_state and Supabase actp_worker_heartbeats"

    # ------------------------------------------------------------------ temp cleanup

    def temp_cleanup(self, ctx: RunContext) -> str:
        """Delete files older than 24 h (and then-empty directories) under ACTP_DOWNLOAD_DIR."""
        root = config.current(self.settings, "ACTP_DOWNLOAD_DIR").download_dir
        _refuse_broad_directory("ACTP_DOWNLOAD_DIR", root)
        if not root.is_dir():
            return f"{root} does not exist: nothing to clean"
        cutoff = (self._now() - TEMP_MAX_AGE).timestamp()
        deleted = kept = freed = 0
        errors: list[str] = []
        for folder, dirs, files in os.walk(root, topdown=False):
            for name in files:
                target = Path(folder, name)
                try:
                    info = target.lstat()
                    if info.st_mtime >= cutoff:
                        kept += 1
                        continue
                    target.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    errors.append(f"{target}: {exc.strerror or exc}")
                    continue
                deleted += 1
                freed += info.st_size
            for name in dirs:
                sub = Path(folder, name)
                try:
                    if not sub.is_symlink() and sub.lstat().st_mtime < cutoff and not any(sub.iterdir()):
                        sub.rmdir()
                except OSError:
                    continue  # not empty after all, or gone: it is looked at again next time
        done = f"deleted {deleted} file(s) ({_size(freed)}) older than 24 h from {root}; kept {kept}"
        if errors:
            shown = "; ".join(errors[:ERRORS_SHOWN]) + (" ..." if len(errors) > ERRORS_SHOWN else "")
            raise CleanupError(f"{done}; could not delete {len(errors)}: {shown}")
        return done

    # ------------------------------------------------------------------ log rotation

    def log_rotation(self, ctx: RunContext) -> str:
        """Rotate each non-empty ``*.log`` in ACTP_LOG_DIR that is over ACTP_LOG_MAX_BYTES or not rotated today.

        ``app.log`` is copied to ``app.log.1`` (older copies shift up, beyond ACTP_LOG_KEEP they are
        deleted) and then truncated in place (copy-truncate), so a process that keeps the file open
        (launchd, a shell redirect) goes on writing to ``app.log``.
        """
        settings = config.current(self.settings, "ACTP_LOG_DIR", "ACTP_LOG_MAX_BYTES", "ACTP_LOG_KEEP")
        log_dir, max_bytes, keep = settings.log_dir, settings.log_max_bytes, settings.log_keep
        if not log_dir.is_dir():
            return f"{log_dir} does not exist: nothing to rotate"
        now = self._now()
        logs = sorted(p for p in log_dir.glob("*.log") if p.is_file() and not p.is_symlink())
        rotated: list[str] = []
        for log in logs:
            size = log.stat().st_size
            if size == 0:
                continue
            newest = log.with_name(f"{log.name}.1")
            last = datetime.fromtimestamp(newest.stat().st_mtime, now.tzinfo) if newest.exists() else None
            if size >= max_bytes:
                why = f"{_size(size)} >= {_size(max_bytes)}"
            elif last is None or now - last >= DAILY_ROTATION_AFTER:
                why = "daily"
            else:
                continue
            _rotate(log, keep=keep, at=now)
            rotated.append(f"{log.name} ({why})")
        listed = ": " + ", ".join(rotated) if rotated else ""
        return f"rotated {len(rotated)} of {len(logs)} log file(s) in {log_dir}, keeping {keep}{listed}"

    # ------------------------------------------------------------------ disk space

    def disk_space_check(self, ctx: RunContext) -> str:
        """Measure free space where ACTP_DATA_DIR lives; below ACTP_DISK_MIN_FREE_MB queue a ``disk_space`` alert.

        The alert goes out when the disk becomes low, not again at every check while it stays low.
        """
        settings = config.current(self.settings, "ACTP_DATA_DIR", "ACTP_DISK_MIN_FREE_MB")
        data_dir, minimum = settings.data_dir, settings.disk_min_free_mb
        probe = data_dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        free_mb = usage.free / 2**20
        low = free_mb < minimum
        previous = self.store.get_state(DISK_STATE) or {}
        now = self._now()
        self.store.put_state(DISK_STATE, {"low": low, "free_mb": round(free_mb, 1), "checked_at": now.isoformat()})
        measured = f"{free_mb:.0f} MB free of {usage.total / 2**20:.0f} MB at {probe} (minimum {minimum:g} MB)"
        if not low:
            return f"ok: {measured}"
        if previous.get("low"):
            return f"still low: {measured} (alerted when it became low)"
        self.store.add_alert(
            "disk_space",
            f"Disk space low on {socket.gethostname()}: {measured}",
            {
                "path": str(probe),
                "free_mb": round(free_mb, 1),
                "total_mb": round(usage.total / 2**20, 1),
                "minimum_mb": minimum,
                "worker_id": self.worker_id,
            },
        )
        return f"LOW, alert queued: {measured}"

    # ------------------------------------------------------------------ database maintenance

    def db_maintenance(self, ctx: RunContext) -> str:
        """Delete finished runs and consumed events older than ACTP_RUN_RETENTION_DAYS (default 30), then
        optimize the database.

        Succeeded, skipped and cancelled runs are pruned; dead-lettered ones stay (they can be
        replayed), and so does the newest run of every schedule. Events still pending stay.
        """
        days = config.current(self.settings, "ACTP_RUN_RETENTION_DAYS").run_retention_days
        before = self._now() - timedelta(days=days)
        pruned = store_queries.prune_runs(self.store, before)
        events = self.store.purge_events(consumed_before=before)
        optimized = store_queries.optimize(self.store)
        return (
            f"pruned {pruned} finished run(s) and {events} consumed event(s) last changed before "
            f"{before.isoformat()} ({days} days); {optimized}"
        )


def _refuse_broad_directory(variable: str, root: Path) -> None:
    """A cleanup root of ``/``, the home directory or one of its parents is a configuration mistake."""
    resolved = root.resolve()
    home = Path.home().resolve()
    if resolved in (resolved.parent, home) or resolved in home.parents:
        raise config.refused(variable, str(root), "a directory of its own, not / or the home directory")


def _rotate(log: Path, *, keep: int, at: datetime) -> None:
    """``log`` -> ``log.1`` (copy, stamped ``at``), older copies shifted up to ``keep``, then ``log`` truncated."""
    for old in log.parent.glob(f"{log.name}.*"):
        suffix = old.name[len(log.name) + 1 :]
        if suffix.isdigit() and int(suffix) >= keep:
            old.unlink()
    for n in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{n}")
        if older.exists():
            older.replace(log.with_name(f"{log.name}.{n + 1}"))
    newest = log.with_name(f"{log.name}.1")
    shutil.copyfile(log, newest)
    stamp = at.timestamp()
    os.utime(newest, (stamp, stamp))
    with log.open("r+b") as handle:
        handle.truncate(0)
