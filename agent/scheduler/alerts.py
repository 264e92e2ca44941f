"""Durable alerts: the Notifier port and the dispatcher that empties the outbox through it.

Every alert is written to ``alerts_outbox`` in the same transaction as the event that caused it.
The dispatcher claims deliverable alerts (a conditional UPDATE), sends them with retries, and
marks them sent; what it cannot send stays in the outbox and goes out on a later pass, after a
restart too. Dead-letter alerts waiting together are sent as one message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from .clock import Clock
from .enums import AlertStatus
from .records import Alert
from .store import EngineStore

log = logging.getLogger(__name__)

#: A claimed alert whose dispatcher vanished may be claimed again after this long.
CLAIM_LEASE = timedelta(minutes=2)
#: Sends per alert within one pass before it waits for the next pass.
SEND_ATTEMPTS = 3
#: Alerts claimed by one pass; a full batch means more may be waiting.
CLAIM_BATCH = 50
#: Telegram's limit for one message.
MAX_MESSAGE = 4096


class DeliveryError(Exception):
    """The notifier could not deliver; the alert stays in the outbox."""


class Notifier(Protocol):
    """Where alerts go (Telegram in production)."""

    async def send(self, text: str) -> None:
        """Deliver ``text``; raise (DeliveryError or the client's error) when it did not arrive."""
        ...


def chunks(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """``text`` split at line breaks into pieces of at most ``limit`` characters."""
    out: list[str] = []
    current = ""
    for whole in text.splitlines(keepends=True):
        line = whole
        while len(line) > limit:
            if current:
                out.append(current)
                current = ""
            out.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) > limit:
            out.append(current)
            current = ""
        current += line
    if current:
        out.append(current)
    return [c.rstrip("\n") for c in out if c.strip()]


def dead_letter_text(lines: list[str]) -> str:
    """The message for runs that were dead-lettered, one line each."""
    return "Dead-lettered:\n" + "\n".join(lines) + "\nReplay one: python -m agent.scheduler dlq replay RUN_ID"


def _message(alerts: list[Alert]) -> str:
    if len(alerts) == 1:
        return alerts[0].text
    if all(a.kind == "dead_letter" for a in alerts):
        return dead_letter_text([line for a in alerts for line in a.payload.get("lines", [a.text])])
    return f"{len(alerts)} alerts:\n" + "\n".join(f"- {a.text}" for a in alerts)


class AlertDispatcher:
    """Empties the outbox through ``notifier``; without one, marks alerts undeliverable and logs them."""

    def __init__(
        self,
        store: EngineStore,
        notifier: Notifier | None,
        clock: Clock,
        *,
        run_db: Callable[..., Awaitable[object]] | None = None,
        missing_reason: str = "no notifier configured (set TELEGRAM_BOT_TOKEN and TELEGRAM_ALERT_CHAT_IDS)",
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.missing_reason = missing_reason
        self._run_db = run_db
        self.left_over = False
        """Whether the last pass left deliverable alerts in the outbox (a failed send, or more than a batch)."""

    async def _db(self, fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        if self._run_db is not None:
            return await self._run_db(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    async def deliver(self) -> int:
        """One pass over the outbox; returns how many alerts were delivered."""
        now = self.clock.now()
        # Without a notifier, alerts already marked undeliverable are left alone (logged once).
        claimed = await self._db(
            self.store.claim_alerts,
            now=now,
            lease=CLAIM_LEASE,
            limit=CLAIM_BATCH,
            include_undeliverable=self.notifier is not None,
        )
        assert isinstance(claimed, list)
        self.left_over = len(claimed) == CLAIM_BATCH
        if not claimed:
            return 0
        if self.notifier is None:
            for alert in claimed:
                log.warning("alert (undeliverable: %s): %s", self.missing_reason, alert.text)
            await self._db(
                self.store.mark_alerts, [a.id for a in claimed], AlertStatus.UNDELIVERABLE, error=self.missing_reason
            )
            return 0
        # Dead letters arrive in bursts: one message for all that wait, not one per run.
        letters = [a for a in claimed if a.kind == "dead_letter"]
        batches = [[a] for a in claimed if a.kind != "dead_letter"] + ([letters] if letters else [])
        delivered = 0
        for batch in batches:
            ids = [a.id for a in batch]
            try:
                for piece in chunks(_message(batch)):
                    await self._send(piece)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("alert delivery failed, kept in the outbox: %s", reason)
                await self._db(self.store.mark_alerts, ids, AlertStatus.PENDING, error=reason)
                self.left_over = True
                continue
            await self._db(self.store.mark_alerts, ids, AlertStatus.SENT)
            delivered += len(batch)
        return delivered

    async def _send(self, text: str) -> None:
        assert self.notifier is not None
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            stop=stop_after_attempt(SEND_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.1),
            reraise=True,
        ):
            with attempt:
                await self.notifier.send(text)
