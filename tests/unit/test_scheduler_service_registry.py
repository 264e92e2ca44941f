"""The service registry on its own: schema checks, structured errors, never an exception to the caller."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field

from agent.scheduler.errors import (
    GuardRejected,
    InvalidSchedule,
    InvalidTransition,
    RunNotFound,
    ScheduleNotFound,
    StaleRun,
    StoreError,
)
from agent.scheduler.identity import Caller
from agent.scheduler.limits import MAX_JSON_DEPTH
from agent.scheduler.proposals import DecisionRefused, InvalidProposal, ProposalNotFound
from agent.scheduler.schedule_policy import Finding, Rule
from service_registry import (
    ONE_LINE,
    CallContext,
    ErrorCode,
    JsonChars,
    ServiceError,
    ServiceRegistry,
    TopicInput,
)


class SCHEMA(TopicInput):
    name: Annotated[str, Field(max_length=8)]
    count: Annotated[int, Field(ge=1, le=10)] = 3
    ratio: int | float | None = None
    flag: bool = False
    color: Literal["red", "green"] | None = None
    options: Annotated[dict[str, Any], JsonChars(20)] | None = None
    tags: Annotated[list[Any], Field(max_length=2)] | None = None


class Options(TopicInput):
    options: dict[str, Any] | None = None


class Text(TopicInput):
    text: str | None = None


class Line(TopicInput):
    text: Annotated[str, ONE_LINE] | None = None


class Shape(TopicInput):
    o: dict[str, Any] | None = None
    n: Annotated[int | float, Field(le=10)] | None = None


def echo(payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    caller = ctx.caller
    return {
        "payload": payload,
        "caller": caller.id,
        "kind": caller.kind,
        "topic": ctx.topic,
        "thread": threading.get_ident(),
    }


def registry(**handlers: Any) -> ServiceRegistry:
    reg = ServiceRegistry(timeout_seconds=2)
    reg.register("test.echo", echo, SCHEMA)
    for name, handler in handlers.items():
        reg.register(f"test.{name}", handler, TopicInput)
    return reg


def call(reg: ServiceRegistry, topic: str, payload: Any, caller: Any = "agent:7") -> dict[str, Any]:
    return asyncio.run(reg.call(topic, payload, caller=caller))


def error_of(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"] is False, answer
    assert set(answer) == {"ok", "error"}
    assert set(answer["error"]) == {"code", "message", "field"}
    return dict(answer["error"])


def test_a_good_call_answers_ok_with_the_result_and_defaults_filled_in() -> None:
    answer = call(registry(), "test.echo", {"name": "sweep", "tags": ["a"]}, caller="human:alice")
    assert answer["ok"] is True
    result = answer["result"]
    assert result["payload"] == {
        "name": "sweep",
        "count": 3,
        "ratio": None,
        "flag": False,
        "color": None,
        "options": None,
        "tags": ["a"],
    }
    # A string is an agent's id, whatever it looks like: only a door makes a human.
    assert (result["caller"], result["kind"], result["topic"]) == ("human:alice", "agent", "test.echo")


def test_a_handle_calls_as_the_identity_the_host_gave_it_and_cannot_name_another() -> None:
    reg = registry()
    handle = reg.handle(Caller.agent("Agent:Planner "))
    answer = asyncio.run(handle.call("test.echo", {"name": "a"}))
    assert (answer["result"]["caller"], answer["result"]["kind"]) == ("agent:planner", "agent")
    assert handle.caller == Caller.agent("agent:planner") and handle.topics() == reg.topics()
    with pytest.raises(TypeError):
        handle.call("test.echo", {"name": "a"}, caller="telegram:42")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="a Caller"):
        reg.handle("agent:planner")  # type: ignore[arg-type]


def test_sync_handlers_run_off_the_event_loop_thread_and_async_ones_on_it() -> None:
    seen: dict[str, int] = {}

    async def on_loop(payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        seen["async"] = threading.get_ident()
        seen["offloaded"] = await ctx.run_sync(threading.get_ident)
        return {}

    reg = registry(on_loop=on_loop)

    async def both() -> None:
        seen["loop"] = threading.get_ident()
        assert (await reg.call("test.on_loop", {}, caller="x"))["ok"]
        seen["sync"] = (await reg.call("test.echo", {"name": "a"}, caller="x"))["result"]["thread"]

    asyncio.run(both())
    assert seen["async"] == seen["loop"]
    assert seen["sync"] != seen["loop"]
    assert seen["offloaded"] == seen["sync"]  # the registry's one thread


def test_the_handler_gets_a_copy_of_the_payload() -> None:
    def mutate(payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        payload["options"]["x"] = 2
        return {}

    reg = ServiceRegistry()
    reg.register("test.mutate", mutate, Options)
    mine = {"options": {"x": 1}}
    assert call(reg, "test.mutate", mine)["ok"]
    assert mine == {"options": {"x": 1}}


def test_unknown_topic_is_a_structured_error_listing_the_topics() -> None:
    reg = registry()
    topics: list[Any] = ["test.nope", "", 42, None]
    for topic in topics:
        error = error_of(call(reg, topic, {}))
        assert error["code"] == "unknown_topic" == ErrorCode.UNKNOWN_TOPIC.value
        assert "test.echo" in error["message"]


@pytest.mark.parametrize("payload", [["name", "x"], "name=x", '{"name": "x"}', 7, 1.5, True, b"{}"])
def test_a_payload_that_is_not_a_json_object_is_invalid(payload: Any) -> None:
    error = error_of(call(registry(), "test.echo", payload))
    assert error["code"] == "invalid"
    assert "the payload must be a JSON object" in error["message"]


def test_none_stands_for_an_empty_payload() -> None:
    reg = registry(empty=lambda payload, ctx: {"got": payload})
    assert call(reg, "test.empty", None) == {"ok": True, "result": {"got": {}}}
    assert error_of(call(reg, "test.echo", None))["field"] == "name"  # required still applies


@pytest.mark.parametrize(
    "payload",
    [{"name": {1, 2}}, {"name": float("nan")}, {"name": datetime(2027, 1, 1, tzinfo=UTC)}, {1: "x"}],
    ids=["set", "nan", "datetime", "int-key"],
)
def test_a_payload_that_is_not_json_is_invalid(payload: dict[Any, Any]) -> None:
    error = error_of(call(registry(), "test.echo", payload))
    assert error["code"] == "invalid"
    assert "not JSON" in error["message"] or "not a field" in error["message"]


#: (payload, field, words in the message): one case per kind of bad field.
BAD_FIELDS = [
    ({}, "name", "required"),
    ({"name": None}, "name", "required"),
    ({"name": 5}, "name", "must be a string, got an integer"),
    ({"name": "toolongname"}, "name", "at most 8 characters, got 11"),
    ({"name": "a", "count": "3"}, "count", "must be an integer, got a string"),
    ({"name": "a", "count": True}, "count", "must be an integer, got a boolean"),
    ({"name": "a", "count": 2.5}, "count", "must be an integer, got a number"),
    ({"name": "a", "count": 0}, "count", "below the minimum 1"),
    ({"name": "a", "count": 11}, "count", "above the maximum 10"),
    ({"name": "a", "ratio": "0.5"}, "ratio", "must be a number"),
    ({"name": "a", "ratio": False}, "ratio", "must be a number, got a boolean"),
    ({"name": "a", "flag": "yes"}, "flag", "must be a boolean, got a string"),
    ({"name": "a", "flag": 1}, "flag", "must be a boolean, got an integer"),
    ({"name": "a", "color": "blue"}, "color", "'blue' is not allowed; one of: red, green"),
    ({"name": "a", "color": 1}, "color", "must be a string"),
    ({"name": "a", "options": []}, "options", "must be an object, got an array"),
    ({"name": "a", "options": {"k": "x" * 30}}, "options", "at most 20 characters"),
    ({"name": "a", "tags": {}}, "tags", "must be an array, got an object"),
    ({"name": "a", "tags": [1, 2, 3]}, "tags", "at most 2 items, got 3"),
    ({"name": "a", "colour": "red"}, "colour", "'colour' is not a field of this topic; fields: name, count"),
]


@pytest.mark.parametrize(("payload", "field", "words"), BAD_FIELDS)
def test_each_kind_of_bad_field_is_named_with_what_is_allowed(payload: dict[str, Any], field: str, words: str) -> None:
    called: list[dict[str, Any]] = []

    def record(payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        called.append(payload)
        return {}

    reg = ServiceRegistry()
    reg.register("test.record", record, SCHEMA)
    error = error_of(call(reg, "test.record", payload))
    assert (error["code"], error["field"]) == ("invalid", field)
    assert words in error["message"]
    assert called == []  # the handler never saw it


@pytest.mark.parametrize(
    "caller", ["", "   ", None, 42, "x" * 129, "\u0430gent:a", "agent\x00a", "agent a", "agent\na"]
)
def test_the_caller_must_say_who_it_is(caller: Any) -> None:
    error = error_of(call(registry(), "test.echo", {"name": "a"}, caller=caller))
    assert (error["code"], error["field"]) == ("invalid", "caller")


#: (exception a handler raises, code, field)
RAISED = [
    (ScheduleNotFound("sweep"), "not_found", "name"),
    (RunNotFound("run_1"), "not_found", "id"),
    (ProposalNotFound("prop_1"), "not_found", "id"),
    (InvalidSchedule("expression", "* *", "a 5-field cron"), "invalid", "expression"),
    (InvalidProposal([Finding(rule=Rule.REQUIRED, field="target", message="required")]), "invalid", "target"),
    (InvalidTransition("run_1", "succeeded", "replay"), "refused", None),
    (GuardRejected("run_1", "dead_lettered", "replay", "breaker open"), "refused", None),
    (StaleRun("run_1", "pending", "running", "start", holder="w2"), "refused", None),
    (DecisionRefused("prop_1", "agent-7 proposed it"), "refused", None),
    (StoreError("database error on sqlite: disk I/O error"), "unavailable", None),
    (ServiceError(ErrorCode.REFUSED, "not now", "when"), "refused", "when"),
    (RuntimeError("secret=hunter2"), "internal", None),
    (KeyError("x"), "internal", None),
    (TimeoutError("the handler's own timeout"), "internal", None),
]


@pytest.mark.parametrize(("exc", "code", "field"), RAISED, ids=[type(e).__name__ for e, _, _ in RAISED])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_handler_exceptions_become_error_answers(
    exc: Exception, code: str, field: str | None, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    def sync(payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        raise exc

    async def run_async(payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        raise exc

    reg = registry(boom=sync if kind == "sync" else run_async)
    with caplog.at_level(logging.INFO, logger="service_registry"):
        error = error_of(call(reg, "test.boom", {}))
    assert (error["code"], error["field"]) == (code, field)
    if code == "internal":
        assert "secret" not in error["message"]
        assert "test.boom failed unexpectedly" in error["message"]
        assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    elif code == "unavailable":
        assert error["message"] == f"the schedule store failed: {exc}; try again"
    else:
        assert error["message"] == (exc.message if isinstance(exc, ServiceError) else str(exc))


@pytest.mark.parametrize(
    "returned",
    [["a list"], "text", None, {"when": datetime(2027, 1, 1, tzinfo=UTC)}, {"x": float("inf")}],
    ids=["list", "str", "none", "datetime", "inf"],
)
def test_a_handler_that_returns_no_json_object_is_an_internal_error(returned: Any) -> None:
    reg = registry(bad=lambda payload, ctx: returned)
    assert error_of(call(reg, "test.bad", {}))["code"] == "internal"


def test_a_slow_handler_is_answered_unavailable_and_the_next_call_still_works() -> None:
    async def slow(payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    reg = ServiceRegistry(timeout_seconds=0.05)
    reg.register("test.slow", slow, TopicInput)
    reg.register("test.echo", echo, SCHEMA)
    error = error_of(call(reg, "test.slow", {}))
    assert error["code"] == "unavailable"
    assert "did not answer within 0.05s" in error["message"]
    assert call(reg, "test.echo", {"name": "a"})["ok"]


def test_registration_refuses_bad_names_duplicates_and_non_schemas() -> None:
    reg = registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("test.echo", echo, SCHEMA)
    for bad in ("echo", "Test.Echo", "test.", "test..x", "test.x-y"):
        with pytest.raises(ValueError, match="dotted lower-case"):
            reg.register(bad, echo, SCHEMA)
    with pytest.raises(TypeError, match="TopicInput subclass"):
        reg.register("test.other", echo, {"name": "string"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TopicInput subclass"):
        reg.register("test.other", echo, SCHEMA(name="a"))  # type: ignore[arg-type]
    assert reg.topics() == ["test.echo"]


def test_the_schema_describes_itself_for_callers_that_discover_topics() -> None:
    fields = {f["name"]: f for f in registry().schema("test.echo")}
    assert fields["name"] == {"name": "name", "type": "string", "required": True, "max_length": 8}
    assert fields["color"]["allowed"] == ["red", "green"]
    assert fields["count"] == {
        "name": "count",
        "type": "integer",
        "required": False,
        "minimum": 1,
        "maximum": 10,
        "default": 3,
    }
    assert fields["options"]["max_length"] == 20 and fields["tags"]["max_length"] == 2
    assert (fields["flag"]["type"], fields["flag"]["default"], fields["ratio"]["type"]) == ("boolean", False, "number")


@pytest.mark.parametrize(
    ("value", "single_line", "found"),
    [
        ("sw\x00eep", False, "'\\x00' at position 2"),
        ("sweep\udc80", False, "'\\udc80' at position 5"),
        ("\x1b[31m", False, "'\\x1b' at position 0"),
        ("sweep\n", True, "'\\n' at position 5"),
        ("a\u2028b", True, "'\\u2028' at position 1"),
    ],
)
def test_a_string_no_store_holds_is_refused_naming_the_field(value: str, single_line: bool, found: str) -> None:
    reg = ServiceRegistry()
    reg.register("test.text", echo, Line if single_line else Text)
    error = error_of(call(reg, "test.text", {"text": value}))
    assert (error["code"], error["field"]) == ("invalid", "text")
    assert error["message"].endswith(f"; found {found}")


def test_tab_and_newline_are_text_but_not_one_line() -> None:
    reg = ServiceRegistry()
    reg.register("test.text", echo, Text)
    reg.register("test.line", echo, Line)
    assert call(reg, "test.text", {"text": "two\nlines\tand a tab"})["ok"] is True
    assert error_of(call(reg, "test.line", {"text": "two\nlines"}))["field"] == "text"
    assert reg.schema("test.line")[0]["single_line"] is True
    assert "single_line" not in reg.schema("test.text")[0]


def test_a_payload_nested_too_deep_or_a_number_too_big_for_a_float_is_refused_naming_the_field() -> None:
    reg = ServiceRegistry()
    reg.register("test.shape", echo, Shape)
    nested: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        nested = {"a": nested}
    error = error_of(call(reg, "test.shape", {"o": nested}))
    assert (error["code"], error["field"], error["message"]) == (
        "invalid",
        "o",
        f"o: nested more than {MAX_JSON_DEPTH} deep",
    )
    assert call(reg, "test.shape", {"o": nested["a"]})["ok"] is True
    error = error_of(call(reg, "test.shape", {"n": 10**400}))
    assert (error["code"], error["field"]) == ("invalid", "n") and "above the maximum 10" in error["message"]
