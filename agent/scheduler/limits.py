"""Every bound on what a schedule may hold, and the checks that enforce them when a value is built.

The definition, the proposal format, the triggers and the store's own arguments use these checks,
so a value that passes is one both stores (SQLite and PostgreSQL) hold and give back unchanged, and
one the engine can compute with. Each check raises :class:`InvalidSchedule` (:class:`TooLong` for
a length or size) naming the field and what is allowed; nothing here touches a database.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from .errors import InvalidSchedule, TooLong, short

# --- names and ids ------------------------------------------------------------------------------

#: Longest schedule, task or agent name, in characters: the width of the store's name columns.
NAME_CHARS = 128
#: Longest id (a schedule's or a proposal's), in characters: the width of the store's id columns.
ID_CHARS = 64
#: Names and ids, matched whole: ASCII letters, digits and ``_ . : -``, starting with a letter or digit.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def name_help(chars: int) -> str:
    """What a name of at most ``chars`` characters allows, in words."""
    return f"1-{chars} characters: ASCII letters, digits and _ . : -, starting with a letter or digit"


ID_HELP = name_help(ID_CHARS)

# --- text ---------------------------------------------------------------------------------------

#: Longest trigger expression, in characters: the width of the store's expression column.
EXPRESSION_CHARS = 256
#: Longest timezone name, in characters: the width of the store's timezone column (IANA names are shorter).
TIMEZONE_CHARS = 64
#: Longest schedule description, in characters: a few paragraphs, not a document.
DESCRIPTION_CHARS = 4096
#: Longest reason (why a schedule is disabled, why a proposal was decided), in characters.
REASON_CHARS = 2000

# --- counts -------------------------------------------------------------------------------------

#: Most retries after a run's first attempt; beyond this a failing run is better dead-lettered.
MAX_RETRIES = 1000
#: Most missed occurrences one catch-up runs; each is a row and a run.
MAX_CATCH_UP_LIMIT = 1000
#: Most consecutive failures before the breaker opens.
MAX_BREAKER_THRESHOLD = 1000
#: Largest stored count (consecutive failures): PostgreSQL's INTEGER is 32 bits.
MAX_STORED_INT = 2**31 - 1

# --- durations ----------------------------------------------------------------------------------

#: Shortest interval (and reconciliation interval): the engine's loop is not a busy loop.
MIN_INTERVAL = timedelta(seconds=1)
#: Longest interval and longest relative delay ("+10d"): about ten years; rarer is a calendar or a delay.
MAX_INTERVAL = timedelta(days=3653)
#: Longest base of the retry backoff: the backoff is capped at one hour anyway (policies/retry.py).
MAX_RETRY_BACKOFF = timedelta(hours=1)
#: Longest run timeout: a week.
MAX_TIMEOUT = timedelta(days=7)
#: Longest grace before a late run counts as missed: a week.
MAX_GRACE = timedelta(days=7)
#: Longest a stopping worker waits for a run to finish: an hour, so a stop ends within about that.
MAX_SHUTDOWN_TIMEOUT = timedelta(hours=1)
#: Longest an open breaker waits before a trial run: a week.
MAX_BREAKER_COOLDOWN = timedelta(days=7)

# --- instants -----------------------------------------------------------------------------------

#: Earliest instant a schedule may hold: the POSIX epoch.
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
#: Latest instant a schedule may hold: the end of year 8999 (UTC). Both stores hold any instant up to
#: 9999, and the thousand years left over keep the engine's sums (an instant plus at most an interval)
#: inside the calendar.
LATEST_INSTANT = datetime(8999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
INSTANT_HELP = "a timezone-aware datetime from 1970-01-01 to 8999-12-31 (UTC)"

# --- params -------------------------------------------------------------------------------------

#: Largest ``params`` object, as compact UTF-8 JSON, in bytes.
MAX_PARAMS_BYTES = 64 * 1024
#: Deepest nesting of objects and lists in ``params`` (the object itself is level 1).
MAX_PARAMS_DEPTH = 32
#: Deepest nesting of any JSON a caller hands in (a registry payload, a stored proposal): a proposal
#: around params at their deepest, with room to spare; far below what a JSON encoder recurses into.
MAX_JSON_DEPTH = 64
#: Integers in params: 64-bit signed, what SQLite's JSON functions and most JSON readers hold exactly.
PARAMS_INT_MIN, PARAMS_INT_MAX = -(2**63), 2**63 - 1
#: Floats in params are below this in magnitude: PostgreSQL's JSONB gives larger ones back as whole numbers.
PARAMS_FLOAT_BOUND = 1e16
PARAMS_HELP = (
    f"a JSON object of at most {MAX_PARAMS_BYTES} bytes as UTF-8 JSON, nested at most {MAX_PARAMS_DEPTH} deep: "
    "string keys; strings without NUL or lone surrogates, 64-bit integers, finite floats below 1e16 "
    "in magnitude, booleans, null, lists and objects"
)

# -------------------------------------------------------------------------------- the checks

#: The way to a value inside params: (the parent's trail, key or index), rendered only on error.
_Trail: TypeAlias = "tuple[_Trail, Any] | None"

# Control characters (C0, DEL, C1) except tab, newline and carriage return; lone surrogates.
_BAD_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# Every control character, the Unicode line and paragraph separators; lone surrogates.
_BAD_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# What no store holds: NUL (PostgreSQL text, JSONB) and lone surrogates (UTF-8 cannot encode them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_name(field: str, value: Any, *, chars: int = NAME_CHARS) -> str:
    """``value`` if it is a name of 1 to ``chars`` characters matching NAME_PATTERN whole."""
    if not isinstance(value, str) or not 0 < len(value) <= chars or not NAME_PATTERN.fullmatch(value):
        raise InvalidSchedule(field, value, name_help(chars))
    return value


def check_id(field: str, value: Any, *, optional: bool = False) -> str | None:
    """``value`` if it is an id (a name of at most ID_CHARS characters), or None when ``optional``."""
    if value is None and optional:
        return None
    try:
        return check_name(field, value, chars=ID_CHARS)
    except InvalidSchedule:
        raise InvalidSchedule(field, value, ID_HELP + (", or None" if optional else "")) from None


def text_help(chars: int, *, single_line: bool = False) -> str:
    """What a text field of at most ``chars`` characters allows, in words."""
    if single_line:
        return f"a single line of at most {chars} characters, without control characters or lone surrogates"
    return (
        f"a string of at most {chars} characters, without NUL, lone surrogates "
        "or control characters other than tab, newline and carriage return"
    )


def check_text(field: str, value: Any, chars: int, *, single_line: bool = False, optional: bool = False) -> Any:
    """``value`` if it is a string of at most ``chars`` characters that both stores hold as text.

    Refused: NUL, lone surrogates, and control characters other than tab, newline and carriage
    return; with ``single_line``, every control character and the Unicode line separators too.
    """
    if value is None and optional:
        return None
    allowed = text_help(chars, single_line=single_line) + (", or None" if optional else "")
    if not isinstance(value, str):
        raise InvalidSchedule(field, value, allowed)
    if len(value) > chars:
        raise TooLong(field, value, f"{allowed}; got {len(value)} characters")
    problem = text_problem(value, single_line=single_line)
    if problem is not None:
        raise InvalidSchedule(field, value, f"{allowed}; found {problem}")
    return value


def text_problem(value: str, *, single_line: bool = False) -> str | None:
    """The first character of ``value`` that check_text refuses, and where (``'\\x00' at position 2``), or None."""
    bad = (_BAD_IN_LINE if single_line else _BAD_IN_TEXT).search(value)
    return None if bad is None else f"{bad.group()!a} at position {bad.start()}"


def storable(text: str) -> bool:
    """True when both stores hold ``text``: no NUL and no lone surrogate."""
    return _UNSTORABLE.search(text) is None


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates written as escapes (``\\x00``, ``\\udc80``): text both stores hold."""
    return _UNSTORABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def check_json(field: str, value: Any) -> Any:
    """``value`` if it is JSON both stores hold: finite numbers, strings and keys without NUL or lone surrogates."""
    allowed = "JSON: string keys, finite numbers, strings without NUL or lone surrogates, lists and objects"
    try:
        loaded = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise InvalidSchedule(field, value, allowed) from None
    if not json_storable(loaded):
        raise InvalidSchedule(field, value, allowed)
    return value


def escaped(text: str, chars: int) -> str:
    """``text`` with control characters and lone surrogates escaped (Python notation), at most ``chars`` long."""
    return repr(text[:chars])[1:-1][:chars]


def check_count(field: str, value: Any, low: int, high: int) -> int:
    """``value`` if it is a whole number (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSchedule(field, value, f"a whole number from {low} to {high}")
    return value


def describe(span: timedelta) -> str:
    """A limit in words: ``"1 hour"``, ``"7 days"``, ``"1 second"``."""
    seconds = span.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


def check_span(
    field: str, value: Any, *, high: timedelta, zero_ok: bool = True, optional: bool = False
) -> timedelta | None:
    """``value`` (a timedelta, or a number of seconds) as a timedelta from 0 (or above 0) to ``high``."""
    if value is None and optional:
        return None
    low = "0 or more" if zero_ok else "more than 0"
    allowed = f"a timedelta or a number of seconds, {low} and at most {describe(high)}" + (
        ", or None" if optional else ""
    )
    span = value
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Compared as given: a huge int never becomes a float, NaN is never in range.
        if not -1 <= value <= high.total_seconds() + 1:
            raise InvalidSchedule(field, value, allowed)
        span = timedelta(seconds=value)
    if not isinstance(span, timedelta) or span < timedelta(0) or span > high or (not zero_ok and not span):
        raise InvalidSchedule(field, value, allowed)
    return span


def in_range(instant: datetime) -> datetime | None:
    """``instant`` as aware UTC when it is aware and from EARLIEST_INSTANT to LATEST_INSTANT, else None."""
    try:
        if instant.utcoffset() is None:
            return None
        moved = instant.astimezone(UTC)
    except (OverflowError, ValueError):  # an offset that pushes year 1 or 9999 off the calendar
        return None
    return moved if EARLIEST_INSTANT <= moved <= LATEST_INSTANT else None


def check_instant(field: str, value: Any, *, optional: bool = True) -> datetime | None:
    """``value`` as an aware UTC datetime in the range both stores hold, or None when ``optional``."""
    if value is None and optional:
        return None
    moved = in_range(value) if isinstance(value, datetime) else None
    if moved is None:
        raise InvalidSchedule(field, value, INSTANT_HELP + (" or None" if optional else ""))
    return moved


def params_bytes(field: str, value: Any, *, limit: int = MAX_PARAMS_BYTES) -> int:
    """The size of ``value`` as compact UTF-8 JSON, after checking that it is params both stores hold.

    InvalidSchedule when it is not a JSON object as PARAMS_HELP describes; TooLong when it is
    bigger than ``limit`` bytes (found early for huge values: nothing is serialized past the limit).
    """

    def bad(trail: _Trail, what: str) -> InvalidSchedule:
        steps: list[str] = []
        while trail is not None:
            trail, step = trail
            steps.append(f"[{short(step)}]")
        where = field + "".join(reversed(steps))
        where = where if len(where) <= 80 else where[:38] + "..." + where[-38:]
        return InvalidSchedule(field, value, f"{PARAMS_HELP}; {what} at {where}")

    def too_long() -> TooLong:
        return TooLong(field, value, f"at most {limit} bytes as UTF-8 JSON; got more")

    if not isinstance(value, dict):
        raise InvalidSchedule(field, value, PARAMS_HELP)
    budget = limit  # every value, key and character costs at least one byte of JSON
    stack: list[tuple[Any, int, _Trail]] = [(value, 1, None)]
    while stack:
        node, depth, trail = stack.pop()
        budget -= 1
        if isinstance(node, str):
            budget -= len(node)
            if not storable(node):
                raise bad(trail, "NUL or a lone surrogate")
        elif isinstance(node, bool) or node is None:
            pass
        elif isinstance(node, int):
            if not PARAMS_INT_MIN <= node <= PARAMS_INT_MAX:
                raise bad(trail, "an integer beyond 64 bits")
        elif isinstance(node, float):
            if not (math.isfinite(node) and abs(node) < PARAMS_FLOAT_BOUND):
                raise bad(trail, "a float out of range")
        elif isinstance(node, dict | list | tuple):
            if depth > MAX_PARAMS_DEPTH:
                raise bad(trail, f"nesting deeper than {MAX_PARAMS_DEPTH}")
            if len(node) > budget:
                raise too_long()
            if isinstance(node, dict):
                for key, item in node.items():
                    if not isinstance(key, str) or not storable(key):
                        raise bad(trail, f"the key {short(key)}")
                    budget -= len(key)
                    stack.append((item, depth + 1, (trail, key)))
            else:
                stack.extend((item, depth + 1, (trail, i)) for i, item in enumerate(node))
        else:
            raise bad(trail, f"a {type(node).__name__}")
        if budget < 0:
            raise too_long()
    size = len(_compact(value).encode())
    if size > limit:
        raise TooLong(field, value, f"at most {limit} bytes as UTF-8 JSON; got {size}")
    return size


def check_params(field: str, value: Any) -> dict[str, Any]:
    """``value`` as a plain JSON object (lists for tuples, plain str/int/float) if it is storable params.

    -0.0 becomes 0.0, as PostgreSQL gives it back: the definition holds what the store will hold.
    """
    params_bytes(field, value)
    loaded: dict[str, Any] = json.loads(_compact(value), parse_float=_plain_float)
    return loaded


def _plain_float(text: str) -> float:
    return float(text) + 0.0  # -0.0 + 0.0 is 0.0


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def json_storable(value: Any) -> bool:
    """True when ``value`` (parsed JSON: dicts, lists, scalars) nests at most MAX_JSON_DEPTH deep and no
    string or key in it holds NUL or a lone surrogate."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not storable(node):
                return False
        elif isinstance(node, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return False
            items = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((item, depth + 1) for item in items)
    return True


def json_depth(value: Any) -> int:
    """How deep ``value``'s dicts and lists nest (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((item, depth + 1) for item in (node.values() if isinstance(node, dict) else node))
    return deepest
