"""The worker as a service: a launchd agent (macOS) or a systemd user unit (Linux), rendered for this machine.

The templates are package data (``agent/scheduler/deploy/``: ``com.actp.worker.plist``,
``actp-worker.service``); their ``{{PLACEHOLDERS}}`` are filled with what the caller says, all
absolute: the interpreter, the worker script, the working directory, the log file and the
worker's arguments (``--db``, ``--tasks``). Nothing here knows where the code was checked out.
The service runs in its working directory, reads its ``.env`` and imports ``--tasks`` modules from
it. Installing writes the file where the service manager looks for it and returns the one command
that loads it; nothing here runs that command.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

from .errors import SchedulerError

#: The package directory that holds the templates (package data).
TEMPLATES_PACKAGE = "agent.scheduler"
TEMPLATES_DIR = "deploy"
#: The worker script the service runs, in its working directory, unless another is named.
WORKER_SCRIPT = "worker.py"
#: launchd's label of the agent (and the plist's file name without .plist).
LAUNCHD_LABEL = "com.actp.worker"
#: systemd's unit name.
SYSTEMD_UNIT = "actp-worker"
#: Seconds the service manager waits after SIGTERM before it kills the worker. The drain takes at
#: most: shutdown schedules (shutdown_timeout, 30 s by default) + running runs (their shutdown_timeout,
#: 30 s; checkpoint_and_stop waits 10 s of it) + the last alert delivery (5 s). Schedules with a longer
#: shutdown_timeout need a longer stop timeout.
STOP_TIMEOUT_SECONDS = 90
#: The worker's log file under launchd (in ACTP_LOG_DIR, so that log rotation rotates it).
LOG_FILE_NAME = "worker.log"
#: The log directory when ACTP_LOG_DIR is not set.
DEFAULT_LOG_DIR = "~/.actp/logs"
#: Systems this module knows, by ``--system`` value.
SYSTEMS = ("macos", "linux")

_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
#: Characters a path may not contain in a systemd unit (they would need escapes systemd reads differently).
_UNSAFE_IN_UNIT = set('"\\$\n\r')


class ServiceError(SchedulerError):
    """The service file cannot be rendered or installed as asked; the message names what to change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """What differs between machines: the working directory, the interpreter, the worker, the home and the logs."""

    workdir: Path
    """The service's working directory: its ``.env`` and its ``--tasks`` modules are found here."""
    python: Path
    worker: Path
    """The worker script the interpreter runs."""
    home: Path
    log_file: Path
    db: str | None = None
    """A SQLite path (made absolute) or a database URL passed to the worker as ``--db``; None: its default."""
    tasks: tuple[str, ...] = ()
    """Task modules passed to the worker as ``--tasks``, each a dotted module name."""

    @property
    def arguments(self) -> list[str]:
        """The worker's arguments after its script."""
        args = [] if self.db is None else ["--db", self.db]
        for module in self.tasks:
            args += ["--tasks", module]
        return args


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceFile:
    """A rendered service file, where it goes, and the commands that load or reload it."""

    system: str
    """macos or linux."""
    manager: str
    """launchd or systemd."""
    path: Path
    content: str
    load_command: str
    reload_command: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Installed:
    """What ``install`` did."""

    service: ServiceFile
    action: str
    """created, replaced or unchanged."""


def current_system(name: str | None = None) -> str:
    """``macos`` or ``linux`` for this machine (``platform.system()``, or ``name``); ServiceError elsewhere."""
    found = name if name is not None else platform.system()
    system = {"Darwin": "macos", "Linux": "linux"}.get(found, found.lower())
    if system not in SYSTEMS:
        raise ServiceError(f"no service file for {found!r}: pass --system with one of {', '.join(SYSTEMS)}")
    return system


def database_argument(db: str | None, *, cwd: Path | None = None) -> str | None:
    """``db`` as the worker should get it from a service: URLs as given, paths absolute (``~`` expanded)."""
    if db is None or not db.strip():
        return None
    text = db.strip()
    if "://" in text:
        return text
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else (cwd or Path.cwd()) / path)


def placement(
    *,
    db: str | None = None,
    tasks: Sequence[str] = (),
    workdir: Path | None = None,
    python: Path | None = None,
    worker: Path | None = None,
    environ: Mapping[str, str],
    home: Path | None = None,
) -> Placement:
    """A placement from what the caller says, made absolute; ServiceError naming the option that is wrong.

    ``workdir`` defaults to the current directory, ``python`` to this interpreter, ``worker`` to
    ``worker.py`` in ``workdir``; the log file is in ACTP_LOG_DIR (of ``environ``, the variables the
    caller read: HOME and ACTP_LOG_DIR) or ~/.actp/logs.
    """
    home_dir = home or Path(environ.get("HOME") or Path.home())
    log_dir = environ.get("ACTP_LOG_DIR", "").strip() or DEFAULT_LOG_DIR
    log_path = Path(log_dir.replace("~", str(home_dir), 1) if log_dir.startswith("~") else log_dir)
    cwd = Path.cwd()
    where = _absolute(workdir or cwd, cwd)
    if not where.is_dir():
        raise ServiceError(f"--workdir {where}: not a directory")
    interpreter = _absolute(python, cwd) if python is not None else Path(sys.executable).absolute()
    if not (interpreter.is_file() and os.access(interpreter, os.X_OK)):
        raise ServiceError(f"--python {interpreter}: not an executable file")
    script = _absolute(worker, cwd) if worker is not None else where / WORKER_SCRIPT
    if not script.is_file():
        hint = "" if worker is not None else " in the working directory; pass --worker PATH or --workdir DIR"
        raise ServiceError(f"--worker {script}: no such file{hint}")
    return Placement(
        workdir=where,
        python=interpreter,
        worker=script,
        home=home_dir,
        log_file=log_path / LOG_FILE_NAME,
        db=database_argument(db),
        tasks=tuple(tasks),
    )


def _absolute(path: Path, cwd: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else cwd / path


def _unit_path(path: Path) -> str:
    text = str(path)
    if _UNSAFE_IN_UNIT & set(text):
        raise ServiceError(f"path {text!r} contains a quote, backslash, $ or line break: a systemd unit cannot hold it")
    return text.replace("%", "%%")


def _unit_argument(text: str) -> str:
    """One ExecStart argument inside double quotes: systemd's escapes for backslash, quote, % and $."""
    if "\n" in text or "\r" in text:
        raise ServiceError("a service argument cannot contain a line break")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _values(system: str, where: Placement) -> dict[str, str]:
    if system == "macos":
        return {
            "PYTHON": xml_escape(str(where.python)),
            "WORKER": xml_escape(str(where.worker)),
            "WORKDIR": xml_escape(str(where.workdir)),
            "LOG_FILE": xml_escape(str(where.log_file)),
            "ARGS": "".join(f"\n        <string>{xml_escape(a)}</string>" for a in where.arguments),
        }
    return {
        "PYTHON": _unit_path(where.python),
        "WORKER": _unit_path(where.worker),
        "WORKDIR": _unit_path(where.workdir),
        "ARGS": "".join(f" {_unit_argument(a)}" for a in where.arguments),
    }


def template_text(system: str) -> str:
    """The template for ``system``, read from the package's data."""
    name = f"{LAUNCHD_LABEL}.plist" if system == "macos" else f"{SYSTEMD_UNIT}.service"
    return resources.files(TEMPLATES_PACKAGE).joinpath(TEMPLATES_DIR, name).read_text(encoding="utf-8")


def render(system: str, where: Placement, *, template: str | None = None) -> str:
    """The service file for ``system`` (macos or linux) filled with ``where``'s paths.

    Every ``{{NAME}}`` of the template must have a value: an unknown one raises ServiceError.
    """
    if system not in SYSTEMS:
        raise ServiceError(f"system {system!r}: one of {', '.join(SYSTEMS)}")
    text = template if template is not None else template_text(system)
    values = _values(system, where)
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
    if unknown:
        raise ServiceError(f"template for {system} has placeholders without a value: {', '.join(unknown)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def destination(system: str, *, home: Path, environ: Mapping[str, str]) -> Path:
    """Where the service manager looks: ``~/Library/LaunchAgents/`` or the systemd user unit directory
    (under XDG_CONFIG_HOME of ``environ``, the variables the caller read, when it is set)."""
    if system == "macos":
        return home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    config_home = environ.get("XDG_CONFIG_HOME", "").strip()
    base = Path(config_home) if config_home and Path(config_home).is_absolute() else home / ".config"
    return base / "systemd" / "user" / f"{SYSTEMD_UNIT}.service"


def service_file(system: str, where: Placement, *, environ: Mapping[str, str]) -> ServiceFile:
    """The rendered file for ``system``, its destination and its load command."""
    content = render(system, where)
    path = destination(system, home=where.home, environ=environ)
    if system == "macos":
        quoted = shlex.quote(str(path))
        return ServiceFile(
            system=system,
            manager="launchd",
            path=path,
            content=content,
            load_command=f"launchctl load -w {quoted}",
            reload_command=f"launchctl unload {quoted} && launchctl load -w {quoted}",
            notes=(f"logs: {where.log_file}",),
        )
    return ServiceFile(
        system=system,
        manager="systemd",
        path=path,
        content=content,
        load_command=f"systemctl --user daemon-reload && systemctl --user enable --now {SYSTEMD_UNIT}",
        reload_command=f"systemctl --user daemon-reload && systemctl --user restart {SYSTEMD_UNIT}",
        notes=(
            f"logs: journalctl --user -u {SYSTEMD_UNIT} -f",
            "to keep it running while you are logged out: loginctl enable-linger $USER",
        ),
    )


def install(service: ServiceFile, where: Placement) -> Installed:
    """Write ``service`` to its destination (creating directories, and the launchd log directory)."""
    action = "created"
    if service.path.exists():
        action = "unchanged" if service.path.read_text(encoding="utf-8") == service.content else "replaced"
    try:
        service.path.parent.mkdir(parents=True, exist_ok=True)
        if service.manager == "launchd":
            where.log_file.parent.mkdir(parents=True, exist_ok=True)  # launchd does not create it
        if action != "unchanged":
            service.path.write_text(service.content, encoding="utf-8")
    except OSError as exc:
        raise ServiceError(f"cannot write {service.path}: {exc}") from exc
    return Installed(service=service, action=action)
