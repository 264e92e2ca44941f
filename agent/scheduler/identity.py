"""Who is calling: identities given by the door a caller came through, and who may approve proposals.

A caller never names itself. The host gives each agent a registry handle that carries the agent's
identity; the Telegram bot names the chat Telegram delivered the message from; the command line
names the operating-system user running it. Only a human named in :class:`Approvers` (configured
Telegram chats and local operators) may approve or reject a proposal; an agent never may,
whatever its id looks like. Identities are compared after :func:`normalize_identity`, so ``"Agent:A "``
and ``"agent:a"`` are one identity, and a look-alike letter from another script is refused, not
confused with the ASCII one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .enums import CallerKind, RiskTier
from .errors import short

#: An identity after normalisation: lower-case ASCII letters, digits and ``_ . : @ -``, starting with
#: a letter or digit, at most IDENTITY_CHARS characters.
IDENTITY_CHARS = 128
IDENTITY_PATTERN = re.compile(rf"[a-z0-9][a-z0-9_.:@-]{{0,{IDENTITY_CHARS - 1}}}")
IDENTITY_HELP = (
    f"1-{IDENTITY_CHARS} characters: ASCII letters, digits and _ . : @ -, starting with a letter or digit "
    "(compared without case and surrounding spaces)"
)
#: Who is recorded as deciding what the proposal policy decided by itself (auto-approval, expiry).
POLICY_ID = "policy"
#: Host code in the worker's process (``engine.emit``, scripts on the Python API), as records name it.
HOST_ID = "host"


class InvalidIdentity(ValueError):
    """A caller identity that is not allowed (empty, too long, control or non-ASCII characters, or an
    agent id in a human's or the policy's namespace)."""

    def __init__(self, value: Any, allowed: str = IDENTITY_HELP) -> None:
        self.value = value
        super().__init__(f"identity {short(value)}: {allowed}")


class Door(StrEnum):
    """How a caller reached the scheduler; recorded with every decision on a proposal."""

    #: The service registry, through a handle the host gave an agent.
    REGISTRY = "registry"
    #: The Telegram operator bot; the identity is the chat Telegram delivered the message from.
    TELEGRAM = "telegram"
    #: The command line; the identity is the operating-system user running it.
    CLI = "cli"
    #: The proposal policy itself.
    POLICY = "policy"
    #: Host code calling the Python API in the worker's process.
    API = "api"


#: The doors that vouch for a person; a person's id is ``<door>:<who>``, so no agent's id may start so.
HUMAN_DOORS = (Door.TELEGRAM, Door.CLI)
HUMAN_PREFIXES = tuple(f"{door.value}:" for door in HUMAN_DOORS)


def normalize_identity(value: Any) -> str:
    """The canonical form of an identity: NFKC, surrounding spaces removed, lower case; InvalidIdentity
    when it is not a string, holds any control or invisible character, or, so normalised, is not made
    of IDENTITY_PATTERN's characters."""
    if not isinstance(value, str) or len(value) > 4 * IDENTITY_CHARS:
        raise InvalidIdentity(value)
    text = unicodedata.normalize("NFKC", value)
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise InvalidIdentity(value)  # control, format (zero-width...), surrogate, private or unassigned
    text = text.strip(" ").casefold()
    if not IDENTITY_PATTERN.fullmatch(text):
        raise InvalidIdentity(value)
    return text


def operator_name(user: Any) -> str:
    """``user`` if it is a user name as an operator identity: already in its normalised form, since two
    accounts whose names differ only in case or width are two people; InvalidIdentity otherwise."""
    if normalize_identity(user) != user:
        raise InvalidIdentity(user, f"a user name that is its own normal form: {IDENTITY_HELP}, in lower case")
    return str(user)


def same_identity(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` normalise to one identity; a value that does not normalise matches nothing."""
    try:
        return normalize_identity(a) == normalize_identity(b)
    except InvalidIdentity:
        return False


@dataclass(frozen=True, slots=True)
class Caller:
    """An identity as a door established it: what it is, its normalised id, and the door.

    Build one with :meth:`agent`, :meth:`telegram`, :meth:`operator`, :meth:`host` or :data:`POLICY`;
    ``str(caller)`` is its id, which is what the store records.
    """

    kind: CallerKind
    id: str
    door: Door

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", CallerKind(self.kind))
        object.__setattr__(self, "door", Door(self.door))
        object.__setattr__(self, "id", normalize_identity(self.id))
        prefix = f"{self.door.value}:"
        if self.kind is CallerKind.HUMAN and (self.door not in HUMAN_DOORS or not _human_id(self.id, prefix)):
            # A person is named by the door that vouches for them, in its one spelling.
            raise InvalidIdentity(
                self.id, f"a person at the {self.door.value} door is {prefix}<who>, as that door names them"
            )
        if self.kind is CallerKind.AGENT and (self.id.startswith(HUMAN_PREFIXES) or self.id in (POLICY_ID, HOST_ID)):
            # Else an agent could pose as a human in the records, or poison a human's proposer history.
            reserved = ", ".join(f"{p}..." for p in HUMAN_PREFIXES)
            raise InvalidIdentity(
                self.id, f"an agent's id cannot be {POLICY_ID!r} or {HOST_ID!r}, or start with {reserved}"
            )

    @classmethod
    def agent(cls, name: str) -> Caller:
        """The agent the host named ``name``, calling through its registry handle."""
        return cls(CallerKind.AGENT, name, Door.REGISTRY)

    @classmethod
    def telegram(cls, chat_id: int) -> Caller:
        """A person writing from Telegram chat ``chat_id`` (as Telegram delivered it to the bot)."""
        if isinstance(chat_id, bool) or not isinstance(chat_id, int):
            raise InvalidIdentity(chat_id)
        return cls(CallerKind.HUMAN, f"telegram:{chat_id}", Door.TELEGRAM)

    @classmethod
    def operator(cls, user: str) -> Caller:
        """The operating-system user ``user`` at the local command line; its name must already be
        canonical (user names are case-sensitive: ``Alice`` is another account than ``alice``)."""
        return cls(CallerKind.HUMAN, f"cli:{operator_name(user)}", Door.CLI)

    @classmethod
    def host(cls, name: str = HOST_ID) -> Caller:
        """Host code in the worker's process (a task module, a script using the Python API)."""
        return cls(CallerKind.SYSTEM, name, Door.API)

    @property
    def is_agent(self) -> bool:
        """True for an agent."""
        return self.kind is CallerKind.AGENT

    def __str__(self) -> str:
        return self.id


def _human_id(text: str, prefix: str) -> bool:
    """True when ``text`` is ``prefix`` and a name as its door spells it: a chat id's decimal digits
    (no leading zeros), or a user name in its normal form."""
    if not text.startswith(prefix):
        return False
    who = text.removeprefix(prefix)
    if prefix == "telegram:":
        return who == str(int(who)) if re.fullmatch(r"-?\d+", who) else False
    return bool(who)


#: The proposal policy as a caller (auto-approval, expiry).
POLICY = Caller(CallerKind.SYSTEM, POLICY_ID, Door.POLICY)


@dataclass(frozen=True, slots=True)
class Approvers:
    """The humans who may approve or reject proposals, from the settings.

    ``telegram_chats`` are chat ids (``TELEGRAM_APPROVER_CHAT_IDS``); ``operators`` are user names on
    this machine allowed at the command line (``ACTP_APPROVER_OPERATORS``). Empty: nobody approves
    (held proposals wait, then expire).
    """

    telegram_chats: frozenset[int] = frozenset()
    operators: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        chats = frozenset(self.telegram_chats)
        if any(isinstance(c, bool) or not isinstance(c, int) for c in chats):
            raise ValueError(f"Approvers.telegram_chats: whole-number chat ids, got {sorted(map(repr, chats))}")
        object.__setattr__(self, "telegram_chats", chats)
        object.__setattr__(self, "operators", frozenset(operator_name(u) for u in self.operators))

    @classmethod
    def of(cls, *, telegram_chats: Iterable[int] = (), operators: Iterable[str] = ()) -> Approvers:
        """Approvers from any iterables."""
        return cls(frozenset(telegram_chats), frozenset(operators))

    def refusal(self, caller: Caller) -> str | None:
        """Why ``caller`` may not approve or reject a proposal, or None when it may."""
        if not isinstance(caller, Caller):
            return f"{type(caller).__name__} is not a caller identity established by a door"
        if caller.kind is CallerKind.AGENT:
            return f"{caller.id} is an agent: agents may propose schedules, only a configured human approves"
        if caller.kind is CallerKind.HUMAN and caller.door is Door.TELEGRAM:
            chat = int(caller.id.removeprefix("telegram:"))
            if chat in self.telegram_chats:
                return None
            return f"Telegram chat {chat} is not an approver (TELEGRAM_APPROVER_CHAT_IDS)"
        if caller.kind is CallerKind.HUMAN and caller.door is Door.CLI:
            user = caller.id.removeprefix("cli:")
            if user in self.operators:
                return None
            return f"operator {user!r} is not an approver (ACTP_APPROVER_OPERATORS)"
        return f"{caller.id} ({caller.kind.value} via {caller.door.value}) is not a human approver"

    def describe(self) -> str:
        """One line for logs and status: who may approve."""
        chats = ", ".join(str(c) for c in sorted(self.telegram_chats)) or "none"
        users = ", ".join(sorted(self.operators)) or "none"
        return f"Telegram chats: {chats}; operators: {users}"


def high_risk_refusal(caller: Caller, tiers: Iterable[RiskTier | None], action: str, schedule: str) -> str | None:
    """Why ``caller`` may not ``action`` (enable, run, reset, replay) a schedule whose own or task's tier
    is among ``tiers``, or None: an agent never starts, resumes or retries high-risk work, since that,
    like approving it, takes a human."""
    if caller.is_agent and RiskTier.HIGH in tiers:
        return f"{caller.id} is an agent: only a human may {action} high-risk schedule {schedule}"
    return None
