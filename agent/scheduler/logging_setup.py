"""Logging for the worker and the CLI: readable lines or JSON lines, transitions' chatter quieted, secrets redacted.

``configure_logging(level, fmt)`` installs one handler on the root logger (calling it again
replaces it). ``fmt="human"`` writes ``time LEVEL logger: message [key=value ...]``; ``fmt="json"``
writes one JSON object per line with ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
every ``extra`` field the call passed (``schedule``, ``run_id``, ``reason``...) and ``exc`` when an
exception is attached. ``configure_from(settings)`` takes level, format and the secrets to redact from
the loaded ``Settings``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .settings import Settings

#: The line of the human format (``extra`` fields are appended as ``[key=value ...]``).
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The library whose per-transition INFO lines are dropped below this level.
QUIET_LOGGERS = {"transitions": logging.WARNING}
#: What replaces a secret found in a log line.
REDACTED = "***"
#: Secrets shorter than this are not redacted (they would match ordinary words).
REDACT_MIN_LENGTH = 6

#: Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
#: Marks the handler this module installed, so that a second call replaces it.
_MARK = "_actp_logging"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call added with ``extra={...}``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES and not k.startswith("_")}


class QuietLibraries(logging.Filter):
    """Drops records of chatty libraries (``transitions``) below their level in QUIET_LOGGERS."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, level in QUIET_LOGGERS.items():
            if (record.name == name or record.name.startswith(name + ".")) and record.levelno < level:
                return False
        return True


class RedactSecrets(logging.Filter):
    """Replaces every known secret in a record's message and traceback with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= REDACT_MIN_LENGTH}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed call: the formatter reports it
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        for key, value in extra_fields(record).items():
            if isinstance(value, str):
                setattr(record, key, self._clean(value))
        return True


class HumanFormatter(logging.Formatter):
    """``2027-03-13 12:00:00,123 INFO agent.scheduler.engine.loop: message [schedule=poll run_id=r1]``."""

    def __init__(self) -> None:
        super().__init__(HUMAN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return text
        head, newline, rest = text.partition("\n")
        shown = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{head} [{shown}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, and exc/stack when present."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            data.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"log level {level!r}: one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return number


def configure_logging(
    level: str | int = "INFO", fmt: str = "human", *, stream: TextIO | None = None, secrets: Iterable[str] = ()
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``fmt`` (human or json).

    Replaces the handler an earlier call installed (others are left alone). ``transitions`` logs
    only warnings and errors. ``secrets`` (``Settings.secret_values()``) are redacted from every line.
    Returns the handler.
    """
    if fmt not in ("human", "json"):
        raise ValueError(f"log format {fmt!r}: one of human, json")
    number = _level(level)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler.addFilter(QuietLibraries())
    handler.addFilter(RedactSecrets(secrets))
    root.addHandler(handler)
    root.setLevel(number)
    for name, quiet in QUIET_LOGGERS.items():
        # Also on the logger itself: its INFO records are then not even built (one per transition).
        logging.getLogger(name).setLevel(max(quiet, number))
    return handler


def configure_from(
    config: Settings, *, level: str | int | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """``configure_logging`` with ACTP_LOG_LEVEL (or ``level``, a command-line override), ACTP_LOG_FORMAT and
    the configuration's secrets."""
    return configure_logging(
        config.log_level if level is None else level, config.log_format, stream=stream, secrets=config.secret_values()
    )
