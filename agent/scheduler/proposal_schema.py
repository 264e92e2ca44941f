"""The proposal format: a pydantic model of the JSON an agent sends, and its refusals as findings.

:class:`ProposalInput` declares each field once: its JSON key, its type (strict, as JSON has it: a
boolean is not a number, ``"3"`` is not a count), its bounds and, as its description, what it
allows. :func:`check_proposal` validates a raw proposal against it and puts pydantic's errors in
words: one :class:`Finding` per bad field, naming the field (and the place inside it, for a nested
value), the value and what is allowed. Unknown keys are refused by name before pydantic reads
anything, since pydantic cannot read a key holding a lone surrogate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, ValidationError
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from . import limits, triggers
from .enums import ConcurrencyPolicy, MissedRunPolicy, RiskTier, ShutdownPolicy, TriggerType
from .errors import InvalidSchedule, short
from .identity import IDENTITY_HELP, InvalidIdentity, normalize_identity
from .schedule_policy import Finding, Rule

__all__ = [
    "MAX_CAPABILITIES",
    "MAX_COUNT",
    "OBJECTIVE_CHARS",
    "ProposalInput",
    "check_proposal",
    "json_keys",
]

#: Longest objective, in characters.
OBJECTIVE_CHARS = 2000
#: The most capability scopes a proposal may ask for.
MAX_CAPABILITIES = 32
#: Counts (retries, breaker threshold) above this are refused by the schema, before any policy.
MAX_COUNT = min(limits.MAX_RETRIES, limits.MAX_BREAKER_THRESHOLD)
#: Longest duration text (``"15m"``), in characters.
DURATION_CHARS = 32
#: The error type of a refusal by one of the checks below (pydantic's own errors have theirs).
_REFUSED = "proposal_refused"
#: Largest number of seconds an expression may be given as (its text must stay short).
EXPRESSION_NUMBER_BOUND = 10**15


def _refused(rule: Rule, allowed: str) -> PydanticCustomError:
    """A refusal inside validation: the rule it breaks and what is allowed, read back by ``check_proposal``."""
    return PydanticCustomError(_REFUSED, "{allowed}", {"rule": rule.value, "allowed": allowed})


@dataclass(frozen=True, slots=True)
class Text:
    """``Annotated`` metadata: a string of at most ``chars`` characters that both stores hold.

    ``single_line`` also refuses every control character and line separator; ``min_chars`` and
    ``says_something`` (not only blanks) refuse short ones; ``kind`` says what else than a string
    the field allows, for the error of a value that is not one.
    """

    chars: int
    single_line: bool = True
    min_chars: int = 0
    says_something: bool = False
    kind: str | None = None

    @property
    def allowed(self) -> str:
        """What the field allows, in words."""
        return limits.text_help(self.chars, single_line=self.single_line)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        text = core_schema.str_schema(max_length=self.chars, min_length=self.min_chars or None)
        return core_schema.no_info_plain_validator_function(self._check, json_schema_input_schema=text)

    def _check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _refused(Rule.WRONG_TYPE, self.kind or self.allowed)
        if len(value) > self.chars:
            raise _refused(Rule.TOO_LONG, f"{self.allowed}; got {len(value)} characters")
        problem = limits.text_problem(value, single_line=self.single_line)
        if problem is not None:
            raise _refused(Rule.WRONG_TYPE, f"{self.allowed}; found {problem}")
        if len(value) < self.min_chars:
            raise _refused(Rule.WRONG_TYPE, f"at least {self.min_chars} character(s): {self.allowed}")
        if self.says_something and not value.strip():
            raise _refused(Rule.WRONG_TYPE, "a string that says something")
        return value


@dataclass(frozen=True, slots=True)
class Duration:
    """``Annotated`` metadata: a duration above 0 and at most ``high``, as seconds, ``"15m"`` or a timedelta."""

    high: timedelta

    @property
    def allowed(self) -> str:
        """What the field allows, in words."""
        return (
            f"a duration above 0 and at most {limits.describe(self.high)}: "
            'seconds as a number, or "90s", "15m", "2h", "1d"'
        )

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        given = core_schema.union_schema([core_schema.float_schema(gt=0), core_schema.str_schema(max_length=32)])
        return core_schema.no_info_plain_validator_function(self._parse, json_schema_input_schema=given)

    def _parse(self, value: Any) -> timedelta:
        if isinstance(value, str) and len(value) > DURATION_CHARS:
            raise _refused(Rule.TOO_LONG, f"at most {DURATION_CHARS} characters: {self.allowed}")
        if not isinstance(value, str | int | float | timedelta) or isinstance(value, bool):
            raise _refused(Rule.WRONG_TYPE, self.allowed)
        try:
            span = triggers.parse_duration(value)
        except InvalidSchedule:
            raise _refused(Rule.WRONG_TYPE, self.allowed) from None
        if span > self.high:
            raise _refused(Rule.WRONG_TYPE, self.allowed)
        return span


@dataclass(frozen=True, slots=True)
class OneOf:
    """``Annotated`` metadata for a ``StrEnum`` field: exactly one of its values (a string), as the member."""

    def __get_pydantic_core_schema__(self, source: type[StrEnum], handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            source, core_schema.literal_schema([member.value for member in source])
        )


def _identity(value: Any) -> str:
    try:
        return normalize_identity(value)
    except InvalidIdentity:
        raise _refused(Rule.WRONG_TYPE, f"an identity: {IDENTITY_HELP}") from None


def _seconds_as_text(value: Any) -> Any:
    """An expression given as a number of seconds (interval), as text; a huge number is refused first."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not abs(value) < EXPRESSION_NUMBER_BOUND:
            raise _refused(Rule.WRONG_TYPE, "a number of seconds below 10**15")
        return repr(value) if isinstance(value, float) else str(value)
    return value


def _capabilities(value: Any) -> Any:
    """A list as a tuple, refused before its items are looked at when it has too many of them."""
    if isinstance(value, list | tuple) and len(value) > MAX_CAPABILITIES:
        raise _refused(Rule.TOO_LONG, f"{_CAPABILITIES_HELP}; got {len(value)} items")
    return tuple(value) if isinstance(value, list) else value


def _unique(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(value))


def _one_of(cls: type[StrEnum]) -> str:
    return "one of: " + ", ".join(member.value for member in cls)


def _count(low: int) -> Any:
    return Field(default=None, ge=low, le=MAX_COUNT, description=f"a whole number from {low} to {MAX_COUNT}")


_NAME = Text(limits.NAME_CHARS)
_SCOPE = Text(limits.NAME_CHARS, min_chars=1)
_EXPRESSION_KIND = "a string (or, for interval, a number of seconds)"
_EXPRESSION = Text(limits.EXPRESSION_CHARS, kind=_EXPRESSION_KIND)
_CAPABILITIES_HELP = f"a list of at most {MAX_CAPABILITIES} scopes, each {_SCOPE.allowed}"


class ProposalInput(BaseModel):
    """A proposal as JSON: the keys an agent may send, each checked; ``None``: left out (the policy decides).

    Field names are :class:`~agent.scheduler.proposals.ScheduleProposal`'s attributes; the aliases
    (``timeout_s``...) are the JSON keys, which is what findings name.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: Annotated[str, _NAME] = Field(description=_NAME.allowed)
    trigger_type: Annotated[TriggerType, OneOf()] = Field(description=_one_of(TriggerType))
    expression: Annotated[str, _EXPRESSION, BeforeValidator(_seconds_as_text)] = Field(description=_EXPRESSION_KIND)
    target: Annotated[str, _NAME] = Field(description=_NAME.allowed)
    objective: Annotated[str, Text(OBJECTIVE_CHARS, single_line=False, says_something=True)] = Field(
        description=limits.text_help(OBJECTIVE_CHARS)
    )
    proposed_by: Annotated[str, BeforeValidator(_identity)] = Field(description=f"an identity: {IDENTITY_HELP}")
    timezone: Annotated[str, Text(limits.TIMEZONE_CHARS)] | None = Field(
        default=None, description=limits.text_help(limits.TIMEZONE_CHARS, single_line=True)
    )
    params: dict[Any, Any] | None = Field(default=None, description="a JSON object")
    missed_run_policy: Annotated[MissedRunPolicy, OneOf()] | None = Field(
        default=None, description=_one_of(MissedRunPolicy)
    )
    concurrency_policy: Annotated[ConcurrencyPolicy, OneOf()] | None = Field(
        default=None, description=_one_of(ConcurrencyPolicy)
    )
    shutdown_policy: Annotated[ShutdownPolicy, OneOf()] | None = Field(
        default=None, description=_one_of(ShutdownPolicy)
    )
    timeout: Annotated[timedelta, Duration(limits.MAX_TIMEOUT)] | None = Field(
        default=None, alias="timeout_s", description=Duration(limits.MAX_TIMEOUT).allowed
    )
    max_retries: int | None = _count(0)
    retry_backoff: Annotated[timedelta, Duration(limits.MAX_RETRY_BACKOFF)] | None = Field(
        default=None, alias="retry_backoff_s", description=Duration(limits.MAX_RETRY_BACKOFF).allowed
    )
    breaker_threshold: int | None = _count(1)
    risk_estimate: Annotated[RiskTier, OneOf()] | None = Field(default=None, description=_one_of(RiskTier))
    capabilities: (
        Annotated[
            tuple[Annotated[str, _SCOPE], ...],
            Field(max_length=MAX_CAPABILITIES),
            BeforeValidator(_capabilities),
        ]
        | None
    ) = Field(default=None, description=_CAPABILITIES_HELP)
    bundle: Annotated[str, _NAME] | None = Field(default=None, description=_NAME.allowed)
    typical_duration: Annotated[timedelta, Duration(limits.MAX_TIMEOUT)] | None = Field(
        default=None, alias="typical_duration_s", description=Duration(limits.MAX_TIMEOUT).allowed
    )

    @property
    def given(self) -> dict[str, Any]:
        """The fields the proposal set, by attribute name, with their checked values (scopes once each)."""
        values = {name: getattr(self, name) for name in self.model_fields_set}
        if values.get("capabilities") is not None:
            values["capabilities"] = _unique(values["capabilities"])
        return values


def json_keys() -> dict[str, str]:
    """Each field's JSON key by attribute name, in the format's order."""
    return {name: info.alias or name for name, info in ProposalInput.model_fields.items()}


_KEYS = json_keys()
_BY_KEY = {key: name for name, key in _KEYS.items()}


def check_proposal(data: Any, *, by_attribute: bool = False) -> tuple[ProposalInput | None, list[Finding]]:
    """``(the checked proposal, [])``, or ``(None, findings)`` naming every bad field; never raises.

    ``data`` is the JSON object an agent sent (keys as in JSON, ``null`` meaning left out), or with
    ``by_attribute`` a mapping keyed by attribute name (``timeout`` for ``timeout_s``).
    """
    if not isinstance(data, Mapping):
        return None, [Finding(rule=Rule.NOT_AN_OBJECT, field="", message=f"{short(data)}: a JSON object")]
    names = _KEYS if by_attribute else _BY_KEY
    problems = [
        Finding(
            rule=Rule.UNKNOWN_FIELD,
            field=limits.escaped(key, limits.NAME_CHARS) if isinstance(key, str) else short(key),
            message="not a proposal field; known: " + ", ".join(_KEYS.values()),
        )
        for key in data
        if not isinstance(key, str) or key not in names
    ]
    given = {_KEYS[key] if by_attribute else key: value for key, value in data.items() if key in names}
    present = {key: value for key, value in given.items() if value is not None}
    try:
        checked = ProposalInput.model_validate(present)
    except ValidationError as exc:
        problems += _findings(exc, present)
        return None, problems
    if problems:
        return None, problems
    return checked, []


def _findings(exc: ValidationError, given: Mapping[str, Any]) -> list[Finding]:
    """The first error of each field pydantic refused, in the format's order, in words."""
    out: dict[str, Finding] = {}
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        key = str(loc[0]) if loc else ""
        if key in out:
            continue
        kind = error["type"]
        if kind == "missing":
            out[key] = Finding(rule=Rule.REQUIRED, field=key, message="required")
            continue
        ctx = error.get("ctx") or {}
        if kind == _REFUSED:
            rule, allowed = Rule(ctx["rule"]), str(ctx["allowed"])
        elif kind == "too_long":
            rule, allowed = Rule.TOO_LONG, f"{_description(key)}; got {ctx['actual_length']} items"
        else:
            rule, allowed = Rule.WRONG_TYPE, _description(key)
        if len(loc) > 1:
            where = key + "".join(f"[{short(step)}]" for step in loc[1:])
            message = f"{short(error.get('input'))} at {where}: {allowed}"
        else:
            message = f"{short(given.get(key))}: {allowed}"
        out[key] = Finding(rule=rule, field=key, message=message)
    order = list(_BY_KEY)
    return sorted(out.values(), key=lambda f: order.index(f.field) if f.field in order else len(order))


def _description(key: str) -> str:
    info = ProposalInput.model_fields.get(_BY_KEY.get(key, key))
    return (info.description if info is not None else None) or "a value this field allows"
