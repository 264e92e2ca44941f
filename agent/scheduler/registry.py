"""The topic registry: named services called with a JSON object, answering a JSON object, never raising.

A topic is a handler and a :class:`TopicInput` model of its payload (pydantic, strict types)::

    class DisableSchedule(TopicInput):
        name: Annotated[str, Field(max_length=128, description="schedule name or id"), ONE_LINE]
        reason: Annotated[str, Field(max_length=500)] | None = None
        force: bool = False
        status: Literal["pending", "running"] | None = None      # the only values accepted
        limit: Annotated[int, Field(ge=1, le=200)] = 20
        options: Annotated[dict[str, Any], JsonChars(4096)] | None = None   # bounded by its JSON text

    registry = ServiceRegistry()
    registry.register("scheduler.disable_schedule", disable, DisableSchedule)
    planner = registry.handle(Caller.agent("agent:planner"))       # the host gives each agent its handle
    answer = await planner.call("scheduler.disable_schedule", {"name": "sweep"})

Defining a topic is that: a model (a field without a default is required; ``X | None = None`` is
optional; constraints are pydantic's ``Field(max_length=, ge=, le=, description=)``, ``Literal`` for
allowed values, :data:`ONE_LINE` and :class:`JsonChars` from here), a handler taking the payload as
a ``dict`` (every declared field present, defaults filled in) and a :class:`CallContext`, and one
``register`` call. A topic without payload fields registers ``TopicInput`` itself.

A caller never names itself: an agent calls through the :class:`RegistryHandle` the host gave it,
which carries the identity the host chose; the operator bot calls as the Telegram chat the message
came from. A plain string passed as ``caller`` is taken as an agent's id, so nothing an agent can
write makes it a human.

Every answer is ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"code", "message", "field"}}``.
The payload is validated by its model before the handler sees it (unknown fields, missing required
ones, wrong types, values not allowed, too long), pydantic's findings are put in words naming the
field and what it allows, and whatever the handler raises is translated once, here, into an
:class:`ErrorCode`. Sync handlers run on the registry's own thread, so store work never blocks the
event loop; async handlers run on the loop (``CallContext.run_sync`` moves their blocking parts to
that thread).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError, field_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from .errors import InvalidSchedule, SchedulerError, StoreError, short
from .identity import Caller, InvalidIdentity
from .limits import MAX_JSON_DEPTH, json_depth, text_problem
from .proposals import InvalidProposal

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


# --- payload schemas ----------------------------------------------------------------------------------


class TopicInput(BaseModel):
    """The payload of a topic; subclass it with one annotated attribute per field (see the module docstring).

    Types are strict, as JSON has them: a string field takes only a string, an integer field only a
    whole number (never a boolean or ``2.5``), a ``bool`` only ``true``/``false``, a ``dict[str, Any]``
    only an object, a ``list[Any]`` only an array. A field absent or ``null`` gets its default; a
    required field (no default) refuses both. Any field the class does not declare is refused. Every
    string is checked to be text both stores hold (no NUL, no lone surrogate, no control character
    other than tab, newline and return); ``ONE_LINE`` refuses those three and line separators too.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            problem = text_problem(value, single_line=False)
            if problem is not None:
                raise _payload_error(f"{_TEXT}; found {problem}")
        return value


_TEXT = "text without NUL, lone surrogates or control characters other than tab, newline and return"
_LINE = "one line, without control characters or lone surrogates"


def _payload_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("payload", "{message}", {"message": message})


@dataclass(frozen=True, slots=True)
class _OneLine:
    """``Annotated`` metadata for a string that must fit on one line (names, ids)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(_one_line, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "single_line": True}


def _one_line(value: str) -> str:
    problem = text_problem(value, single_line=True)
    if problem is not None:
        raise _payload_error(f"{_LINE}; found {problem}")
    return value


@dataclass(frozen=True, slots=True)
class JsonChars:
    """``Annotated`` metadata bounding an object field by the length of its JSON text, in characters."""

    limit: int

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"JsonChars.limit must be 1 or more, got {self.limit}")

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), "max_json_chars": self.limit}

    def _check(self, value: Any) -> Any:
        length = len(json.dumps(value))
        if length > self.limit:
            raise _payload_error(f"at most {self.limit} characters, got {length}")
        return value


#: ``Annotated[str, ONE_LINE]``: a string without control characters or line separators.
ONE_LINE = _OneLine()


def describe(model: type[TopicInput]) -> list[dict[str, Any]]:
    """Every field of ``model`` as JSON (name, type, required, allowed, bounds, default), for discovery."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    definitions = schema.get("$defs", {})
    return [
        _describe_field(name, _flatten(spec, definitions), name in required)
        for name, spec in schema.get("properties", {}).items()
    ]


def _describe_field(name: str, flat: dict[str, Any], required: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": flat.get("type", "any"), "required": required}
    allowed = flat.get("enum", [flat["const"]] if "const" in flat else None)
    facts = {
        "allowed": allowed,
        "max_length": flat.get("maxLength", flat.get("maxItems", flat.get("max_json_chars"))),
        "minimum": flat.get("minimum", flat.get("ge")),
        "maximum": flat.get("maximum", flat.get("le")),
        "default": flat.get("default"),
        "description": flat.get("description") or None,
    }
    out.update({key: value for key, value in facts.items() if value is not None})
    if flat.get("single_line"):
        out["single_line"] = True
    return out


def _flatten(spec: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """One JSON-schema dict for a field: references resolved, ``null`` dropped, ``integer | number`` as ``number``."""
    if "$ref" in spec:
        spec = {**definitions[spec["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in spec.items() if k != "$ref"}}
    alternatives = [_flatten(a, definitions) for a in spec.get("anyOf", ()) if a.get("type") != "null"]
    merged: dict[str, Any] = {}
    for alternative in alternatives:
        merged.update(alternative)
    if {a.get("type") for a in alternatives} == {"integer", "number"}:
        merged["type"] = "number"
    merged.update({key: value for key, value in spec.items() if key != "anyOf"})
    return merged


_KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
_ARTICLE = {"integer": "an", "object": "an", "array": "an"}
_TYPE_ERRORS = frozenset({"string_type", "int_type", "float_type", "bool_type", "dict_type", "list_type"})


def _is_kind(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind != "boolean":
        return False
    return isinstance(value, _KINDS.get(kind, (object,)))


def _invalid(exc: ValidationError, fields: Mapping[str, dict[str, Any]]) -> ServiceError:
    """The first problem pydantic found, in words naming the field and what it allows."""
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    return ServiceError(ErrorCode.INVALID, f"{name}: {_problem(error, fields.get(name, {}))}", name)


def _problem(error: Any, spec: dict[str, Any]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    expected = spec.get("type", "")
    if kind == "missing":
        return "required"
    if kind == "string_unicode" and isinstance(value, str):  # a lone surrogate, refused before our text check
        single_line = bool(spec.get("single_line"))
        return f"{_LINE if single_line else _TEXT}; found {text_problem(value, single_line=single_line)}"
    if kind in _TYPE_ERRORS or (kind in ("literal_error", "enum") and not _is_kind(value, expected)):
        return f"must be {_ARTICLE.get(expected, 'a')} {expected}, got {_json_type(value)}"
    if kind in ("literal_error", "enum"):
        return f"{short(value)} is not allowed; one of: " + ", ".join(str(a) for a in spec.get("allowed", ()))
    if kind == "string_too_long":
        return f"at most {ctx['max_length']} characters, got {len(value)}"
    if kind == "too_long":
        return f"at most {ctx['max_length']} items, got {ctx['actual_length']}"
    if kind == "greater_than_equal":
        return f"{short(value)} is below the minimum {_number(ctx['ge'])}"
    if kind == "less_than_equal":
        return f"{short(value)} is above the maximum {_number(ctx['le'])}"
    if kind in ("greater_than", "less_than"):
        bound = ctx.get("gt", ctx.get("lt"))
        return f"{short(value)} must be {'above' if kind == 'greater_than' else 'below'} {_number(bound)}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "payload":
        return str(ctx["message"])
    return str(error["msg"])


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
    model: type[TopicInput]
    fields: dict[str, dict[str, Any]]
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

    def register(self, topic: str, handler: Handler, model: type[TopicInput]) -> None:
        """Add ``topic``; a malformed name or a name registered twice is a programming error (ValueError)."""
        if not isinstance(topic, str) or not TOPIC_PATTERN.match(topic):
            raise ValueError(f"topic {topic!r}: dotted lower-case words such as 'scheduler.list_schedules'")
        if topic in self._topics:
            raise ValueError(f"topic {topic!r} is already registered")
        if not callable(handler):
            raise TypeError(f"topic {topic!r}: handler {handler!r} is not callable")
        if not (isinstance(model, type) and issubclass(model, TopicInput)):
            raise TypeError(f"topic {topic!r}: the payload model must be a TopicInput subclass, got {model!r}")
        fields = {spec["name"]: spec for spec in describe(model)}
        self._topics[topic] = _Topic(handler, model, fields, inspect.iscoroutinefunction(handler))

    def topics(self) -> list[str]:
        """Every registered topic name, sorted."""
        return sorted(self._topics)

    def schema(self, topic: str) -> list[dict[str, Any]]:
        """The payload fields of ``topic`` as JSON; KeyError when it is not registered."""
        return list(self._topics[topic].fields.values())

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
        checked = _validate(entry, data)
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


def _validate(entry: _Topic, data: dict[str, Any]) -> dict[str, Any]:
    """The payload as the handler gets it: validated by the topic's model, ``null`` taken as absent."""
    for key in data:
        if key not in entry.fields:  # before pydantic, which cannot read a key holding a lone surrogate
            known = ", ".join(entry.fields) or "(none)"
            raise ServiceError(
                ErrorCode.INVALID, f"{short(key)} is not a field of this topic; fields: {known}", str(key)[:64]
            )
    present = {key: value for key, value in data.items() if value is not None}
    try:
        return entry.model.model_validate(present).model_dump(mode="json")
    except ValidationError as exc:
        raise _invalid(exc, entry.fields) from None


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


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), f"a {type(value).__name__}")


def _number(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _who(caller: Any) -> str:
    return f"{caller.id} ({caller.kind.value} via {caller.door.value})" if isinstance(caller, Caller) else short(caller)
