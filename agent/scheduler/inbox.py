"""The event inbox's rules: what an event may be, and the one way in that every door takes.

The command line (``emit``), the registry (``scheduler.emit_event``) and the Telegram bot
(``/emit``) all call :func:`emit_event`; ``engine.emit`` builds its event with :func:`new_event`.
An event is written ``pending``; exactly one worker consumes it (see ``engine/events.py``) and
creates one run per enabled event schedule listening to its name that existed when it was
emitted. Events are never applied retroactively: a schedule created after an event was emitted
does not get a run for it, even if no worker had consumed it yet.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import limits
from .enums import CallerKind
from .errors import InvalidSchedule, TooLong
from .identity import Caller
from .records import InboxEvent
from .triggers import check_event_name

if TYPE_CHECKING:
    from .store import ScheduleStore

log = logging.getLogger(__name__)

#: Largest event payload, as compact UTF-8 JSON, in bytes: an event says what happened, it carries no files.
EVENT_PAYLOAD_BYTES = 16 * 1024
#: Longest payload text a door parses, in characters (escapes and spacing take room; the bytes are checked after).
PAYLOAD_TEXT_CHARS = 4 * EVENT_PAYLOAD_BYTES
#: The most events one agent may emit in an hour: the inbox keeps every event until it is purged, so an
#: agent in a loop must not fill the disk. People and host code are not counted.
AGENT_EVENTS_PER_HOUR = 600
PAYLOAD_HELP = (
    f"a JSON object of at most {EVENT_PAYLOAD_BYTES} bytes as compact UTF-8 JSON, nested at most "
    f"{limits.MAX_PARAMS_DEPTH} deep (string keys; strings, 64-bit integers, finite floats, booleans, null, "
    "lists and objects)"
)


def check_payload(payload: Any) -> dict[str, Any]:
    """``payload`` as a plain JSON object (None is ``{}``); InvalidSchedule naming ``payload`` otherwise."""
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise InvalidSchedule("payload", payload, f"{PAYLOAD_HELP}; got {_json_kind(payload)}")
    try:
        limits.params_bytes("payload", payload, limit=EVENT_PAYLOAD_BYTES)
    except TooLong:
        raise
    except InvalidSchedule as exc:
        what = exc.allowed.removeprefix(limits.PARAMS_HELP).lstrip("; ")
        raise InvalidSchedule("payload", payload, PAYLOAD_HELP + (f"; {what}" if what else "")) from None
    return limits.check_params("payload", payload)


def check_event(name: Any, payload: Any) -> tuple[str, dict[str, Any]]:
    """The event name and payload if an event may hold them; InvalidSchedule naming ``name`` or ``payload``."""
    return check_event_name("name", name), check_payload(payload)


def parse_payload(text: str | None) -> dict[str, Any]:
    """A payload typed as JSON text (the command line, Telegram); empty text is ``{}``."""
    if text is None or not text.strip():
        return {}
    if len(text) > PAYLOAD_TEXT_CHARS:
        raise TooLong("payload", text, f"{PAYLOAD_HELP}; got {len(text)} characters of text")
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidSchedule("payload", text, f"{PAYLOAD_HELP}; it nests too deep") from None
    except ValueError as exc:
        why = f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise InvalidSchedule("payload", text, f"{PAYLOAD_HELP}; not JSON: {why}") from None
    return check_payload(value)


def new_event(
    name: Any, payload: Any, *, emitted_by: str, emitted_at: datetime, emitted_kind: CallerKind = CallerKind.SYSTEM
) -> InboxEvent:
    """A pending event, checked: what the store writes, and what ``engine.emit`` hands its next tick."""
    name, payload = check_event(name, payload)
    by = limits.check_text("emitted_by", emitted_by, limits.NAME_CHARS, single_line=True)
    at = limits.check_instant("emitted_at", emitted_at, optional=False)
    assert at is not None
    return InboxEvent(
        id=f"ev_{uuid.uuid4().hex}",
        name=name,
        payload=payload,
        emitted_at=at,
        emitted_by=by,
        emitted_kind=CallerKind(emitted_kind),
    )


def emit_event(store: ScheduleStore, name: Any, payload: Any, *, by: Caller) -> InboxEvent:
    """Check an event and write it to the inbox, pending, for exactly one worker to consume.

    ``by`` is the caller as its door established it (``cli:<user>``, ``telegram:<chat>``, an agent);
    the event keeps its id and kind, so the worker that consumes it never lets an agent's event set
    off a high-risk schedule. A bad name or payload raises InvalidSchedule naming the field and what
    is allowed; an agent over AGENT_EVENTS_PER_HOUR gets EventRefused. Either way nothing is written.
    """
    now = store.clock.now()
    event = new_event(name, payload, emitted_by=by.id, emitted_at=now, emitted_kind=by.kind)
    event = store.add_event(event, hourly_quota=AGENT_EVENTS_PER_HOUR if by.is_agent else None)
    log.info("event %s (%s) emitted by %s", event.name, event.id, event.emitted_by)
    return event


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"
