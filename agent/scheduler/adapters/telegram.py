"""Telegram edge: the alert Notifier over python-telegram-bot's Bot, configured by the settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from telegram import Bot
from telegram.request import HTTPXRequest

from ..settings import Settings, load_settings

log = logging.getLogger(__name__)

#: Seconds a single Bot API call may take before it counts as failed.
REQUEST_TIMEOUT_SECONDS = 10.0
#: The variables the notifier reads.
TELEGRAM_VARIABLES = (
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_ALERT_CHAT_IDS",
    "TELEGRAM_ALLOWED_CHAT_IDS",
    "TELEGRAM_API_BASE_URL",
)


def parse_chat_ids(text: str, *, variable: str) -> list[int]:
    """``"42, -100123"`` as chat ids; a bad entry raises ValueError naming the variable."""
    ids = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            ids.append(int(part))
        except ValueError:
            raise ValueError(f"{variable}: {part!r} is not a chat id (whole numbers, comma-separated)") from None
    return ids


class TelegramNotifier:
    """Sends alerts to every configured chat with ``Bot.send_message``."""

    def __init__(self, token: str, chat_ids: list[int], *, base_url: str | None = None) -> None:
        if not chat_ids:
            raise ValueError("TelegramNotifier needs at least one chat id")
        request = HTTPXRequest(
            connect_timeout=REQUEST_TIMEOUT_SECONDS, read_timeout=REQUEST_TIMEOUT_SECONDS, connection_pool_size=4
        )
        kwargs = {"base_url": base_url} if base_url else {}
        self.bot = Bot(token, request=request, **kwargs)  # type: ignore[arg-type]
        self.chat_ids = chat_ids
        self._ready = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TelegramNotifier | None:
        """The notifier from ``TELEGRAM_BOT_TOKEN`` and ``TELEGRAM_ALERT_CHAT_IDS`` (else the allowed chats).

        ``TELEGRAM_API_BASE_URL`` points the client at another Bot API server (a local one).
        Returns None, with one log line, when the token or the chats are missing.
        """
        return cls.from_settings(load_settings(environ, only=TELEGRAM_VARIABLES))

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramNotifier | None:
        """The notifier of ``settings``' token and alert chats; None, with one log line, when either is missing."""
        token, chats = settings.telegram_bot_token, settings.alert_chat_ids
        if not token or not chats:
            log.info("Telegram alerts off: set TELEGRAM_BOT_TOKEN and TELEGRAM_ALERT_CHAT_IDS to deliver them")
            return None
        return cls(token, chats, base_url=settings.telegram_api_base_url)

    async def send(self, text: str) -> None:
        # Bot.shutdown() only releases the HTTP client of an initialized Bot: initialize first.
        if not self._ready:
            await self.bot.initialize()
            self._ready = True
        for chat_id in self.chat_ids:
            await self.bot.send_message(chat_id=chat_id, text=text)

    async def close(self) -> None:
        """Release the HTTP client."""
        if self._ready:
            await self.bot.shutdown()
            self._ready = False
