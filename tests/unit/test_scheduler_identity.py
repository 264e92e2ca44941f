"""Caller identities: normalised, established by a door, and only a configured human approves."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.scheduler.identity import (
    POLICY,
    Approvers,
    Caller,
    CallerKind,
    Door,
    InvalidIdentity,
    normalize_identity,
    same_identity,
)

#: Everyone configured: if an agent were ever entitled, these approvers would let it through.
EVERYONE = Approvers.of(telegram_chats=[42, -100123], operators=["alice", "root", "agent-7"])


@pytest.mark.parametrize(
    ("given_id", "normal"),
    [
        ("agent:a", "agent:a"),
        ("agent:a ", "agent:a"),
        ("  Agent:A", "agent:a"),
        ("AGENT:A", "agent:a"),
        ("\uff41\uff47\uff45\uff4e\uff54:a", "agent:a"),  # fullwidth letters are the same letters (NFKC)
        ("telegram:-100123", "telegram:-100123"),
        ("ops.bot@host-1", "ops.bot@host-1"),
    ],
)
def test_identities_are_compared_without_case_spacing_or_width(given_id: str, normal: str) -> None:
    assert normalize_identity(given_id) == normal
    assert same_identity(given_id, normal)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "\u0430gent:a",  # Cyrillic a: a look-alike is refused, never taken for the ASCII letter
        "agent:\u03bf",  # Greek omicron
        "agent a",
        "agent\ta",
        "agent:a\n",
        "agent\x00a",
        "agent\u200ba",  # zero-width space
        "agent:\udc80",  # a lone surrogate
        "-agent",
        "x" * 129,
        "x" * 100_000,
        None,
        42,
        ["agent:a"],
    ],
)
def test_an_identity_that_does_not_normalise_is_refused_with_what_is_allowed(bad: object) -> None:
    with pytest.raises(InvalidIdentity, match="ASCII letters, digits") as caught:
        normalize_identity(bad)
    assert len(str(caught.value)) < 400
    assert not same_identity(bad, "agent:a")  # type: ignore[arg-type]


#: Every id an agent might present: its own with other spacing and case, a fresh one, ones that
#: look like a person's, a configured operator's name.
AGENT_IDS = [
    "agent-7",
    "agent-7 ",
    " AGENT-7",
    "\uff41gent-7",
    "agent-8-fresh",
    "alice",
    "root",
    "human:alice",
    "operator",
    "telegram-42",
]
#: Ids only a door gives (a Telegram chat, an operator) or the policy has: no agent may be named so.
HUMAN_OR_POLICY_IDS = [
    "telegram:42",
    "Telegram:42",
    "cli:alice",
    "CLI:root",
    "\uff43li:alice",
    "policy",
    " POLICY ",
    "host",
    "Host",
]


@pytest.mark.parametrize("agent_id", AGENT_IDS)
def test_an_agent_never_approves_whatever_its_id(agent_id: str) -> None:
    caller = Caller.agent(agent_id)
    assert caller.kind is CallerKind.AGENT and caller.door is Door.REGISTRY
    refusal = EVERYONE.refusal(caller)
    assert refusal is not None and "is an agent" in refusal


@pytest.mark.parametrize("taken", HUMAN_OR_POLICY_IDS)
def test_an_agent_cannot_take_a_human_or_the_policy_id(taken: str) -> None:
    with pytest.raises(InvalidIdentity, match="an agent's id cannot be 'policy' or 'host', or start with telegram:"):
        Caller.agent(taken)


@settings(max_examples=200)
@given(st.text(max_size=40) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@ -]{0,30}", fullmatch=True))
def test_no_text_makes_an_agent_an_approver(text: str) -> None:
    try:
        caller = Caller.agent(text)
    except InvalidIdentity:
        return
    assert EVERYONE.refusal(caller) is not None


def test_a_configured_telegram_chat_and_a_configured_operator_approve_and_nobody_else() -> None:
    assert EVERYONE.refusal(Caller.telegram(42)) is None
    assert EVERYONE.refusal(Caller.telegram(-100123)) is None
    assert EVERYONE.refusal(Caller.operator("alice")) is None
    # User names are case-sensitive: "Alice" is another account, and no operator identity at all.
    for other_account in ("Alice", " alice", "\uff41lice"):
        with pytest.raises(InvalidIdentity, match="its own normal form"):
            Caller.operator(other_account)
    assert EVERYONE.refusal(Caller.telegram(43)) == "Telegram chat 43 is not an approver (TELEGRAM_APPROVER_CHAT_IDS)"
    assert EVERYONE.refusal(Caller.operator("bob")) == "operator 'bob' is not an approver (ACTP_APPROVER_OPERATORS)"
    # An operator entry that looks like an agent's id entitles the operator of that name, not the agent.
    assert EVERYONE.refusal(Caller.operator("agent-7")) is None
    assert EVERYONE.refusal(Caller.agent("agent-7")) is not None
    for other in (POLICY, Caller.host(), Caller.host("scripts")):
        refusal = EVERYONE.refusal(other)
        assert refusal is not None and "not a human approver" in refusal
    assert EVERYONE.refusal("cli:alice") == "str is not a caller identity established by a door"  # type: ignore[arg-type]
    nobody = Approvers()
    assert nobody.refusal(Caller.telegram(42)) is not None and nobody.refusal(Caller.operator("alice")) is not None
    assert nobody.describe() == "Telegram chats: none; operators: none"
    assert EVERYONE.describe() == "Telegram chats: -100123, 42; operators: agent-7, alice, root"


def test_doors_name_their_callers_and_refuse_what_they_cannot_name() -> None:
    assert Caller.telegram(42) == Caller(CallerKind.HUMAN, "telegram:42", Door.TELEGRAM)
    assert str(Caller.operator("alice")) == "cli:alice"
    assert Caller.agent(" Planner ").id == "planner"
    for bad_chat in (True, "42", 4.2):
        with pytest.raises(InvalidIdentity):
            Caller.telegram(bad_chat)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentity):
        Caller.operator("\u0430lice")
    with pytest.raises(ValueError, match="whole-number chat ids"):
        Approvers.of(telegram_chats=["42"])  # type: ignore[list-item]
    for bad in ("al ice", "Alice"):
        with pytest.raises(InvalidIdentity):
            Approvers.of(operators=[bad])


@pytest.mark.parametrize(
    ("kind", "given_id", "door"),
    [
        (CallerKind.HUMAN, "alice", Door.CLI),  # a person without the door that names them
        (CallerKind.HUMAN, "telegram:0042", Door.TELEGRAM),  # chat 42 spelled another way
        (CallerKind.HUMAN, "cli:alice", Door.TELEGRAM),  # one door's person at another door
        (CallerKind.HUMAN, "api:x", Door.API),  # no door that vouches for a person
        (CallerKind.HUMAN, "telegram:", Door.TELEGRAM),
    ],
)
def test_a_person_is_named_only_as_their_door_names_them(kind: CallerKind, given_id: str, door: Door) -> None:
    with pytest.raises(InvalidIdentity, match="as that door names them"):
        Caller(kind, given_id, door)
