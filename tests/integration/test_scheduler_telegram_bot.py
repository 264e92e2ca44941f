"""The operator bot against a local Telegram Bot API server over real HTTP, on the registry's topics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import telegram_bot
from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.adapters.service_registry import register_scheduler_topics
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.identity import Caller
from agent.scheduler.proposals import ProposalService
from agent.scheduler.tasks import TaskRegistry
from service_registry import ServiceRegistry
from telegram_bot import MAX_MESSAGE_CHARS, OperatorBot, describe_cron, pack, parse_command
from tests.conftest import run_async
from tests.fixtures.telegram_api import TOKEN, FakeBotApi
from tests.integration.test_scheduler_registry_topics import APPROVER_CHAT, World, make_world, proposal

MakeSchedule = Callable[..., ScheduleDefinition]
CHAT = 4242
STRANGER = 9999
ZONE = "Europe/Berlin"
#: The longest a test waits for the bot's answer, in seconds.
REPLY_TIMEOUT = 10.0
HELP_HEAD = "Scheduler commands:"


@pytest.fixture(scope="module")
def local_bot_api() -> Iterator[FakeBotApi]:
    """One local server for the module: stopping one takes half a second (its poll interval)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        api = FakeBotApi().start()
        yield api
        api.stop()


@pytest.fixture
def bot_api(local_bot_api: FakeBotApi) -> FakeBotApi:
    """The module's server, running, with nothing sent or called yet."""
    if local_bot_api._server is None:
        local_bot_api.start()
    local_bot_api.sent.clear()
    local_bot_api.calls.clear()
    return local_bot_api


class Chat:
    """Talks to a started bot through the local server, as an operator would."""

    def __init__(self, api: FakeBotApi, bot: OperatorBot) -> None:
        self.api, self.bot = api, bot

    async def ask(self, text: str, chat: int = CHAT) -> list[str]:
        """Send ``text`` from ``chat``; the messages the bot sent back to that chat.

        A /help from the allowed chat follows it: updates are handled one at a time, in order, so
        once the help arrives, everything ``text`` caused has been sent.
        """
        before = len(self.api.sent)
        self.api.push_message(chat, text)
        self.api.push_message(CHAT, "/help")
        wanted = 1 + (chat == CHAT and parse_command(text)[0] in ("help", "start"))
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            new = self.api.sent[before:]
            helps = [i for i, m in enumerate(new) if m.chat_id == CHAT and m.text.startswith(HELP_HEAD)]
            if len(helps) >= wanted:
                return [m.text for i, m in enumerate(new) if m.chat_id == chat and i != helps[-1]]
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer to {text!r} within {REPLY_TIMEOUT}s; sent: {self.api.texts()}")
            await asyncio.sleep(0.01)

    async def one(self, text: str) -> str:
        messages = await self.ask(text)
        assert len(messages) == 1, messages
        return messages[0]


@asynccontextmanager
async def chatting(api: FakeBotApi, registry: ServiceRegistry, **kwargs: Any) -> AsyncIterator[Chat]:
    bot = OperatorBot(
        registry, token=TOKEN, allowed_chat_ids=[CHAT], base_url=api.base_url, operator_timezone=ZONE, **kwargs
    )
    await bot.start()
    try:
        yield Chat(api, bot)
    finally:
        await bot.stop()


# ---------------------------------------------------------------------- /schedules with 33 schedules


def thirty_three(store: ScheduleStore, make: MakeSchedule) -> list[str]:
    """33 enabled schedules of every trigger type and cadence (and one disabled); their names."""
    calendar = [
        ("weekday_report", "0 14 * * 1-5", ZONE),
        ("every_five", "*/5 * * * *", ZONE),
        ("monday_review", "0 9 * * 1", ZONE),
        ("six_hourly", "30 */6 * * *", ZONE),
        ("past_the_hour", "15 * * * *", ZONE),
        ("monthly_close", "0 0 1 * *", ZONE),
        ("nightly_backup", "0 3 * * *", ZONE),
        ("evening_digest", "0 21 * * *", ZONE),
        ("with_seconds", "30 0 9 * * mon-fri", ZONE),
        ("alias_daily", "@daily", ZONE),
        ("new_york_noon", "0 12 * * *", "America/New_York"),
        ("utc_morning", "0 6 * * *", "UTC"),
        ("hourly_sync", "0 * * * *", ZONE),
        ("two_hourly", "0 */2 * * *", ZONE),
        ("sunday_plan", "0 10 * * 0", ZONE),
        ("quarter_hour", "*/15 * * * *", ZONE),
    ]
    intervals = [
        ("queue_poll_fast", "10s"),
        ("queue_poll", "15s"),
        ("task_poll", "30s"),
        ("heartbeat", "1m"),
        ("health_check", "5m"),
        ("disk_check", "10m"),
        ("inbox_sync", "15m"),
        ("crm_sync", "1h"),
        ("scan", "2h"),
        ("research", "6h"),
        ("rollup", "1d"),
        ("raw_seconds", "90"),
    ]
    for name, expression, zone in calendar:
        store.add(make(name, trigger_type="calendar", expression=expression, timezone=zone))
    for name, expression in intervals:
        store.add(make(name, trigger_type="interval", expression=expression))
    store.add(make("sweeper", trigger_type="reconciliation", expression="5m", target="scheduler.reconcile"))
    store.add(make("one_shot", trigger_type="delay", expression="+2h"))
    store.add(make("on_stall", trigger_type="event", expression="job.stalled"))
    store.add(make("at_startup", trigger_type="lifecycle", expression="startup"))
    store.add(make("at_shutdown", trigger_type="lifecycle", expression="shutdown"))
    store.add(make("switched_off", expression="5m", enabled=False))
    return (
        [n for n, *_ in calendar]
        + [n for n, _ in intervals]
        + [
            "sweeper",
            "one_shot",
            "on_stall",
            "at_startup",
            "at_shutdown",
        ]
    )


def legacy_thirty_three(store: ScheduleStore, tasks: TaskRegistry) -> list[str]:
    """The real legacy table, migrated as the worker does; skipped when the migration is not there yet."""
    try:
        import cron_definitions
        import jobs
        from agent.scheduler.adapters.legacy_cron import migrate
    except ImportError as exc:
        pytest.skip(f"the legacy migration is not importable here: {exc}")
    jobs.register(tasks, store, worker_id="w1")
    migrate(store, cron_definitions.CRON_JOBS, timezone=ZONE, tasks=tasks)
    return [job.name for job in cron_definitions.CRON_JOBS]


def open_breaker(store: ScheduleStore, name: str) -> None:
    schedule = store.update(name, breaker_threshold=1)
    store.record_outcome(schedule.id, failed=True)
    store.transition_breaker(name, "trip")


def not_configured(store: ScheduleStore, name: str, clock: FakeClock) -> None:
    """A last run skipped the way a task without its service URL ends (TaskNotConfigured)."""
    service = name.split("_", maxsplit=1)[0]
    run = store.create_run(store.get(name), clock.now() - timedelta(minutes=1))
    assert run is not None
    reason = f"not configured: set ACTP_{service.upper()}_URL (base URL of the {service} service)"
    store.transition(run, "skip", reason=reason)


def entries(messages: list[str]) -> dict[str, str]:
    """Each schedule's entry (its lines) by name, across messages."""
    found: dict[str, str] = {}
    for message in messages:
        for block in re.split(r"\n(?=• )", message):
            match = re.match(r"(?:.*\n)*?• (\S+)", block)
            if match:
                name = match.group(1)
                assert name not in found, f"{name} listed twice"
                found[name] = block[block.index("• ") :]
    return found


@pytest.mark.parametrize("table", ["made_here", "legacy_cron"])
@run_async
async def test_schedules_lists_33_schedules_grouped_flagged_and_chunked_under_the_limit(
    table: str, store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, bot_api: FakeBotApi
) -> None:
    tasks = TaskRegistry()
    tasks.add("sweep", lambda ctx: "swept")
    if table == "made_here":
        names = thirty_three(store, make_schedule)
        broken = "two_hourly"
        # Every interval job, and two calendar ones, call a service whose URL is not set.
        unconfigured = {s.name for s in store.list(trigger_type="interval", enabled=True)} | {
            "utc_morning",
            "hourly_sync",
        }
    else:
        names = legacy_thirty_three(store, tasks)
        broken = "upwork_scan"
        # A fresh worker: no cloud service configured, so every job calling one skips as not configured.
        unconfigured = {s.name for s in store.list() if s.target == "jobs.call_service" and s.name != broken}
    assert len(names) == 33 and len(unconfigured) >= 5
    open_breaker(store, broken)
    for name in unconfigured:
        not_configured(store, name, clock)
    engine = ScheduleEngine(store, tasks, clock=clock, worker_id="w1")
    registry = ServiceRegistry()
    proposals = ProposalService(store, tasks, clock)
    register_scheduler_topics(registry, store=store, engine=engine, tasks=tasks, proposals=proposals)

    async with chatting(bot_api, registry) as chat:
        messages = await chat.ask("/schedules")

    assert len(messages) >= 2
    assert all(len(m) <= MAX_MESSAGE_CHARS for m in messages), [len(m) for m in messages]
    assert messages[0].startswith(f"33 enabled schedules · times in {ZONE} (now Sat 13 Mar 13:00)")
    assert all(m.startswith("— ") for m in messages[1:]), "a message starts in the middle of an entry"
    listed = entries(messages)
    assert sorted(listed) == sorted(names)
    assert "switched_off" not in listed
    headings = re.findall(r"^— (.+?) \(\d+\) —$", "\n".join(messages), re.MULTILINE)
    assert headings == [
        h for h in [*[t for _, t in telegram_bot.CADENCE_GROUPS], telegram_bot.ONE_OFF_GROUP] if h in headings
    ]

    assert f"⚠ breaker open (1): {broken}\n" in messages[0]
    assert f"⛔ not configured ({len(unconfigured)}): " in messages[0]
    assert listed[broken].startswith(f"• {broken}  ⚠ breaker open\n")
    for name in unconfigured:
        assert listed[name].startswith(f"• {name}  ⛔ not configured\n")
        service = name.split("_")[0].upper()
        assert f"last skipped · not configured: set ACTP_{service}_URL" in listed[name]
    assert {n for n, e in listed.items() if "⚠" in e.splitlines()[0]} == {broken}
    assert {n for n, e in listed.items() if "⛔" in e.splitlines()[0]} == unconfigured
    assert not any("✖" in e for e in listed.values())  # every task is registered

    if table == "made_here":
        assert "At 14:00, Monday through Friday (0 14 * * 1-5)" in listed["weekday_report"]
        assert "At 12:00 (0 12 * * *, America/New_York)" in listed["new_york_noon"]
        assert "At 09:00:30, Monday through Friday (30 0 9 * * mon-fri)" in listed["with_seconds"]
        assert "cron @daily\n" in listed["alias_daily"]
        assert (
            "every 10s\n  next Sat 13 Mar 13:00:10 (in 10s) · last skipped · not configured"
            in listed["queue_poll_fast"]
        )
        assert "every 5m\n  next Sat 13 Mar 13:05 (in 5m) · last skipped" in listed["health_check"]
        assert "every 1m30s" in listed["raw_seconds"]
        assert "every 5m (sweeper)" in listed["sweeper"]
        assert "At 03:00 (0 3 * * *)\n  next Sun 14 Mar 03:00 (in 14h) · never ran" in listed["nightly_backup"]
        assert "on event job.stalled\n  no next run" in listed["on_stall"]
        assert "at worker startup" in listed["at_startup"]
        groups = {
            "queue_poll_fast": "Every minute or faster",
            "every_five": "Every few minutes, up to hourly",
            "hourly_sync": "Every few minutes, up to hourly",
            "six_hourly": "Several times a day",
            "weekday_report": "Daily",
            "nightly_backup": "Daily",
            "monday_review": "Weekly or rarer",
            "monthly_close": "Weekly or rarer",
            "one_shot": telegram_bot.ONE_OFF_GROUP,
        }
        text = "\n".join(messages)
        for name, group in groups.items():
            heading = text.rfind("\n— ", 0, text.index(f"• {name}"))
            assert text[heading:].startswith(f"\n— {group} ("), name
    else:
        assert "At 14:00, Monday through Friday (0 14 * * 1-5)" in listed["email_sequence_send"]
        assert "every 10s" in listed["mplite_queue_poll"]


def test_pack_keeps_entries_whole_and_repeats_the_section_title() -> None:
    entries_ = [f"• item{i}\n  {'x' * 30}" for i in range(10)]
    messages = pack("intro", [("Daily", entries_)], limit=120)
    assert all(len(m) <= 120 for m in messages)
    assert messages[0].startswith("intro\n\n— Daily (10) —\n• item0")
    assert all(m.startswith("— Daily (10) — (continued)\n• item") for m in messages[1:])
    assert sum(m.count("• item") for m in messages) == 10
    assert pack("x", [("", ["y" * 250])], limit=100) == ["x", "y" * 100, "y" * 100, "y" * 50]


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("0 14 * * 1-5", "At 14:00, Monday through Friday"),
        ("0 18 * * *", "At 18:00"),
        ("30 0 9 * * mon-fri", "At 09:00:30, Monday through Friday"),
        ("@daily", None),
        ("H * * * *", None),
        ("0 0 * * * * 2030", None),
        ("not a cron", None),
    ],
)
def test_cron_descriptions_are_24_hour_english_or_none(expression: str, words: str | None) -> None:
    assert describe_cron(expression) == words


# ---------------------------------------------------------------------- every command, through the registry


@pytest.fixture
def world_factory(store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule) -> Callable[..., Any]:
    async def build(**kwargs: Any) -> World:
        return await make_world(store, clock, make_schedule, **kwargs)

    return build


@run_async
async def test_schedule_runs_status_and_help(world_factory: Callable[..., Any], bot_api: FakeBotApi) -> None:
    world: World = await world_factory()
    async with chatting(bot_api, world.registry) as chat:
        detail = await chat.one("/schedule fragile")
        runs = await chat.one("/runs")
        fragile_runs = await chat.one("/runs fragile")
        status = await chat.one("/status")
        help_ = await chat.one("/help")
        start = await chat.one("/start")
        unknown = await chat.one("/frobnicate now")
        missing = await chat.one("/schedule nope")
    assert detail.startswith("fragile — enabled\nWhen: every 5m\nNext: Sat 13 Mar 13:10:00 Europe/Berlin (in 4m)")
    assert "Breaker: open (1 of 1 failures) · ⚠ breaker open" in detail
    assert "Policies: missed skip · overlap forbid · shutdown graceful_finish · retries 0 · timeout none" in detail
    assert re.search(r"Last runs:\n  Sat 13 Mar 13:05:00 dead_lettered \(try 1, schedule\) · ConnectionError", detail)
    assert runs.startswith("Latest runs (newest first, Europe/Berlin):\n")
    assert {"sweep succeeded", "fragile dead_lettered", "lonely skipped"} <= {
        " ".join(line.split()[4:6]) for line in runs.splitlines()[1:]
    }
    assert fragile_runs.count("\n") == 1 and "fragile dead_lettered" in fragile_runs.splitlines()[1]
    assert status.startswith("Worker w1 · Sat 13 Mar 13:06 Europe/Berlin\n")
    assert "Schedules: 6 enabled, 1 disabled · pending runs 0 · dead letters waiting 1" in status
    assert "⚠ Breakers not closed: fragile (open)" in status
    assert "Last start (w1, Sat 13 Mar 13:00): reconciliation (first_start): 7 schedules" in status
    assert help_ == start == telegram_bot.help_text()
    assert all(f"/{c.name}" in help_ for c in telegram_bot.COMMANDS)
    assert unknown == "Unknown command /frobnicate. /help lists the commands."
    assert missing.startswith("✖ not_found: no schedule named 'nope'")
    await world.close()


@run_async
async def test_disable_enable_and_run_change_the_store_as_the_chat(
    world_factory: Callable[..., Any], bot_api: FakeBotApi
) -> None:
    world: World = await world_factory(run=False)
    store = world.store
    async with chatting(bot_api, world.registry) as chat:
        disabled = await chat.one("/disable sweep  too noisy today")
        assert store.get("sweep").disabled_reason == f"too noisy today (by telegram:{CHAT})"
        assert not store.get("sweep").enabled
        enabled = await chat.one("/enable sweep")
        assert store.get("sweep").enabled
        bare = await chat.one("/disable nightly")
        again = await chat.one("/enable sweep")
        queued = await chat.one("/run on_stall")
    assert disabled == f"sweep disabled: too noisy today (by telegram:{CHAT}). /enable sweep resumes it."
    assert enabled == "sweep enabled: it runs again from its next occurrence."
    assert store.get("nightly").disabled_reason == f"disabled by telegram:{CHAT}"
    assert bare.startswith("nightly disabled: disabled by telegram:4242")
    assert again == "sweep was already enabled."
    (run,) = store.runs(schedule="on_stall")
    assert (run.status, run.origin) == (RunStatus.PENDING, "manual")
    assert queued == f"Run {run.run_id} of on_stall queued; the worker starts it now."


@run_async
async def test_dlq_replay_and_reset(world_factory: Callable[..., Any], bot_api: FakeBotApi) -> None:
    world: World = await world_factory()
    store = world.store
    (letter,) = store.dead_letters()
    async with chatting(bot_api, world.registry) as chat:
        dlq = await chat.one("/dlq")
        refused = await chat.one(f"/replay {letter.run_id}")
        reset = await chat.one("/reset fragile")
        closed = await chat.one("/reset fragile")
        replayed = await chat.one(f"/replay {letter.run_id}")
        empty = await chat.one("/dlq")
    assert dlq.startswith("1 dead letter(s) waiting; replay one with /replay RUN_ID\n• run_")
    assert f"• {letter.run_id} · fragile · Sat 13 Mar 13:05 · 1 tries\n  ConnectionError: service down" in dlq
    assert refused.startswith("✖ refused: cannot replay") and "circuit breaker of fragile is open" in refused
    assert reset == "fragile: breaker closed, runs resume from the next occurrence."
    assert closed.startswith("✖ refused: cannot reset")
    assert replayed == f"Replayed {letter.run_id} of fragile: pending again (by telegram:{CHAT})."
    assert store.dead_letter(letter.id).replayed_by == f"telegram:{CHAT}"
    assert store.get_run(letter.run_id).status is RunStatus.PENDING
    assert empty == "No dead letters waiting."
    await world.close()


@run_async
async def test_proposals_approve_and_reject(world_factory: Callable[..., Any], bot_api: FakeBotApi) -> None:
    world: World = await world_factory(run=False)
    payout = proposal(name="weekly_payout", target="payout", expression="7d", proposed_by="agent-7")
    held = world.proposals.submit(payout)
    world.clock.advance(timedelta(seconds=1))
    other = world.proposals.submit({**payout, "name": "payout_b"})
    async with chatting(bot_api, world.registry, approver_chat_ids=[APPROVER_CHAT]) as chat:
        listed = await chat.one("/proposals")
        not_approver = await chat.one(f"/approve {held.id} looks fine")
        not_rejecter = await chat.one(f"/reject {other.id} looks bad")
        [approved] = await chat.ask(f"/approve {held.id} needed for payroll", chat=APPROVER_CHAT)
        [rejected] = await chat.ask(f"/reject {other.id} too risky for now", chat=APPROVER_CHAT)
        none_left = await chat.one("/proposals")
        everything = await chat.one("/proposals all")
        bad_status = await chat.one("/proposals someday")
    assert listed.startswith("/approve ID [reason] or /reject ID reason\n\n— awaiting approval (2) —\n")
    assert f"• {held.id} · weekly_payout · awaiting_approval · by agent-7 · risk high\n  interval 7d → payout" in listed
    # A chat the bot answers is not thereby an approver: TELEGRAM_APPROVER_CHAT_IDS names those.
    assert (
        not_approver
        == f"✖ refused: proposal {held.id}: Telegram chat {CHAT} is not an approver (TELEGRAM_APPROVER_CHAT_IDS)"
    )
    assert not_rejecter.startswith("✖ refused:") and "is not an approver" in not_rejecter
    assert approved.startswith(f"Proposal {held.id} (weekly_payout) approved by telegram:{APPROVER_CHAT}: schedule ")
    assert world.store.get("weekly_payout").enabled
    decided = world.store.get_proposal(held.id)
    assert (decided.decision_reason, decided.decided_via) == ("needed for payroll", "telegram")
    assert rejected == f"Proposal {other.id} (payout_b) rejected by telegram:{APPROVER_CHAT}: too risky for now"
    assert none_left == "No proposals awaiting approval."
    assert "— all (2) —" in everything and "decision: too risky for now" in everything
    assert bad_status.startswith("✖ invalid: status: 'someday' is not allowed; one of: submitted")


#: Commands missing an argument, and the usage line each gets.
MALFORMED = [
    ("/schedule", "usage: /schedule NAME"),
    ("/disable", "usage: /disable NAME [reason]"),
    ("/enable", "usage: /enable NAME"),
    ("/run", "usage: /run NAME"),
    ("/reset", "usage: /reset NAME"),
    ("/replay", "usage: /replay RUN_ID [force]"),
    ("/approve", "usage: /approve ID [reason]"),
    ("/reject prop_123", "usage: /reject ID reason"),
    ("/reject", "usage: /reject ID reason"),
    ("/disable@actp_test_bot", "usage: /disable NAME [reason]"),
]


@run_async
async def test_a_malformed_command_gets_its_usage_line_and_changes_nothing(
    world_factory: Callable[..., Any], bot_api: FakeBotApi
) -> None:
    world: World = await world_factory(run=False)
    before = (world.store.list(), world.store.runs(), world.store.proposals())
    async with chatting(bot_api, world.registry) as chat:
        for command, usage in MALFORMED:
            assert await chat.ask(command) == [usage], command
    assert (world.store.list(), world.store.runs(), world.store.proposals()) == before


@run_async
async def test_a_bad_value_is_answered_with_the_registry_error(
    world_factory: Callable[..., Any], bot_api: FakeBotApi
) -> None:
    world: World = await world_factory(run=False)
    async with chatting(bot_api, world.registry) as chat:
        too_long = await chat.one(f"/disable {'x' * 200}")
    assert too_long == "✖ invalid: name: at most 128 characters, got 200"


@run_async
async def test_a_chat_not_on_the_allow_list_gets_no_reply_changes_nothing_and_is_logged(
    world_factory: Callable[..., Any], bot_api: FakeBotApi, caplog: pytest.LogCaptureFixture
) -> None:
    world: World = await world_factory(run=False)
    before = (world.store.list(), world.store.runs())
    with caplog.at_level(logging.WARNING, logger="telegram_bot"):
        async with chatting(bot_api, world.registry) as chat:
            for text in ("/disable sweep", "/run sweep", "/schedules", "/help", "hello"):
                assert await chat.ask(text, chat=STRANGER) == []
    assert bot_api.texts(STRANGER) == []
    assert (world.store.list(), world.store.runs()) == before
    assert (
        "ignored '/disable' from chat 9999 (not in TELEGRAM_ALLOWED_CHAT_IDS or TELEGRAM_APPROVER_CHAT_IDS)"
        in caplog.text
    )
    assert "sweep" not in caplog.text  # only the command word is logged


# ---------------------------------------------------------------------- configuration and lifecycle


def test_without_a_token_the_bot_is_off_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="telegram_bot"):
        assert OperatorBot.from_env(ServiceRegistry(), {"TELEGRAM_ALLOWED_CHAT_IDS": "42"}) is None
        assert OperatorBot.from_env(ServiceRegistry(), {"TELEGRAM_BOT_TOKEN": "  "}) is None
    assert [r.getMessage() for r in caplog.records] == [
        "Telegram bot off: TELEGRAM_BOT_TOKEN is not set (the worker runs without it)"
    ] * 2


def test_from_env_reads_chats_base_url_and_the_operator_timezone(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_ALLOWED_CHAT_IDS": "42, -100123",
        "TELEGRAM_API_BASE_URL": "http://127.0.0.1:1/bot",
        "ACTP_TIMEZONE": "America/New_York",
    }
    bot = OperatorBot.from_env(ServiceRegistry(), env)
    assert bot is not None
    assert bot.allowed_chat_ids == {42, -100123}
    approving = OperatorBot.from_env(ServiceRegistry(), {**env, "TELEGRAM_APPROVER_CHAT_IDS": "7"})
    assert approving is not None and approving.allowed_chat_ids == {42, -100123, 7}  # approvers are answered too
    assert (bot.operator_timezone, bot.zone) == ("America/New_York", ZoneInfo("America/New_York"))
    assert bot.app.bot.base_url == f"http://127.0.0.1:1/bot{TOKEN}"
    chosen = OperatorBot.from_env(ServiceRegistry(), {**env, "ACTP_OPERATOR_TIMEZONE": "Asia/Tokyo"})
    assert chosen is not None and chosen.operator_timezone == "Asia/Tokyo"
    utc = OperatorBot.from_env(ServiceRegistry(), {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_ALLOWED_CHAT_IDS": "1"})
    assert utc is not None and utc.operator_timezone == "UTC"
    with caplog.at_level(logging.WARNING, logger="telegram_bot"):
        nobody = OperatorBot.from_env(ServiceRegistry(), {"TELEGRAM_BOT_TOKEN": TOKEN})
    assert nobody is not None and nobody.allowed_chat_ids == frozenset()
    assert "answers no chat: TELEGRAM_ALLOWED_CHAT_IDS is empty" in caplog.text


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"TELEGRAM_ALLOWED_CHAT_IDS": "42,me"}, "TELEGRAM_ALLOWED_CHAT_IDS='42,me': chat ids as whole numbers"),
        ({"ACTP_OPERATOR_TIMEZONE": "Mars/Olympus"}, "ACTP_OPERATOR_TIMEZONE='Mars/Olympus': an IANA timezone name"),
        ({"ACTP_TIMEZONE": "CEST"}, "ACTP_TIMEZONE='CEST': an IANA timezone name"),
    ],
)
def test_bad_configuration_turns_the_bot_off_with_one_error_line(
    env: dict[str, str], words: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="telegram_bot"):
        assert OperatorBot.from_env(ServiceRegistry(), {"TELEGRAM_BOT_TOKEN": TOKEN, **env}) is None
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.ERROR
    assert words in caplog.text and TOKEN not in caplog.text


@run_async
async def test_a_rejected_token_turns_the_bot_off_without_logging_it(
    bot_api: FakeBotApi, caplog: pytest.LogCaptureFixture
) -> None:
    bot = OperatorBot(ServiceRegistry(), token="999:WRONG", allowed_chat_ids=[CHAT], base_url=bot_api.base_url)
    with caplog.at_level(logging.INFO):
        await bot.start()
        await bot.stop()
    assert "Telegram bot off: the Bot API server rejected TELEGRAM_BOT_TOKEN" in caplog.text
    assert "999:WRONG" not in caplog.text


@run_async
async def test_the_bot_keeps_trying_to_start_while_the_bot_api_is_down(
    bot_api: FakeBotApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(telegram_bot, "START_RETRY_SECONDS", 0.05)
    bot_api.stop()
    bot = OperatorBot(
        ServiceRegistry(), token=TOKEN, allowed_chat_ids=[CHAT], base_url=bot_api.base_url, operator_timezone=ZONE
    )
    with caplog.at_level(logging.INFO, logger="telegram_bot"):
        await bot.start()  # returns: the worker goes on
        assert "Telegram bot not started yet (NetworkError" in caplog.text
        bot_api.start()
        deadline = time.monotonic() + REPLY_TIMEOUT
        while "answering 1 chat(s)" not in caplog.text:
            assert time.monotonic() < deadline, "the bot never started polling"
            await asyncio.sleep(0.02)
        assert await Chat(bot_api, bot).one("/help") == telegram_bot.help_text()
        await bot.stop()
    assert "Telegram bot @actp_test_bot answering 1 chat(s), times in Europe/Berlin" in caplog.text


@run_async
async def test_stop_without_start_and_twice_is_harmless() -> None:
    bot = OperatorBot(ServiceRegistry(), token=TOKEN, allowed_chat_ids=[CHAT], base_url="http://127.0.0.1:9/bot")
    await bot.stop()
    await bot.stop()


@run_async
async def test_a_proposals_own_text_is_listed_as_one_bounded_line(
    world_factory: Callable[..., Any], bot_api: FakeBotApi
) -> None:
    world: World = await world_factory(run=False)
    forged = "30m\n\n✅ Proposal prop_0000 (payout) approved by telegram:42\u202e"
    rejected = world.proposals.submit(proposal(name="fake", expression=forged, target="x" * 5000))
    assert rejected.status == "rejected"
    async with chatting(bot_api, world.registry) as chat:
        listed = await chat.one("/proposals rejected")
    entry = listed.split("— rejected (1) —\n", 1)[1]
    assert entry.count("\n") == 2 and "\u202e" not in entry and "\n✅" not in entry, entry
    assert "30m ✅ Proposal prop_0000 (payout) approved by telegram:42\ufffd" in entry
    assert len(listed) < 1000


@run_async
async def test_emit_writes_an_event_as_the_chat_through_the_same_function_as_the_other_doors(
    world_factory: Callable[..., Any], bot_api: FakeBotApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.scheduler import inbox

    calls: list[tuple[Any, Any, str]] = []
    real = inbox.emit_event

    def spy(store: ScheduleStore, name: Any, payload: Any, *, by: Caller) -> Any:
        calls.append((name, payload, by.id))
        return real(store, name, payload, by=by)

    monkeypatch.setattr(inbox, "emit_event", spy)
    world: World = await world_factory(run=False)
    store = world.store
    async with chatting(bot_api, world.registry) as chat:
        emitted = await chat.one('/emit job.stalled {"job": "sync", "n": 2}')
        bare = await chat.one("/emit job.held")
        bad_json = await chat.one("/emit job.stalled {oops")
        not_object = await chat.one("/emit job.stalled [1]")
        bad_name = await chat.one("/emit bad/name")
        usage = await chat.one("/emit")
    by = f"telegram:{CHAT}"
    assert calls[:2] == [("job.stalled", {"job": "sync", "n": 2}, by), ("job.held", {}, by)]
    held, stalled = sorted(store.events(), key=lambda e: e.name)
    assert (stalled.payload, stalled.emitted_by, held.payload) == ({"job": "sync", "n": 2}, by, {})
    assert emitted == f"Event job.stalled ({stalled.id}) emitted by {by}; the worker runs it now."
    assert bare == f"Event job.held ({held.id}) emitted by {by}; the worker runs it now."
    assert bad_json.startswith("✖ invalid: invalid payload='{oops': a JSON object of at most 16384 bytes")
    assert "not JSON: Expecting property name enclosed in double quotes at character 1" in bad_json
    assert not_object.startswith("✖ invalid: invalid payload=[1]: a JSON object") and not_object.endswith(
        "got an array"
    )
    assert bad_name.startswith("✖ invalid: invalid name='bad/name': an event name of 1 to 128 characters")
    assert usage == "usage: /emit NAME [JSON]"
    assert len(store.events()) == 2  # the refused ones wrote nothing
