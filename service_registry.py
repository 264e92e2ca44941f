"""The worker's topic registry: named services called with a JSON object, answering a JSON object, never raising.

A topic is a handler and the :class:`InputSchema` of its payload::

    registry = ServiceRegistry()
    registry.register("scheduler.disable_schedule", disable, InputSchema(
        Field(name="name", type=FieldType.STRING, required=True, max_length=128),
        Field(name="reason", type=FieldType.STRING, max_length=500),
    ))
    planner = registry.handle(Caller.agent("agent:planner"))       # the host gives each agent its handle
    answer = await planner.call("scheduler.disable_schedule", {"name": "sweep"})

A caller never names itself: an agent calls through the :class:`RegistryHandle` the host gave it,
which carries the identity the host chose; the operator bot calls as the Telegram chat the message
came from. A plain string passed as ``caller`` is taken as an agent's id, so nothing an agent can
write makes it a human.

Every answer is ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"code", "message", "field"}}``.
The payload is checked against the schema before the handler sees it (unknown fields, missing
required ones, wrong types, values not allowed, too long), and whatever the handler raises is
translated once, here, into an :class:`ErrorCode`. Sync handlers run on the registry's own thread,
so store work never blocks the event loop; async handlers run on the loop (``CallContext.run_sync``
moves their blocking parts to that thread).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

from agent.scheduler.errors import InvalidSchedule, SchedulerError, StoreError, short
from agent.scheduler.identity import Caller, InvalidIdentity
from agent.scheduler.limits import MAX_JSON_DEPTH, json_depth, text_problem
from agent.scheduler.proposals import InvalidProposal

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Topic names: dotted lower-case words, such as ``scheduler.list_schedules``.
TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
#: The longest a call may take before its caller is answered ``unavailable``, in seconds.
CALL_TIMEOUT_SECONDS = 30.0
#: The largest payload accepted, as JSON text, in characters.
MAX_PAYLOAD_CHARS = 512 * 1024


class ErrorCode(StrEnum):
    """What went wrong with a call, as the ``code`` of its error answer."""

    #: No topic has this name; ``topics()`` lists them.
    UNKNOWN_TOPIC = "unknown_topic"
    #: The payload (or a value in it) is not allowed; ``field`` names it and the message says what is.
    INVALID = "invalid"
    #: The schedule, run, dead letter or proposal named in the payload does not exist.
    NOT_FOUND = "not_found"
    #: The request is understood but its state machine or policy refuses it now; nothing changed.
    REFUSED = "refused"
    #: The store failed or the call took too long; try again later.
    UNAVAILABLE = "unavailable"
    #: A bug: the handler failed unexpectedly. The worker's log has the traceback.
    INTERNAL = "internal"


class ServiceError(Exception):
    """Raised by a handler (or the schema) to answer with this code, message and field."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` member of the answer."""
        return {"code": self.code.value, "message": self.message, "field": self.field}


class FieldType(StrEnum):
    """The JSON type a payload field must have."""

    #: A JSON string.
    STRING = "string"
    #: A whole number (not a boolean).
    INTEGER = "integer"
    #: Any finite number (not a boolean).
    NUMBER = "number"
    #: ``true`` or ``false``.
    BOOLEAN = "boolean"
    #: A JSON object with string keys.
    OBJECT = "object"
    #: A JSON array.
    ARRAY = "array"


_PYTHON_TYPES: dict[FieldType, tuple[type, ...]] = {
    FieldType.STRING: (str,),
    FieldType.INTEGER: (int,),
    FieldType.NUMBER: (int, float),
    FieldType.BOOLEAN: (bool,),
    FieldType.OBJECT: (dict,),
    FieldType.ARRAY: (list,),
}
_ARTICLE = {FieldType.INTEGER: "an", FieldType.OBJECT: "an", FieldType.ARRAY: "an"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One payload field: its type and what values it may take.

    ``max_length`` counts characters of a string, items of an array, and characters of an
    object's JSON text. ``default`` is what the handler receives when the field is absent
    (or JSON ``null``).
    """

    name: str
    type: FieldType
    required: bool = False
    allowed: tuple[Any, ...] = ()
    """The only values accepted; empty: any value of the type."""
    max_length: int | None = None
    single_line: bool = False
    """A string field refuses every control character and line separator (names, ids); otherwise tab,
    newline and carriage return are allowed. NUL and lone surrogates are refused either way."""
    minimum: float | None = None
    """Smallest accepted number (integer and number fields)."""
    maximum: float | None = None
    """Largest accepted number (integer and number fields)."""
    default: Any = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Field.name: {self.name!r} is not a field name")
        object.__setattr__(self, "type", FieldType(self.type))
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"Field {self.name}: max_length must be 1 or more, got {self.max_length}")

    def check(self, value: Any) -> Any:
        """``value`` if this field accepts it; ServiceError(INVALID) naming the field otherwise."""
        if not _has_type(value, self.type):
            article = _ARTICLE.get(self.type, "a")
            raise self._bad(f"must be {article} {self.type.value}, got {_json_type(value)}")
        if self.type is FieldType.NUMBER and isinstance(value, float) and not math.isfinite(value):
            raise self._bad("must be a finite number")
        problem = text_problem(value, single_line=self.single_line) if self.type is FieldType.STRING else None
        if problem is not None:
            allowed = (
                "one line, without control characters or lone surrogates"
                if self.single_line
                else "text without NUL, lone surrogates or control characters other than tab, newline and return"
            )
            raise self._bad(f"{allowed}; found {problem}")
        if self.allowed and value not in self.allowed:
            raise self._bad(f"{short(value)} is not allowed; one of: " + ", ".join(str(a) for a in self.allowed))
        if self.max_length is not None:
            length = len(json.dumps(value)) if self.type is FieldType.OBJECT else len(value)
            if length > self.max_length:
                unit = "items" if self.type is FieldType.ARRAY else "characters"
                raise self._bad(f"at most {self.max_length} {unit}, got {length}")
        if self.minimum is not None and value < self.minimum:
            raise self._bad(f"{value} is below the minimum {_number(self.minimum)}")
        if self.maximum is not None and value > self.maximum:
            raise self._bad(f"{value} is above the maximum {_number(self.maximum)}")
        return value

    def describe(self) -> dict[str, Any]:
        """The field as JSON, for callers that discover topics."""
        out: dict[str, Any] = {"name": self.name, "type": self.type.value, "required": self.required}
        for key in ("allowed", "max_length", "minimum", "maximum", "default", "description"):
            value = getattr(self, key)
            if value not in (None, (), ""):
                out[key] = list(value) if isinstance(value, tuple) else value
        if self.single_line:
            out["single_line"] = True
        return out

    def _bad(self, message: str) -> ServiceError:
        return ServiceError(ErrorCode.INVALID, f"{self.name}: {message}", self.name)


class InputSchema:
    """The fields a topic's payload may have: ``InputSchema(Field(...), ...)``; any other field is refused."""

    __slots__ = ("fields",)

    def __init__(self, *fields: Field) -> None:
        names = [f.name for f in fields]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"InputSchema: fields named more than once: {', '.join(duplicated)}")
        self.fields: dict[str, Field] = {f.name: f for f in fields}

    def validate(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The payload with defaults filled in; ServiceError(INVALID) naming the first bad field."""
        for key in payload:
            if key not in self.fields:
                known = ", ".join(self.fields) or "(none)"
                raise ServiceError(
                    ErrorCode.INVALID, f"{short(key)} is not a field of this topic; fields: {known}", str(key)[:64]
                )
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            value = payload.get(name)
            if value is None:
                if spec.required:
                    raise ServiceError(ErrorCode.INVALID, f"{name}: required", name)
                out[name] = spec.default
                continue
            out[name] = spec.check(value)
        return out

    def describe(self) -> list[dict[str, Any]]:
        """Every field as JSON."""
        return [f.describe() for f in self.fields.values()]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallContext:
    """Who is calling which topic; handlers record ``caller`` (its ``id``) on whatever they change."""

    topic: str
    caller: Caller
    _executor: ThreadPoolExecutor = field(repr=False)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` (store work) on the registry's thread, from an async handler."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))


Handler = Callable[[dict[str, Any], CallContext], Awaitable[dict[str, Any]] | dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Topic:
    handler: Handler
    schema: InputSchema
    is_async: bool


class ServiceRegistry:
    """Topics by name. ``call`` answers every request with a JSON object and never raises an Exception.

    ``timeout_seconds`` bounds how long a caller waits for an answer (a sync handler that is still
    working finishes on the registry's thread, but its caller is answered ``unavailable``).
    """

    def __init__(self, *, timeout_seconds: float = CALL_TIMEOUT_SECONDS) -> None:
        self._topics: dict[str, _Topic] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="service-registry")
        self.timeout_seconds = timeout_seconds

    def register(self, topic: str, handler: Handler, schema: InputSchema) -> None:
        """Add ``topic``; a malformed name or a name registered twice is a programming error (ValueError)."""
        if not isinstance(topic, str) or not TOPIC_PATTERN.match(topic):
            raise ValueError(f"topic {topic!r}: dotted lower-case words such as 'scheduler.list_schedules'")
        if topic in self._topics:
            raise ValueError(f"topic {topic!r} is already registered")
        if not callable(handler):
            raise TypeError(f"topic {topic!r}: handler {handler!r} is not callable")
        if not isinstance(schema, InputSchema):
            raise TypeError(f"topic {topic!r}: schema must be an InputSchema, got {type(schema).__name__}")
        self._topics[topic] = _Topic(handler, schema, inspect.iscoroutinefunction(handler))

    def topics(self) -> list[str]:
        """Every registered topic name, sorted."""
        return sorted(self._topics)

    def schema(self, topic: str) -> list[dict[str, Any]]:
        """The payload fields of ``topic`` as JSON; KeyError when it is not registered."""
        return self._topics[topic].schema.describe()

    def close(self) -> None:
        """Release the registry's thread (calls already running finish)."""
        self._executor.shutdown(wait=False)

    def handle(self, caller: Caller) -> RegistryHandle:
        """The handle to give one agent (or other caller): its calls carry ``caller``, never an id of its choosing."""
        if not isinstance(caller, Caller):
            raise TypeError(f"handle: a Caller (such as Caller.agent('agent:planner')), got {type(caller).__name__}")
        return RegistryHandle(self, caller)

    async def call(self, topic: str, payload: Any, *, caller: Caller | str) -> dict[str, Any]:
        """Check ``payload`` against the topic's schema and run its handler; the answer as a JSON object.

        ``caller`` is the identity a door established (a :class:`Caller`); a string is an agent's id.
        ``payload`` must be a JSON object (a dict); None stands for ``{}``. Cancelling the awaiting
        task still cancels the call: only Exceptions are turned into answers.
        """
        try:
            result = await self._call(topic, payload, caller)
        except ServiceError as exc:
            level = logging.ERROR if exc.code is ErrorCode.INTERNAL else logging.INFO
            log.log(level, "%s by %s: %s: %s", topic, _who(caller), exc.code.value, exc.message)
            return {"ok": False, "error": exc.to_dict()}
        except Exception as exc:  # translated once, here: the caller must never see an exception
            error = translate(exc, topic)
            if error.code is ErrorCode.INTERNAL:
                log.exception("%s by %s failed unexpectedly", topic, _who(caller))
            else:
                log.info("%s by %s: %s: %s", topic, _who(caller), error.code.value, error.message)
            return {"ok": False, "error": error.to_dict()}
        log.debug("%s by %s: ok", topic, _who(caller))
        return {"ok": True, "result": result}

    async def _call(self, topic: str, payload: Any, caller: Any) -> dict[str, Any]:
        if not isinstance(caller, Caller):
            try:
                caller = Caller.agent(caller)
            except InvalidIdentity as exc:
                raise ServiceError(ErrorCode.INVALID, f"caller: {exc}", "caller") from None
        entry = self._topics.get(topic) if isinstance(topic, str) else None
        if entry is None:
            known = ", ".join(self.topics()) or "(none)"
            raise ServiceError(ErrorCode.UNKNOWN_TOPIC, f"no topic named {short(topic)}; topics: {known}")
        data = _json_object(payload)
        checked = entry.schema.validate(data)
        context = CallContext(topic=topic, caller=caller, _executor=self._executor)
        try:
            async with asyncio.timeout(self.timeout_seconds) as deadline:
                if entry.is_async:
                    outcome: Any = entry.handler(checked, context)
                else:
                    loop = asyncio.get_running_loop()
                    outcome = await loop.run_in_executor(self._executor, entry.handler, checked, context)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
        except TimeoutError:
            if not deadline.expired():
                raise
            raise ServiceError(
                ErrorCode.UNAVAILABLE, f"{topic} did not answer within {self.timeout_seconds:g}s; try again"
            ) from None
        return _json_result(topic, outcome)


class RegistryHandle:
    """One caller's door to the registry: ``call(topic, payload)`` as the identity the host gave it.

    Give an agent its handle, never the registry: the handle has no way to name another caller.
    """

    __slots__ = ("_caller", "_registry")

    def __init__(self, registry: ServiceRegistry, caller: Caller) -> None:
        self._registry = registry
        self._caller = caller

    @property
    def caller(self) -> Caller:
        """Who this handle calls as."""
        return self._caller

    async def call(self, topic: str, payload: Any = None) -> dict[str, Any]:
        """``ServiceRegistry.call`` as this handle's caller."""
        return await self._registry.call(topic, payload, caller=self._caller)

    def topics(self) -> list[str]:
        """Every registered topic name, sorted."""
        return self._registry.topics()

    def schema(self, topic: str) -> list[dict[str, Any]]:
        """The payload fields of ``topic`` as JSON."""
        return self._registry.schema(topic)


def translate(exc: BaseException, topic: str = "") -> ServiceError:
    """The error answer for an exception a handler raised: the scheduler's errors by kind, anything else internal."""
    if isinstance(exc, ServiceError):
        return exc
    message = str(exc)
    if isinstance(exc, InvalidSchedule):
        return ServiceError(ErrorCode.INVALID, message, exc.field)
    if isinstance(exc, InvalidProposal):
        return ServiceError(ErrorCode.INVALID, message, exc.findings[0].field if exc.findings else None)
    if isinstance(exc, SchedulerError) and isinstance(exc, LookupError):
        return ServiceError(ErrorCode.NOT_FOUND, message, _lookup_field(exc))
    if isinstance(exc, StoreError):
        return ServiceError(ErrorCode.UNAVAILABLE, f"the schedule store failed: {message}; try again")
    if isinstance(exc, SchedulerError):
        # InvalidTransition, GuardRejected, StaleState, DecisionRefused...: a rule said no, nothing changed.
        return ServiceError(ErrorCode.REFUSED, message)
    where = f"{topic} " if topic else ""
    return ServiceError(
        ErrorCode.INTERNAL, f"{where}failed unexpectedly ({type(exc).__name__}); the worker's log has the details"
    )


def _lookup_field(exc: BaseException) -> str | None:
    if hasattr(exc, "name"):
        return "name"
    if hasattr(exc, "run_id") or hasattr(exc, "proposal_id"):
        return "id"
    return None


def _json_object(payload: Any) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ServiceError(ErrorCode.INVALID, f"the payload must be a JSON object, got {_json_type(payload)}")
    try:
        text = json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise _not_json(payload) from None
    for key, value in payload.items():
        if json_depth(value) >= MAX_JSON_DEPTH:
            raise ServiceError(ErrorCode.INVALID, f"{key}: nested more than {MAX_JSON_DEPTH} deep", key)
    if len(text) > MAX_PAYLOAD_CHARS:
        raise ServiceError(
            ErrorCode.INVALID, f"the payload is {len(text)} characters of JSON; at most {MAX_PAYLOAD_CHARS}"
        )
    loaded: dict[str, Any] = json.loads(text)  # a copy: handlers never share the caller's objects
    return loaded


def _not_json(payload: dict[Any, Any]) -> ServiceError:
    """The error naming the first field whose value (or name) is not JSON."""
    allowed = "JSON: strings, finite numbers, true/false, null, arrays and objects with string keys, nested at most"
    for key, value in payload.items():
        try:
            if not isinstance(key, str):
                raise TypeError(key)
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            field = key[:64] if isinstance(key, str) else short(key)
            why = "it is too deeply nested" if isinstance(exc, RecursionError) else short(str(exc))
            return ServiceError(ErrorCode.INVALID, f"{field}: not JSON ({why}); {allowed} a few hundred levels", field)
    return ServiceError(ErrorCode.INVALID, "the payload is not JSON")


def _json_result(topic: str, outcome: Any) -> dict[str, Any]:
    if not isinstance(outcome, dict):
        raise TypeError(f"{topic} returned {type(outcome).__name__}, not a JSON object (dict)")
    loaded: dict[str, Any] = json.loads(json.dumps(outcome, allow_nan=False))
    return loaded


def _has_type(value: Any, kind: FieldType) -> bool:
    if isinstance(value, bool) and kind is not FieldType.BOOLEAN:
        return False
    return isinstance(value, _PYTHON_TYPES[kind])


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), f"a {type(value).__name__}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _who(caller: Any) -> str:
    return f"{caller.id} ({caller.kind.value} via {caller.door.value})" if isinstance(caller, Caller) else short(caller)
