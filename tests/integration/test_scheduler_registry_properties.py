"""Every scheduler topic, any payload, on SQLite and on PostgreSQL: an answer, or the topic's error naming
the field; never an internal error and never a store error leaking a driver's complaint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.scheduler import FakeClock, ScheduleStore
from agent.scheduler.adapters.service_registry import register_scheduler_topics
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.identity import Approvers, Caller
from agent.scheduler.proposals import ProposalService
from service_registry import ServiceRegistry
from tests.integration.test_scheduler_registry_topics import TOPICS, Work, add_schedules, proposal
from tests.unit.test_schedule_proposals_validation import ANY_PROPOSAL

#: Any character at all: controls, NUL, lone surrogates, private use, unassigned.
ANY_CHAR = st.characters(codec=None, categories=None, exclude_categories=())
#: Texts that reach the store unless something stops them first, and names that exist.
HOSTILE = [
    "sw\x00eep",
    "sweep\udc80",
    "\ud800",
    "sweep\n",
    "sweep\r\nx",
    "\x1b[31msweep",
    "\u202esweep",
    "\uff53weep",
    "\u0455weep",
    "sweep\u200b",
    "",
    " ",
    "nope",
]
EXISTING = ["sweep", "fragile", "retired", "nightly", "on_stall", "held", "lonely"]
TEXT = (
    st.sampled_from(HOSTILE)
    | st.sampled_from(EXISTING)
    | st.text(ANY_CHAR, max_size=40)
    | st.builds(
        lambda a, b, c: a + b + c, st.sampled_from(EXISTING), st.sampled_from(HOSTILE), st.sampled_from(EXISTING)
    )
    | st.integers(0, 3).map(lambda n: "x" * (127 + n))
)
NUMBER = st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30)
JUNK = st.none() | st.booleans() | NUMBER | TEXT | st.lists(TEXT, max_size=3) | st.dictionaries(TEXT, TEXT, max_size=3)
CALLERS = st.sampled_from(["agent:ops-7", Caller.telegram(42), Caller.operator("alice"), Caller.agent("AGENT:x ")])


def value_for(field: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for one schema field: mostly of its type and near its bounds, sometimes anything."""
    typed: st.SearchStrategy[Any]
    if field["type"] == "string":
        typed = TEXT | st.sampled_from(field.get("allowed") or ["sweep"])
    elif field["type"] == "integer":
        low, high = field.get("minimum", -5), field.get("maximum", 500)
        typed = st.integers(int(low) - 2, int(high) + 2) | st.integers()
    elif field["type"] == "boolean":
        typed = st.booleans()
    elif field["type"] == "object":
        typed = ANY_PROPOSAL | st.builds(proposal) | st.dictionaries(TEXT, JUNK, max_size=4)
    else:
        typed = JUNK
    return typed | JUNK


@st.composite
def calls(draw: st.DrawFn, schemas: dict[str, list[dict[str, Any]]]) -> tuple[str, Any]:
    topic = draw(st.sampled_from(TOPICS))
    payload: dict[Any, Any] = {}
    for field in schemas[topic]:
        if field["required"] or draw(st.booleans()):
            payload[field["name"]] = draw(value_for(field))
    if draw(st.integers(0, 9)) == 0:
        payload[draw(TEXT)] = draw(JUNK)
    return topic, payload


@pytest.fixture
def world(any_url: str, clock: FakeClock, make_schedule: Any) -> Iterator[tuple[ServiceRegistry, ScheduleStore]]:
    with ScheduleStore(any_url, clock=clock) as store:
        add_schedules(store, make_schedule)
        tasks = Work().registry()
        engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1")
        service = ProposalService(store, tasks, clock, approvers=Approvers.of(telegram_chats=[42], operators=["alice"]))
        registry = ServiceRegistry()
        register_scheduler_topics(registry, store=store, engine=engine, tasks=tasks, proposals=service)
        try:
            yield registry, store
        finally:
            registry.close()


def test_any_payload_to_any_topic_is_answered_or_refused_naming_the_field(
    world: tuple[ServiceRegistry, ScheduleStore],
) -> None:
    registry, _ = world
    schemas = {topic: registry.schema(topic) for topic in TOPICS}
    loop = asyncio.new_event_loop()
    seen: dict[str, int] = {}

    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(call=calls(schemas), caller=CALLERS)
    def check(call: tuple[str, Any], caller: Any) -> None:
        topic, payload = call
        answer = loop.run_until_complete(registry.call(topic, payload, caller=caller))
        if answer["ok"]:
            seen["ok"] = seen.get("ok", 0) + 1
            return
        error = answer["error"]
        seen[error["code"]] = seen.get(error["code"], 0) + 1
        assert error["code"] in ("invalid", "not_found", "refused"), (topic, payload, error)
        if error["code"] == "invalid":
            assert error["field"] is not None, (topic, payload, error)
            inner = payload.get("proposal") if isinstance(payload.get("proposal"), dict) else {}
            named = {str(k)[:64] for k in (*payload, *inner)}
            assert error["field"] in named, (topic, payload, error)
        assert len(error["message"]) < 2000

    try:
        check()
    finally:
        loop.close()
    assert seen.get("ok", 0) > 0 and seen.get("invalid", 0) > 0, seen
