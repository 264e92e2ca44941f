"""The operator's Telegram bot: /schedules and the commands that run the scheduler, through the service registry.

The bot runs inside the worker's event loop (python-telegram-bot's manual lifecycle: initialize,
start, start_polling; never ``run_polling``, which wants to own the loop). Every command calls a
``scheduler.*`` topic of the worker's :class:`ServiceRegistry` as the human at the Telegram chat the
message came from (``telegram:<chat id>``, as Telegram delivered it, never a name the message
gives). Only chats in ``TELEGRAM_ALLOWED_CHAT_IDS`` or ``TELEGRAM_APPROVER_CHAT_IDS`` are answered;
messages from any other chat are logged and dropped before any handler sees them. Whether a chat
may approve or reject proposals is the proposal service's decision (its configured approvers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cron_descriptor import Options, get_description  # type: ignore[import-untyped]
from telegram import BotCommand, Update
from telegram.constants import MessageLimit
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from agent.scheduler.config import ConfigError
from agent.scheduler.errors import InvalidSchedule
from agent.scheduler.identity import Caller
from agent.scheduler.inbox import parse_payload
from agent.scheduler.schedule_policy import describe_span
from agent.scheduler.settings import Settings, load_settings
from agent.scheduler.triggers import parse_duration, parse_timezone
from agent.scheduler.views import one_line
from service_registry import ServiceRegistry

log = logging.getLogger(__name__)

#: The variables the bot reads.
BOT_VARIABLES = (
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_ALLOWED_CHAT_IDS",
    "TELEGRAM_APPROVER_CHAT_IDS",
    "TELEGRAM_API_BASE_URL",
    "ACTP_OPERATOR_TIMEZONE",
    "ACTP_TIMEZONE",
)
#: Telegram's limit on one message's text, in characters.
MAX_MESSAGE_CHARS = MessageLimit.MAX_TEXT_LENGTH
#: How long one getUpdates long poll waits for a message, in seconds.
POLL_TIMEOUT_SECONDS = 10
#: Seconds between attempts to start the bot when the Bot API cannot be reached, doubling up to the cap.
START_RETRY_SECONDS = 5.0
START_RETRY_CAP_SECONDS = 300.0
#: How many runs /runs and /schedule show, and how many dead letters or proposals are listed.
RUNS_SHOWN = 10
SCHEDULE_RUNS_SHOWN = 5
ITEMS_SHOWN = 20
#: Longest reason or error quoted in a listing, in characters; longest name, target or trigger type.
QUOTE_CHARS = 90
NAME_SHOWN = 128
#: Cadence groups of /schedules: (largest average seconds between runs, title), in order. The slack
#: keeps an hourly cron hourly in a week with a DST change (167 or 169 fires); weekdays count as daily.
CADENCE_GROUPS: tuple[tuple[float, str], ...] = (
    (60, "Every minute or faster"),
    (3600 * 1.1, "Every few minutes, up to hourly"),
    (86400 * 0.9, "Several times a day"),
    (2 * 86400, "Daily"),
    (float("inf"), "Weekly or rarer"),
)
ONE_OFF_GROUP = "Once, on events, at start or stop"
#: How instants are shown, in the operator's timezone.
WHEN_FORMAT = "%a %d %b %H:%M"
WHEN_FORMAT_SECONDS = "%a %d %b %H:%M:%S"

_OPEN, _HALF_OPEN = "open", "half_open"
_BREAKER_OPEN, _BREAKER_HALF, _NOT_CONFIGURED, _NOT_REGISTERED = "⚠", "◐", "⛔", "✖"


# ---------------------------------------------------------------------- presentation (pure)


@functools.lru_cache(maxsize=1024)
def describe_cron(expression: str) -> str | None:
    """``"At 14:00, Monday through Friday"`` for a cron expression; None when it cannot be described.

    cron-descriptor is told en_US and 24-hour time (it follows the system locale otherwise). Its
    6-field form is seconds first, as the scheduler's is. ``@daily``-style aliases, hashed (``H``)
    and random (``R``) fields, and anything it rejects are left to the raw expression.
    """
    fields = expression.split()
    if len(fields) not in (5, 6) or expression.strip().startswith("@"):
        return None
    if any(re.search(r"(?<![a-z])[hr](?![a-z])", f, re.IGNORECASE) for f in fields):
        return None
    options = Options()
    options.locale_code = "en_US"
    options.use_24hour_time_format = True
    try:
        text = get_description(expression, options)
    except Exception:  # a description is a courtesy: any failure shows the raw expression instead
        return None
    return str(text) if text else None


def describe_trigger(item: Mapping[str, Any], operator_zone: str) -> str:
    """How a schedule fires, in words, with its raw expression beside it."""
    kind, expression = str(item.get("trigger_type")), str(item.get("expression"))
    if kind == "calendar":
        zone = item.get("timezone") or "UTC"
        raw = expression if zone == operator_zone else f"{expression}, {zone}"
        words = describe_cron(expression)
        return f"{words} ({raw})" if words else f"cron {raw}"
    if kind in ("interval", "reconciliation"):
        try:
            every = "every " + describe_span(parse_duration(expression))
        except (InvalidSchedule, ValueError, OverflowError):
            every = f"every {expression}"
        return every + (" (sweeper)" if kind == "reconciliation" else "")
    if kind == "delay":
        return f"once ({expression})"
    if kind == "event":
        return f"on event {expression}"
    if kind == "lifecycle":
        return f"at worker {expression}"
    return f"{kind} {expression}"


def cadence_group(item: Mapping[str, Any]) -> str:
    """The /schedules group of a schedule, by how often it runs."""
    period = item.get("period_s")
    if item.get("trigger_type") not in ("interval", "calendar", "reconciliation") or not period:
        return ONE_OFF_GROUP
    return next(title for limit, title in CADENCE_GROUPS if float(period) <= limit)


def format_when(iso: str | None, zone: ZoneInfo, *, seconds: bool = False) -> str:
    """An ISO instant in the operator's timezone, ``Sat 13 Mar 14:05``; ``-`` for none."""
    if not iso:
        return "-"
    instant = datetime.fromisoformat(iso).astimezone(zone)
    return instant.strftime(WHEN_FORMAT_SECONDS if seconds else WHEN_FORMAT)


def _quote(text: Any, limit: int = QUOTE_CHARS) -> str:
    """``text`` as one bounded line; control and format characters (a right-to-left override) shown as �."""
    line = one_line(text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _relative(text: str | None) -> str:
    if not text:
        return ""
    return text if text.startswith("in ") else f"due {text}"


def schedule_flags(item: Mapping[str, Any]) -> list[str]:
    """What an operator should look at on this schedule: open breaker, missing configuration, no task."""
    flags = []
    if item.get("breaker_state") == _OPEN:
        flags.append(f"{_BREAKER_OPEN} breaker open")
    elif item.get("breaker_state") == _HALF_OPEN:
        flags.append(f"{_BREAKER_HALF} breaker half-open")
    if is_not_configured(item):
        flags.append(f"{_NOT_CONFIGURED} not configured")
    if item.get("task_registered") is False:
        flags.append(f"{_NOT_REGISTERED} task not registered")
    return flags


def is_not_configured(item: Mapping[str, Any]) -> bool:
    """Its last run was skipped as not configured, or its task declares configuration that is missing."""
    return bool(item.get("not_configured") or item.get("missing_configuration"))


def schedule_entry(item: Mapping[str, Any], zone: ZoneInfo, operator_zone: str) -> str:
    """Two or three lines for one schedule of /schedules."""
    flags = schedule_flags(item)
    head = f"• {item['name']}" + (f"  {' · '.join(flags)}" if flags else "")
    fast = bool(item.get("period_s")) and float(item["period_s"]) < 60
    if item.get("next_run_at"):
        when = f"next {format_when(item['next_run_at'], zone, seconds=fast)} ({_relative(item.get('next_run_in'))})"
    else:
        when = "no next run"
    last = f"last {item['last_status']}" if item.get("last_status") else "never ran"
    lines = [head, f"  {describe_trigger(item, operator_zone)}", f"  {when} · {last}"]
    if is_not_configured(item):
        missing = item.get("missing_configuration") or []
        why = f"needs {', '.join(missing)}" if missing else _quote(item.get("last_reason") or "")
        lines[-1] += f" · {why}"
    elif item.get("last_status") in ("failed", "dead_lettered") and item.get("last_reason"):
        lines[-1] += f" · {_quote(item['last_reason'])}"
    return "\n".join(lines)


def pack(intro: str, sections: Sequence[tuple[str, Sequence[str]]], limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """Messages of at most ``limit`` characters: ``intro``, then each section's title and entries.

    An entry is never split across messages (unless it alone is too long); a section that goes on
    in the next message repeats its title, marked "(continued)". A section titled "" has no title.
    """
    messages: list[str] = []
    current = intro.strip()

    def put(block: str, separator: str, continued: str) -> None:
        nonlocal current
        candidate = f"{current}{separator}{block}" if current else block
        if len(candidate) <= limit:
            current = candidate
            return
        if current:
            messages.append(current)
        block = f"{continued} (continued)\n{block}" if continued else block
        while len(block) > limit:
            messages.append(block[:limit])
            block = block[limit:]
        current = block

    for title, entries in sections:
        heading = f"— {title} ({len(entries)}) —" if title else ""
        for index, entry in enumerate(entries):
            if index == 0:
                put(f"{heading}\n{entry}" if heading else entry, "\n\n" if heading else "\n", "")
            else:
                put(entry, "\n", heading)
    if current:
        messages.append(current)
    return messages


def schedules_messages(result: Mapping[str, Any], zone: ZoneInfo, operator_zone: str) -> list[str]:
    """The /schedules answer: enabled schedules grouped by cadence, flags first, under Telegram's limit."""
    items: list[Mapping[str, Any]] = list(result.get("schedules") or [])
    if not items:
        return ["No enabled schedules."]
    now = format_when(result.get("as_of"), zone)
    plural = "" if len(items) == 1 else "s"
    intro = [f"{len(items)} enabled schedule{plural} · times in {operator_zone} (now {now})"]
    open_breakers = [i["name"] for i in items if i.get("breaker_state") in (_OPEN, _HALF_OPEN)]
    unconfigured = [i["name"] for i in items if is_not_configured(i)]
    unregistered = [i["name"] for i in items if i.get("task_registered") is False]
    if open_breakers:
        intro.append(f"{_BREAKER_OPEN} breaker open ({len(open_breakers)}): {', '.join(open_breakers)}")
    if unconfigured:
        intro.append(f"{_NOT_CONFIGURED} not configured ({len(unconfigured)}): {', '.join(unconfigured)}")
    if unregistered:
        intro.append(f"{_NOT_REGISTERED} task not registered ({len(unregistered)}): {', '.join(unregistered)}")
    order = [title for _, title in CADENCE_GROUPS] + [ONE_OFF_GROUP]
    grouped: dict[str, list[Mapping[str, Any]]] = {title: [] for title in order}
    for item in items:
        grouped[cadence_group(item)].append(item)
    sections = []
    for title in order:
        members = sorted(
            grouped[title], key=lambda i: (i.get("next_run_at") is None, i.get("next_run_at") or "", i["name"])
        )
        if members:
            sections.append((title, [schedule_entry(i, zone, operator_zone) for i in members]))
    return pack("\n".join(intro), sections)


def error_text(error: Mapping[str, Any]) -> str:
    """A registry error as one line."""
    return f"✖ {error.get('code')}: {error.get('message')}"


# ---------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command:
    """One bot command: its name, how to call it, and what it does."""

    name: str
    usage: str
    summary: str
    required: int = 0
    """How many arguments it needs; fewer gets the usage line."""


COMMANDS: tuple[Command, ...] = (
    Command("schedules", "/schedules", "enabled schedules by cadence, with next runs and problems"),
    Command("schedule", "/schedule NAME", "one schedule: trigger, policies, breaker, last runs", 1),
    Command("runs", "/runs [NAME]", "the latest runs, of all schedules or one"),
    Command("dlq", "/dlq", "dead letters waiting for replay"),
    Command("replay", "/replay RUN_ID [force]", "send a dead letter back to pending", 1),
    Command("disable", "/disable NAME [reason]", "stop a schedule from producing runs", 1),
    Command("enable", "/enable NAME", "let a disabled schedule run again", 1),
    Command("run", "/run NAME", "queue a manual run now", 1),
    Command("emit", "/emit NAME [JSON]", "emit an event: each event schedule on NAME runs once", 1),
    Command("reset", "/reset NAME", "close a schedule's open circuit breaker", 1),
    Command("proposals", "/proposals [all|STATUS]", "agent proposals awaiting approval"),
    Command("approve", "/approve ID [reason]", "approve a proposal; its schedule starts", 1),
    Command("reject", "/reject ID reason", "reject a proposal, saying why", 2),
    Command("status", "/status", "the worker: runs in flight, last reconciliation, problems"),
    Command("help", "/help", "this list"),
)
_BY_NAME = {c.name: c for c in COMMANDS}


def help_text() -> str:
    """The /help answer."""
    return "Scheduler commands:\n" + "\n".join(f"{c.usage} — {c.summary}" for c in COMMANDS)


def parse_command(text: str) -> tuple[str, list[str], str]:
    """``("disable", ["sweep", "too", "noisy"], "too noisy")`` from ``"/disable@bot sweep too noisy"``.

    The last element is everything after the first argument, spacing kept (for reasons).
    """
    head, _, rest = text.strip().partition(" ")
    name = head.lstrip("/").split("@", 1)[0].lower()
    args = rest.split()
    tail = rest.strip().split(maxsplit=1)
    return name, args, tail[1] if len(tail) > 1 else ""


Answer = Callable[[list[str], str, Caller], Awaitable[list[str]]]


class OperatorBot:
    """The Telegram face of the worker's registry; ``start()`` on the worker's loop, ``stop()`` before the engine's.

    ``allowed_chat_ids`` and ``approver_chat_ids`` are the only chats answered. ``operator_timezone`` is
    where times are shown.
    """

    def __init__(
        self,
        registry: ServiceRegistry,
        *,
        token: str,
        allowed_chat_ids: Iterable[int],
        approver_chat_ids: Iterable[int] = (),
        base_url: str | None = None,
        operator_timezone: str = "UTC",
    ) -> None:
        if not token:
            raise ValueError("OperatorBot needs the bot token (TELEGRAM_BOT_TOKEN)")
        self.registry = registry
        self.allowed_chat_ids = frozenset(int(c) for c in (*allowed_chat_ids, *approver_chat_ids))
        self.operator_timezone = operator_timezone
        self.zone: ZoneInfo = parse_timezone(operator_timezone)
        builder = ApplicationBuilder().token(token).job_queue(None)
        if base_url:
            builder = builder.base_url(base_url)
        self.app: Application[Any, Any, Any, Any, Any, Any] = builder.build()
        self._answers: dict[str, Answer] = {
            "schedules": self._schedules,
            "schedule": self._schedule,
            "runs": self._runs,
            "dlq": self._dlq,
            "replay": self._replay,
            "disable": self._disable,
            "enable": self._enable,
            "run": self._run,
            "emit": self._emit,
            "reset": self._reset,
            "proposals": self._proposals,
            "approve": self._approve,
            "reject": self._reject,
            "status": self._status,
            "help": self._help,
        }
        chats = filters.Chat(chat_id=sorted(self.allowed_chat_ids))
        self.app.add_handler(TypeHandler(Update, self._gate), group=-1)
        self.app.add_handler(CommandHandler([*self._answers, "start"], self._on_command, filters=chats))
        self.app.add_handler(MessageHandler(filters.COMMAND & chats, self._on_other_command))
        self.app.add_error_handler(self._on_error)
        self._retry: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, registry: ServiceRegistry, environ: Mapping[str, str] | None = None) -> OperatorBot | None:
        """The bot from ``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_ALLOWED_CHAT_IDS``, ``TELEGRAM_APPROVER_CHAT_IDS``,
        ``TELEGRAM_API_BASE_URL`` and ``ACTP_OPERATOR_TIMEZONE`` (else ``ACTP_TIMEZONE``, else UTC).

        None, with one log line, when the token is not set or the configuration is invalid: the
        worker runs without its bot.
        """
        try:
            settings = load_settings(environ, only=BOT_VARIABLES)
        except ConfigError as exc:
            shown = "; ".join(f"{p.variable}={p.shown!r}: {p.allowed}" for p in exc.problems)
            log.error("Telegram bot off: %s", shown)
            return None
        return cls.from_settings(registry, settings)

    @classmethod
    def from_settings(cls, registry: ServiceRegistry, settings: Settings) -> OperatorBot | None:
        """The bot of ``settings``: token, allowed and approver chats, Bot API server, operator timezone.

        None, with one log line, when the token is not set: the worker runs without its bot.
        """
        token = settings.telegram_bot_token
        if not token:
            log.info("Telegram bot off: TELEGRAM_BOT_TOKEN is not set (the worker runs without it)")
            return None
        zone = settings.operator_timezone or settings.timezone or "UTC"
        chats = settings.telegram_allowed_chat_ids or []
        approvers = settings.telegram_approver_chat_ids or []
        base_url = settings.telegram_api_base_url
        bot = cls(
            registry,
            token=token,
            allowed_chat_ids=chats,
            approver_chat_ids=approvers,
            base_url=base_url,
            operator_timezone=zone,
        )
        if not bot.allowed_chat_ids:
            log.warning(
                "Telegram bot answers no chat: TELEGRAM_ALLOWED_CHAT_IDS is empty (ignored messages are logged "
                "with their chat id)"
            )
        return bot

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect and start polling on the running loop; if the Bot API cannot be reached, keep trying in the
        background. A rejected token turns the bot off (logged); nothing here stops the worker."""
        _quiet_http_logs()
        try:
            await self._start_once()
        except InvalidToken:
            log.error("Telegram bot off: the Bot API server rejected TELEGRAM_BOT_TOKEN")
            await self._teardown()
        except (TelegramError, OSError) as exc:
            log.warning("Telegram bot not started yet (%s); retrying in the background", _short_error(exc))
            await self._teardown()
            self._retry = asyncio.create_task(self._keep_trying(), name="telegram-bot-start")

    async def stop(self) -> None:
        """Stop polling, finish the update being handled, release the HTTP clients. Never raises."""
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
        await self._teardown()
        log.info("Telegram bot stopped")

    async def _start_once(self) -> None:
        await self.app.initialize()
        with contextlib.suppress(TelegramError):  # the command menu is a courtesy
            await self.app.bot.set_my_commands([BotCommand(c.name, c.summary) for c in COMMANDS])
        await self.app.start()
        updater = self.app.updater
        assert updater is not None
        await updater.start_polling(
            timeout=POLL_TIMEOUT_SECONDS, drop_pending_updates=False, error_callback=self._on_poll_error
        )
        log.info(
            "Telegram bot @%s answering %d chat(s), times in %s",
            self.app.bot.username,
            len(self.allowed_chat_ids),
            self.operator_timezone,
        )

    async def _keep_trying(self) -> None:
        delay = START_RETRY_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                await self._start_once()
                return
            except InvalidToken:
                log.error("Telegram bot off: the Bot API server rejected TELEGRAM_BOT_TOKEN")
                await self._teardown()
                return
            except (TelegramError, OSError) as exc:
                delay = min(delay * 2, START_RETRY_CAP_SECONDS)
                log.warning("Telegram bot still not started (%s); next try in %gs", _short_error(exc), delay)
                await self._teardown()

    async def _teardown(self) -> None:
        updater = self.app.updater
        steps: list[Callable[[], Awaitable[None]]] = []
        if updater is not None and updater.running:
            steps.append(updater.stop)
        if self.app.running:
            steps.append(self.app.stop)
        steps.append(self.app.shutdown)
        steps.append(self.app.bot.shutdown)  # an Application that never initialized leaves the clients open
        for step in steps:
            try:
                await step()
            except Exception as exc:  # stopping must go on: the worker is shutting down
                log.warning("Telegram bot: %s failed while stopping: %s", getattr(step, "__name__", step), exc)

    def _on_poll_error(self, exc: TelegramError) -> None:
        log.warning("Telegram bot: polling failed (%s); python-telegram-bot retries", _short_error(exc))

    # ------------------------------------------------------------------ updates

    async def _gate(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat = update.effective_chat if isinstance(update, Update) else None
        if chat is not None and chat.id in self.allowed_chat_ids:
            return
        message = update.effective_message if isinstance(update, Update) else None
        first = (message.text or "").split(maxsplit=1)[0][:40] if message is not None and message.text else "update"
        log.warning(
            "Telegram bot: ignored %r from chat %s (not in TELEGRAM_ALLOWED_CHAT_IDS or TELEGRAM_APPROVER_CHAT_IDS)",
            first,
            chat.id if chat is not None else None,
        )
        raise ApplicationHandlerStop

    async def _on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, message = update.effective_chat, update.effective_message
        if chat is None or message is None or not message.text:
            return
        for text in await self.respond(chat.id, message.text):
            await context.bot.send_message(chat_id=chat.id, text=text)

    async def _on_other_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        head = (message.text or "").split(maxsplit=1)[0] if message is not None and message.text else ""
        _, _, addressee = head.partition("@")
        if addressee and addressee.lower() != (context.bot.username or "").lower():
            return  # a command for another bot in a group chat
        await self._on_command(update, context)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("Telegram bot: handling an update failed: %r", context.error, exc_info=context.error)

    async def respond(self, chat_id: int, text: str) -> list[str]:
        """The messages answering ``text`` from ``chat_id`` (none for a chat that is not allowed)."""
        if chat_id not in self.allowed_chat_ids:
            return []
        name, args, tail = parse_command(text)
        if name == "start":
            name = "help"
        answer = self._answers.get(name)
        if answer is None:
            return [f"Unknown command /{_quote(name, 32)}. {_BY_NAME['help'].usage} lists the commands."]
        command = _BY_NAME[name]
        if len(args) < command.required:
            return [f"usage: {command.usage}"]
        return await answer(args, tail, Caller.telegram(chat_id))

    async def _ask(
        self, topic: str, payload: dict[str, Any], caller: Caller
    ) -> tuple[dict[str, Any] | None, list[str]]:
        answer = await self.registry.call(topic, payload, caller=caller)
        if answer.get("ok"):
            result: dict[str, Any] = answer["result"]
            return result, []
        return None, [error_text(answer.get("error") or {})]

    async def _help(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        return [help_text()]

    async def _schedules(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        result, error = await self._ask("scheduler.list_schedules", {"enabled": True}, caller)
        if result is None:
            return error
        return schedules_messages(result, self.zone, self.operator_timezone)

    async def _schedule(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        payload = {"name": args[0], "runs": SCHEDULE_RUNS_SHOWN}
        result, error = await self._ask("scheduler.get_schedule", payload, caller)
        if result is None:
            return error
        s = result["schedule"]
        state = "enabled" if s["enabled"] else f"disabled: {s.get('disabled_reason') or '-'}"
        lines = [f"{s['name']} — {state}"]
        if s.get("description"):
            lines.append(_quote(s["description"], 300))
        lines.append(f"When: {describe_trigger(s, self.operator_timezone)}")
        if s.get("next_run_at"):
            when = format_when(s["next_run_at"], self.zone, seconds=True)
            lines.append(f"Next: {when} {self.operator_timezone} ({_relative(s.get('next_run_in'))})")
        lines.append(f"Task: {s['target']} · source {s['source']} · risk {s['risk_tier']}")
        breaker = f"Breaker: {s['breaker_state']} ({s['consecutive_failures']} of {s['breaker_threshold']} failures)"
        lines.append(breaker + "".join(f" · {f}" for f in schedule_flags(s)))
        timeout = f"{s['timeout_s']:g}s" if s.get("timeout_s") else "none"
        lines.append(
            f"Policies: missed {s['missed_run_policy']} · overlap {s['concurrency_policy']} · "
            f"shutdown {s['shutdown_policy']} · retries {s['max_retries']} · timeout {timeout}"
        )
        lines.append("Last runs:" if result["runs"] else "No runs yet.")
        lines += [f"  {self._run_line(r, with_schedule=False)}" for r in result["runs"]]
        return pack("\n".join(lines), [])

    async def _runs(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        payload: dict[str, Any] = {"limit": RUNS_SHOWN}
        if args:
            payload["schedule"] = args[0]
        result, error = await self._ask("scheduler.list_runs", payload, caller)
        if result is None:
            return error
        runs = result["runs"]
        if not runs:
            return ["No runs yet."]
        title = f"Latest runs of {args[0]}" if args else "Latest runs"
        intro = f"{title} (newest first, {self.operator_timezone}):"
        return pack(intro, [("", [self._run_line(r) for r in runs])])

    def _run_line(self, run: Mapping[str, Any], *, with_schedule: bool = True) -> str:
        when = format_when(run.get("intended_run_at"), self.zone, seconds=True)
        who = f"{run['schedule']} " if with_schedule else ""
        failed = run["status"] in ("failed", "dead_lettered")
        why = (run.get("error") if failed else None) or run.get("reason") or run.get("outcome")
        text = f"{when} {who}{run['status']} (try {run['attempt']}, {run['origin']})"
        return text + (f" · {_quote(why)}" if why else "")

    async def _dlq(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        result, error = await self._ask("scheduler.dead_letters", {"limit": ITEMS_SHOWN}, caller)
        if result is None:
            return error
        letters = result["dead_letters"]
        if not letters:
            return ["No dead letters waiting."]
        entries = [
            f"• {d['run_id']} · {d['schedule']} · {format_when(d['intended_run_at'], self.zone)} · "
            f"{d['attempts']} tries\n  {_quote(d.get('error') or '-')}"
            for d in letters
        ]
        intro = f"{result['total']} dead letter(s) waiting; replay one with /replay RUN_ID"
        return pack(intro, [("", entries)])

    async def _replay(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        force = len(args) > 1 and args[1].lower() in ("force", "--force")
        result, error = await self._ask("scheduler.replay_dead_letter", {"id": args[0], "force": force}, caller)
        if result is None:
            return error
        return [f"Replayed {result['run_id']} of {result['schedule']}: pending again (by {result['replayed_by']})."]

    async def _disable(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        payload = {"name": args[0], **({"reason": tail} if tail else {})}
        result, error = await self._ask("scheduler.disable_schedule", payload, caller)
        if result is None:
            return error
        return [f"{result['name']} disabled: {result['disabled_reason']}. /enable {result['name']} resumes it."]

    async def _enable(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        result, error = await self._ask("scheduler.enable_schedule", {"name": args[0]}, caller)
        if result is None:
            return error
        if result["was_enabled"]:
            return [f"{result['name']} was already enabled."]
        return [f"{result['name']} enabled: it runs again from its next occurrence."]

    async def _run(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        result, error = await self._ask("scheduler.run_now", {"name": args[0]}, caller)
        if result is None:
            return error
        return [f"Run {result['run_id']} of {result['schedule']} queued; the worker starts it now."]

    async def _emit(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        try:
            payload = parse_payload(tail)
        except InvalidSchedule as exc:
            return [error_text({"code": "invalid", "message": str(exc)})]
        result, error = await self._ask("scheduler.emit_event", {"name": args[0], "payload": payload}, caller)
        if result is None:
            return error
        return [f"Event {result['name']} ({result['id']}) emitted by {result['emitted_by']}; the worker runs it now."]

    async def _reset(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        result, error = await self._ask("scheduler.reset_breaker", {"name": args[0]}, caller)
        if result is None:
            return error
        return [f"{result['name']}: breaker {result['breaker_state']}, runs resume from the next occurrence."]

    async def _proposals(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        wanted = args[0].lower() if args else "awaiting_approval"
        payload: dict[str, Any] = {"limit": ITEMS_SHOWN}
        if wanted != "all":
            payload["status"] = wanted
        result, error = await self._ask("scheduler.list_proposals", payload, caller)
        if result is None:
            return error
        proposals = result["proposals"]
        if not proposals:
            return ["No proposals awaiting approval." if wanted == "awaiting_approval" else f"No {wanted} proposals."]
        entries = []
        for p in proposals:
            # Everything but the id and the status came from the proposer: one bounded line each.
            entry = (
                f"• {p['id']} · {_quote(p['name'], NAME_SHOWN)} · {p['status']} · by {_quote(p['proposed_by'])} · "
                f"risk {p.get('risk_tier') or '-'}\n"
                f"  {_quote(p.get('trigger_type'), NAME_SHOWN)} {_quote(p.get('expression'))} → "
                f"{_quote(p.get('target'), NAME_SHOWN)}"
            )
            if p.get("simulation_note"):
                entry += f"\n  {_quote(p['simulation_note'])}"
            if p.get("decision_reason"):
                entry += f"\n  decision: {_quote(p['decision_reason'])}"
            entries.append(entry)
        return pack("/approve ID [reason] or /reject ID reason", [(wanted.replace("_", " "), entries)])

    async def _approve(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        payload = {"id": args[0], **({"reason": tail} if tail else {})}
        result, error = await self._ask("scheduler.approve_proposal", payload, caller)
        if result is None:
            return error
        p = result["proposal"]
        where = f"schedule {p['schedule_id']} is active" if p.get("schedule_id") else p["status"]
        return [f"Proposal {p['id']} ({p['name']}) approved by {p['decided_by']}: {where}."]

    async def _reject(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        result, error = await self._ask("scheduler.reject_proposal", {"id": args[0], "reason": tail}, caller)
        if result is None:
            return error
        p = result["proposal"]
        return [f"Proposal {p['id']} ({p['name']}) rejected by {p['decided_by']}: {p['decision_reason']}"]

    async def _status(self, args: list[str], tail: str, caller: Caller) -> list[str]:
        result, error = await self._ask("scheduler.status", {}, caller)
        if result is None:
            return error
        lines = [f"Worker {result['worker_id']} · {format_when(result['as_of'], self.zone)} {self.operator_timezone}"]
        lines.append(
            f"Schedules: {result['schedules_enabled']} enabled, {result['schedules_disabled']} disabled · "
            f"pending runs {result['pending_runs']} · dead letters waiting {result['dead_letters_waiting']}"
        )
        flying = result["in_flight"]
        lines.append(f"In flight ({len(flying)}): " + (", ".join(r["schedule"] for r in flying) or "none"))
        if result["breakers"]:
            breakers = ", ".join(f"{b['name']} ({b['state']})" for b in result["breakers"])
            lines.append(f"{_BREAKER_OPEN} Breakers not closed: {breakers}")
        last = result.get("last_reconciliation")
        if last:
            when = format_when(last["started_at"], self.zone)
            lines.append(f"Last start ({last['worker_id']}, {when}): {last.get('summary') or '-'}")
        else:
            lines.append("No reconciliation report yet.")
        return pack("\n".join(lines), [])


def _short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_quote(exc, 160)}"


def _quiet_http_logs() -> None:
    # httpx logs every request URL at INFO, and a Bot API URL carries the bot token: keep it out of
    # the worker's log unless someone asked for httpx's log on purpose.
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        httpx_log.setLevel(logging.WARNING)
