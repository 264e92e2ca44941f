"""The proposal format's refusals: each kind of bad input names its field, the place inside it and what it allows."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from agent.scheduler.proposal_schema import MAX_CAPABILITIES, ProposalInput, check_proposal, json_keys
from agent.scheduler.proposals import InvalidProposal, ScheduleProposal, parse_proposal
from agent.scheduler.schedule_policy import Rule
from tests.unit.test_schedule_proposals_validation import DROP, proposal

LINE = "a single line of at most 128 characters, without control characters or lone surrogates"
COUNT = "a whole number from 0 to "
DURATION = 'a duration above 0 and at most 7 days: seconds as a number, or "90s", "15m", "2h", "1d"'

#: (case, the proposal, rule, field, words the message holds: the value, where, what is allowed).
CASES: list[tuple[str, Any, Rule, str, tuple[str, ...]]] = [
    ("not an object", ["name"], Rule.NOT_AN_OBJECT, "", ("['name']: a JSON object",)),
    ("missing", proposal(target=DROP), Rule.REQUIRED, "target", ("required",)),
    ("null required", proposal(objective=None), Rule.REQUIRED, "objective", ("required",)),
    ("unknown key", proposal(timeout=5), Rule.UNKNOWN_FIELD, "timeout", ("not a proposal field", "timeout_s")),
    ("lone surrogate key", {**proposal(), "a\ud800": 1}, Rule.UNKNOWN_FIELD, "a\\ud800", ("known: name",)),
    ("number as name", proposal(name=7), Rule.WRONG_TYPE, "name", (f"7: {LINE}",)),
    ("name too long", proposal(name="n" * 129), Rule.TOO_LONG, "name", (LINE, "got 129 characters")),
    ("control in name", proposal(name="a\x00b"), Rule.WRONG_TYPE, "name", (LINE, "found '\\x00' at position 1")),
    ("surrogate in name", proposal(name="a\udc80"), Rule.WRONG_TYPE, "name", ("found '\\udc80' at position 1",)),
    ("boolean expression", proposal(expression=True), Rule.WRONG_TYPE, "expression", ("True: a string (or, for",)),
    ("huge expression number", proposal(expression=10**20), Rule.WRONG_TYPE, "expression", ("below 10**15",)),
    ("blank objective", proposal(objective=" \n"), Rule.WRONG_TYPE, "objective", ("a string that says something",)),
    ("enum value", proposal(trigger_type="hourly"), Rule.WRONG_TYPE, "trigger_type", ("'hourly': one of: lifecycle",)),
    ("enum as bytes", proposal(trigger_type=b"interval"), Rule.WRONG_TYPE, "trigger_type", ("one of: lifecycle",)),
    ("policy case", proposal(concurrency_policy="Forbid"), Rule.WRONG_TYPE, "concurrency_policy", ("one of: forbid",)),
    ("identity", proposal(proposed_by="agent 7!"), Rule.WRONG_TYPE, "proposed_by", ("an identity",)),
    ("params list", proposal(params=[1]), Rule.WRONG_TYPE, "params", ("[1]: a JSON object",)),
    ("boolean count", proposal(max_retries=True), Rule.WRONG_TYPE, "max_retries", (f"True: {COUNT}",)),
    ("text count", proposal(max_retries="3"), Rule.WRONG_TYPE, "max_retries", (f"'3': {COUNT}",)),
    (
        "float count",
        proposal(breaker_threshold=3.0),
        Rule.WRONG_TYPE,
        "breaker_threshold",
        ("3.0: a whole number from 1",),
    ),
    ("count below", proposal(breaker_threshold=0), Rule.WRONG_TYPE, "breaker_threshold", ("0: a whole number from 1",)),
    ("huge count", proposal(max_retries=10**5000), Rule.WRONG_TYPE, "max_retries", ("an integer of", COUNT)),
    ("boolean duration", proposal(timeout_s=False), Rule.WRONG_TYPE, "timeout_s", (f"False: {DURATION}",)),
    ("nan duration", proposal(timeout_s=math.nan), Rule.WRONG_TYPE, "timeout_s", (DURATION,)),
    ("duration too big", proposal(typical_duration_s="8d"), Rule.WRONG_TYPE, "typical_duration_s", (DURATION,)),
    ("backoff too big", proposal(retry_backoff_s="2h"), Rule.WRONG_TYPE, "retry_backoff_s", ("at most 1 hour",)),
    ("duration text too long", proposal(timeout_s="1" * 40), Rule.TOO_LONG, "timeout_s", ("at most 32 characters",)),
    ("scopes not a list", proposal(capabilities="fs:tmp"), Rule.WRONG_TYPE, "capabilities", ("a list of at most 32",)),
    (
        "too many scopes",
        proposal(capabilities=[f"s{i}" for i in range(MAX_CAPABILITIES + 1)]),
        Rule.TOO_LONG,
        "capabilities",
        ("a list of at most 32 scopes", "got 33 items"),
    ),
    (
        "a huge list of bad scopes",  # refused for its length before any item is looked at
        proposal(capabilities=[5] * 100_000),
        Rule.TOO_LONG,
        "capabilities",
        ("a list of at most 32 scopes", "got 100000 items"),
    ),
    (
        "scope not text",
        proposal(capabilities=["fs:tmp", 5]),
        Rule.WRONG_TYPE,
        "capabilities",
        (f"5 at capabilities[1]: {LINE}",),
    ),
    ("empty scope", proposal(capabilities=["fs:tmp", ""]), Rule.WRONG_TYPE, "capabilities", ("'' at capabilities[1]",)),
    (
        "scope of two lines",
        proposal(capabilities=["a\nb"]),
        Rule.WRONG_TYPE,
        "capabilities",
        ("at capabilities[0]", "found '\\n'"),
    ),
    (
        "long scope",
        proposal(capabilities=["s" * 200]),
        Rule.TOO_LONG,
        "capabilities",
        ("at capabilities[0]", "got 200 characters"),
    ),
]


@pytest.mark.parametrize(("case", "data", "rule", "field", "words"), CASES, ids=[c[0] for c in CASES])
def test_each_bad_input_names_its_field_and_what_is_allowed(
    case: str, data: Any, rule: Rule, field: str, words: tuple[str, ...]
) -> None:
    parsed, findings, defaults = parse_proposal(data)
    assert parsed is None and defaults == {}
    [finding] = findings
    assert (finding.rule, finding.field) == (rule, field), finding
    for word in words:
        assert word in finding.message, finding.message
    assert len(finding.message) < 600
    with pytest.raises(InvalidProposal) as caught:
        ScheduleProposal.from_dict(data)
    assert f"{rule.value} ({field})" in str(caught.value)


def test_every_bad_field_is_listed_once_in_the_formats_order_unknown_keys_first() -> None:
    data = proposal(capabilities=[1, 2], junk=1, max_retries=False, name=DROP, trigger_type="x")
    _, findings, _ = parse_proposal(data)
    assert [(f.rule.value, f.field) for f in findings] == [
        ("unknown_field", "junk"),
        ("required", "name"),
        ("wrong_type", "trigger_type"),
        ("wrong_type", "max_retries"),
        ("wrong_type", "capabilities"),
    ]


def test_a_valid_proposal_is_typed_and_its_scopes_kept_once_in_order() -> None:
    checked, findings = check_proposal(proposal(expression=90, capabilities=["b", "a", "b"], timeout_s="5m"))
    assert findings == [] and checked is not None
    assert checked.expression == "90" and checked.timeout == timedelta(minutes=5)
    assert checked.given["capabilities"] == ("b", "a")
    assert "retry_backoff" not in checked.given  # left out: the policy decides


def test_keyword_construction_is_checked_by_the_same_model_and_names_the_json_key() -> None:
    with pytest.raises(InvalidProposal) as caught:
        ScheduleProposal(
            name="n",
            trigger_type="interval",  # type: ignore[arg-type]
            expression="1h",
            target="sweep",
            objective="o",
            proposed_by="a",
            max_retries=True,
            retry_backoff=timedelta(hours=2),
        )
    assert [(f.rule.value, f.field) for f in caught.value.findings] == [
        ("wrong_type", "max_retries"),
        ("wrong_type", "retry_backoff_s"),
    ]


def test_the_model_describes_each_json_key_with_what_it_allows() -> None:
    schema = ProposalInput.model_json_schema(by_alias=True)
    assert list(schema["properties"]) == list(json_keys().values())
    assert set(schema["required"]) == {"name", "trigger_type", "expression", "target", "objective", "proposed_by"}
    for key, spec in schema["properties"].items():
        assert spec.get("description"), key
    assert schema["properties"]["max_retries"]["description"].startswith(COUNT)
