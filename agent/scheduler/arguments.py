"""Argument checking shared by ``python -m agent.scheduler`` and ``worker.py``: bounded types, one-line errors.

Every option an operator types is checked by an argparse type from here, so a bad value ends the
program at parse time with one line on stderr (``error: ...``) naming the option and what it
allows, exit status 2, before any database is opened.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .limits import text_help, text_problem

#: Exit status for bad arguments (argparse's, and the CLI's EXIT_USAGE).
EXIT_ARGUMENTS = 2
#: A bad value is echoed in an error message up to this many characters, then cut with "...".
SHOWN_CHARS = 60
#: Longest ``--db`` path or URL, in characters (PATH_MAX on Linux).
DB_CHARS = 4096
#: Longest module name ``--tasks`` takes, in characters.
MODULE_CHARS = 256

_WHOLE = re.compile(r"[+-]?\d+")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
#: A quoted value as argparse and the types echo it: its quote opens at the start or after a space.
_LONG_QUOTED = re.compile(rf"(?:^|(?<=\s))'([^'\n]{{{SHOWN_CHARS}}})[^'\n]+'")
_LONG_WORD = re.compile(rf"([^'\s]{{{SHOWN_CHARS}}})[^'\s]+")
_IN_MEMORY = frozenset({":memory:", "sqlite://", "sqlite:///", "sqlite:///:memory:"})


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``error: [COMMAND: ]what is wrong``, exit status 2.

    argparse's own messages (an unknown option, a missing argument, a bad choice) keep naming the
    argument and the allowed choices; only the usage block in front of them goes, and a long value
    they quote is cut. ``--help`` is unchanged. Subparsers made by ``add_subparsers`` are of this
    class too; :func:`name_commands` makes their errors start with the command's name.
    """

    root_prog = ""
    """The program's own prog, which a subparser's prog starts with ("" for the program's parser)."""
    json_errors = False
    """Errors as one JSON object, ``{"error": "..."}``, for a command line asked for ``--json``."""

    def error(self, message: str) -> NoReturn:
        text = _LONG_WORD.sub(r"\1...", _LONG_QUOTED.sub(r"'\1...'", " ".join(message.split())))
        command = self.prog.removeprefix(self.root_prog).strip() if self.root_prog else ""
        line = f"{command + ': ' if command else ''}{text}"
        self.exit(EXIT_ARGUMENTS, (json.dumps({"error": line}) if self.json_errors else f"error: {line}") + "\n")


def name_commands(
    parser: argparse.ArgumentParser,
    subparsers: argparse._SubParsersAction[OneLineParser],
    *,
    json_errors: bool = False,
) -> None:
    """Let each subparser's errors start with its command's name rather than the whole program line
    (and, with ``json_errors``, every parser's errors be one JSON object)."""
    if isinstance(parser, OneLineParser):
        parser.json_errors = json_errors
    for command in subparsers.choices.values():
        command.root_prog = parser.prog
        command.json_errors = json_errors


def shown(text: str) -> str:
    """``text`` as an error message quotes it: ``repr``, cut to SHOWN_CHARS with its length when longer."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text)} characters)"


def whole_number(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    """argparse type: a whole number from ``low`` to ``high`` (``unit``, such as "days", for the message)."""
    allowed = f"a whole number{' of ' + unit if unit else ''} from {low} to {high}"

    def parse(text: str) -> int:
        digits = text.strip()
        # A number with more digits than ``high`` is out of range: no need to convert it (or
        # to meet Python's 4300-digit limit on int()).
        if not _WHOLE.fullmatch(digits) or len(digits.lstrip("+-").lstrip("0")) > len(str(high)):
            raise argparse.ArgumentTypeError(f"{shown(text)}: must be {allowed}")
        value = int(digits)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{shown(text)}: must be {allowed}")
        return value

    parse.__name__ = "whole number"
    return parse


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """argparse type: a number of seconds from ``low`` to ``high`` (decimals allowed)."""
    allowed = f"a number of seconds from {low:g} to {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)}: must be {allowed}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{shown(text)}: must be {allowed}")
        return value

    parse.__name__ = "seconds"
    return parse


def text_up_to(max_chars: int, *, empty: bool = False, single_line: bool = False) -> Callable[[str], str]:
    """argparse type: text of at most ``max_chars`` characters that the stores hold; not empty unless
    ``empty``; with ``single_line``, no control character at all (ids that go into log lines)."""

    def parse(text: str) -> str:
        if not empty and not text.strip():
            raise argparse.ArgumentTypeError(f"{shown(text)}: must not be empty")
        if len(text) > max_chars:
            raise argparse.ArgumentTypeError(f"{shown(text)}: at most {max_chars} characters")
        problem = text_problem(text, single_line=single_line)
        if problem is not None:  # bytes that are not UTF-8 arrive as lone surrogates
            allowed = text_help(max_chars, single_line=single_line)
            raise argparse.ArgumentTypeError(f"{shown(text)}: found {problem}; {allowed}")
        return text

    parse.__name__ = "text"
    return parse


def module_name(text: str) -> str:
    """argparse type: an importable module's dotted name, such as ``jobs.sample_tasks``."""
    name = text.strip()
    if len(name) > MODULE_CHARS or not _MODULE.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{shown(text)}: must be a module's dotted name such as jobs.tasks (at most {MODULE_CHARS} characters)"
        )
    return name


def database(text: str) -> str:
    """argparse type: a SQLite file path or a SQLAlchemy URL that can hold the schedules.

    Refused: an empty value, an in-memory SQLite database (gone when the program ends, never
    shared with a worker) and a directory.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{shown(text)}: must be a SQLite file path or a database URL")
    if len(text) > DB_CHARS:
        raise argparse.ArgumentTypeError(f"{shown(text)}: at most {DB_CHARS} characters")
    problem = text_problem(text, single_line=True) or ("an encoded NUL (%00)" if "%00" in text else None)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{shown(text)}: found {problem}; a path or URL is one line of text")
    if text.strip() in _IN_MEMORY or "mode=memory" in text or ":memory:" in text:
        raise argparse.ArgumentTypeError(
            f"{shown(text)}: an in-memory database is lost when the program ends; give a SQLite file path or a URL"
        )
    path = text.split(":///", 1)[1] if text.startswith("sqlite:///") else None if "://" in text else text
    if path is not None and path.startswith("file:"):
        raise argparse.ArgumentTypeError(f"{shown(text)}: give a plain SQLite file path (file: URIs are not taken)")
    if path is not None and "?" not in path:
        try:
            is_directory = Path(path).expanduser().is_dir()
        except RuntimeError:  # ~user of no such user
            raise argparse.ArgumentTypeError(f"{shown(text)}: no such user's home directory") from None
        except (OSError, ValueError):
            is_directory = False  # the store says what is wrong with it
        if is_directory:
            raise argparse.ArgumentTypeError(f"{shown(text)}: is a directory; give a SQLite file path in it")
    return text


def database_from_environment(value: str, variable: str) -> str:
    """``value`` of ``variable`` (``ACTP_SCHEDULER_DB``) checked as ``--db`` is; ValueError names the variable."""
    try:
        return database(value)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{variable}: {exc}") from None
