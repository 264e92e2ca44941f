"""The ACTP worker: runs the durable scheduler until SIGTERM or SIGINT.

    python worker.py [--db PATH_OR_URL] [--tick SECONDS] [--tasks MODULE ...] [--no-legacy]

A ``--tasks`` module exposes ``register(tasks: TaskRegistry, store: ScheduleStore) -> None``.
The first SIGTERM/SIGINT stops dispatching and applies each running run's shutdown policy; a
second one cuts the drain short (every run still in flight is requeued).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.scheduler import SchedulerError, ScheduleStore, SystemClock
from agent.scheduler.adapters.service_registry import register_scheduler_topics
from agent.scheduler.adapters.telegram import TelegramNotifier
from agent.scheduler.adapters.telemetry import TelemetryExporter
from agent.scheduler.arguments import (
    OneLineParser,
    database,
    database_from_environment,
    module_name,
    seconds_between,
    text_up_to,
)
from agent.scheduler.config import ConfigError
from agent.scheduler.engine import LEASE_SECONDS, ScheduleEngine, default_worker_id
from agent.scheduler.errors import DatabaseReplaced, OperatorActionRequired, StoreError
from agent.scheduler.logging_setup import configure_from
from agent.scheduler.proposals import ProposalService
from agent.scheduler.settings import ENV_FILE, Settings, environment, load_settings
from agent.scheduler.tasks import TaskRegistry
from service_registry import ServiceRegistry
from telegram_bot import OperatorBot

log = logging.getLogger("worker")

#: The directory of this script: a .env beside it is read too, under the working directory's.
HERE = Path(__file__).resolve().parent

#: Exit statuses. The service files restart the worker on any failure except EXIT_CONFIGURATION.
EXIT_OK = 0
#: Anything that went wrong and may go away by itself (the service restarts the worker).
EXIT_FAILURE = 1
#: A configuration the operator must fix (bad arguments or environment, a twin worker with the same
#: id, a schema newer than the code): restarting would fail the same way.
EXIT_CONFIGURATION = 2
#: The SQLite file was deleted or replaced under the worker: it stopped without writing into the lost
#: file; a restart opens the file now at the path.
EXIT_DATABASE_REPLACED = 3

#: Once the worker is done (every run recorded, the store closed), the process ends within this many
#: seconds even if code that tasks started is still running: a thread of ``asyncio.to_thread`` that
#: ignores the stop, or a task that swallows its cancel, would otherwise hold the interpreter's exit.
EXIT_GRACE_SECONDS = 2.0


#: ``--tick``: the shortest and longest time between the engine's own scans, in seconds (below the
#: shortest the loop would spin; above the longest a missed wake-up costs more than an hour).
TICK_MIN_SECONDS = 0.1
TICK_MAX_SECONDS = 3600.0
#: ``--lease``: the shortest and longest claim on a run, in seconds (it is renewed every third of it;
#: a worker that dies holds its runs this long before others take them over).
LEASE_MIN_SECONDS = 1.0
LEASE_MAX_SECONDS = 3600.0
#: Longest ``--worker-id``, in characters (the store's column for a run's owner).
WORKER_ID_CHARS = 128


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, each checked (range, length) here: a bad one is one line on stderr and exit status 2."""
    parser = OneLineParser(prog="worker.py", description="Run the ACTP worker's durable scheduler.")
    parser.add_argument(
        "--db",
        type=database,
        default=None,
        help="SQLite path or SQLAlchemy URL (default: $ACTP_SCHEDULER_DB or ~/.actp/scheduler.db)",
    )
    parser.add_argument(
        "--tick",
        type=seconds_between(TICK_MIN_SECONDS, TICK_MAX_SECONDS),
        default=10.0,
        help=f"seconds between the engine's own database scans while its change feed is lost, and at least "
        f"the safety-net scan's period; {TICK_MIN_SECONDS:g} to {TICK_MAX_SECONDS:g} (default 10)",
    )
    parser.add_argument(
        "--tasks",
        type=module_name,
        action="append",
        default=[],
        metavar="MODULE",
        help="module with register(tasks, store); repeatable (default: $ACTP_SCHEDULER_TASKS, comma separated)",
    )
    parser.add_argument("--no-legacy", action="store_true", help="do not migrate or run the legacy cron table")
    parser.add_argument(
        "--worker-id",
        type=text_up_to(WORKER_ID_CHARS, single_line=True),
        default=None,
        help=f"this worker's id, at most {WORKER_ID_CHARS} characters (default: $ACTP_WORKER_ID or the host name)",
    )
    parser.add_argument(
        "--lease",
        type=seconds_between(LEASE_MIN_SECONDS, LEASE_MAX_SECONDS),
        default=LEASE_SECONDS,
        help=f"seconds a run's claim lasts unless renewed, then others take it over, {LEASE_MIN_SECONDS:g} to "
        f"{LEASE_MAX_SECONDS:g} (default {LEASE_SECONDS:g})",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: $ACTP_LOG_LEVEL or INFO",
    )
    return parser.parse_args(argv)


#: A ``--tasks`` module's ``register(tasks, store)``.
Register = Callable[[TaskRegistry, ScheduleStore], None]


def import_task_modules(names: Sequence[str]) -> list[tuple[str, Register]]:
    """Import each ``--tasks`` module and find its ``register``; OperatorActionRequired names a bad one.

    Done before the store is opened, so a module that is missing or broken creates nothing.
    """
    found: list[tuple[str, Register]] = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise OperatorActionRequired(f"--tasks {name}: cannot import the module: {exc}") from exc
        except Exception as exc:  # the module's own code failed while it was imported
            raise OperatorActionRequired(
                f"--tasks {name}: importing the module failed: {type(exc).__name__}: {exc}"
            ) from exc
        register = getattr(module, "register", None)
        if not callable(register):
            raise OperatorActionRequired(f"--tasks {name}: the module has no register(tasks, store) function")
        found.append((name, register))
    return found


def register_task_modules(found: Sequence[tuple[str, Register]], tasks: TaskRegistry, store: ScheduleStore) -> None:
    """Call each imported module's ``register(tasks, store)``; OperatorActionRequired names one that fails."""
    for name, register in found:
        try:
            register(tasks, store)
        except (StoreError, OperatorActionRequired):
            raise  # the database (a restart may help) or already the operator's, named
        except Exception as exc:  # the module's own code (a bad or duplicate schedule too): a restart would not help
            raise OperatorActionRequired(
                f"--tasks {name}: its register(tasks, store) failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
            ) from exc
        log.info("tasks from %s registered", name)


def load_legacy(tasks: TaskRegistry, store: ScheduleStore, worker_id: str, settings: Settings) -> None:
    """Register the jobs' tasks and migrate the legacy cron table (one transaction; a no-op when done before)."""
    import cron_definitions
    import jobs
    from agent.scheduler.adapters.legacy_cron import migrate, worker_timezone

    jobs.register(tasks, store, worker_id=worker_id, settings=settings)
    zone = worker_timezone(settings=settings)
    result = migrate(store, cron_definitions.CRON_JOBS, timezone=zone, tasks=tasks)
    log.info("legacy cron table (%s): %s", zone, result.summary())


async def run(args: argparse.Namespace, settings: Settings) -> int:
    modules = import_task_modules(args.tasks)  # before the store: a bad --tasks creates nothing
    store = ScheduleStore(args.db or settings.scheduler_db, clock=SystemClock())
    tasks = TaskRegistry()
    register_task_modules(modules, tasks, store)
    worker_id = args.worker_id or default_worker_id(settings)
    if not args.no_legacy:
        load_legacy(tasks, store, worker_id, settings)
    notifier = TelegramNotifier.from_settings(settings)
    engine = ScheduleEngine(
        store,
        tasks,
        tick_seconds=args.tick,
        worker_id=worker_id,
        lease_seconds=args.lease,
        notifier=notifier,
        settings=settings,
    )
    exporter = TelemetryExporter.from_settings(store, settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second %s: forcing shutdown, requeueing runs still in flight", signal.Signals(signum).name)
            engine.hurry()
            return
        log.info("%s received: stopping (shutdown policies apply)", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info("worker %s starting on %s", engine.worker_id, store.url)
    await engine.start()
    registry = ServiceRegistry()
    deciders = settings.approvers()
    log.info("proposal approvers: %s", deciders.describe())
    register_scheduler_topics(
        registry,
        store=store,
        engine=engine,
        tasks=tasks,
        proposals=ProposalService(store, tasks, engine.clock, approvers=deciders),
    )
    bot = OperatorBot.from_settings(registry, settings)  # off, with one log line, without TELEGRAM_BOT_TOKEN
    if bot is not None:
        await bot.start()
    # What startup built (modules, tables, the bot) lives as long as the process: keep it out of
    # the collector's full passes, which would otherwise pause the loop for tens of milliseconds.
    gc.freeze()
    runner = asyncio.create_task(engine.run_forever())
    export_stop = asyncio.Event()
    export = asyncio.create_task(exporter.run(export_stop)) if exporter else None
    waiter = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if runner in done and runner.exception() is not None:
        waiter.cancel()
        raise runner.exception()  # type: ignore[misc]
    if bot is not None:
        await bot.stop()
    await engine.stop()
    await asyncio.gather(runner, return_exceptions=True)
    registry.close()
    waiter.cancel()
    export_stop.set()
    if export is not None:
        await export
    if exporter is not None:
        with contextlib.suppress(Exception):  # best effort: what is left goes out on the next start
            await asyncio.to_thread(exporter.export_backlog)
        exporter.close()
    if notifier is not None:
        await notifier.close()
    store.close()
    log.info("worker %s stopped", engine.worker_id)
    return EXIT_OK


def exit_status(exc: BaseException) -> int:
    """The exit status of a worker that ``exc`` ended."""
    if isinstance(exc, DatabaseReplaced):
        return EXIT_DATABASE_REPLACED
    if isinstance(exc, OperatorActionRequired):
        return EXIT_CONFIGURATION
    return EXIT_FAILURE


def exit_within(seconds: float, status: int) -> threading.Timer:
    """End the process with ``status`` after ``seconds`` unless it has ended by then (a daemon timer)."""

    def force() -> None:
        held = sorted(t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread())
        log.warning(
            "the exit was held %gs after the worker stopped by code its tasks left running (threads: %s); "
            "exiting without it",
            seconds,
            ", ".join(held) or "none",
        )
        logging.shutdown()
        os._exit(status)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()
    return timer


async def run_then_exit(args: argparse.Namespace, settings: Settings, grace: float) -> int:
    """``run``; then whatever tasks left running has ``grace`` seconds before the process ends without it."""
    try:
        status = await run(args, settings)
    except BaseException as exc:
        exit_within(grace, exit_status(exc))
        raise
    exit_within(grace, status)
    return status


def main(argv: Sequence[str] | None = None, *, exit_grace: float | None = None) -> int:
    """Run the worker; its exit status.

    With ``exit_grace`` (the script's), the process ends that many seconds after the worker is done
    even if threads or tasks that task code started are still running.
    """
    args = parse_args(argv)
    try:
        # Read once, every variable checked at once (one error lists each bad one), from the real
        # environment over the optional .env files: the working directory's (a service's, as for
        # the command line) over the one beside this script.
        environ = environment([HERE / ENV_FILE, ENV_FILE]).checked()
        settings = load_settings(environ.values)
        if args.db is None:  # the environment's database, checked as --db is
            args.db = database_from_environment(settings.scheduler_db, "ACTP_SCHEDULER_DB")
        if not args.tasks:  # the settings' list (ACTP_SCHEDULER_TASKS, comma separated)
            args.tasks = settings.task_modules
        import_task_modules(args.tasks)  # a bad --tasks is one line here, before anything is opened
    except (ConfigError, ValueError, OperatorActionRequired) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_CONFIGURATION
    configure_from(settings, level=args.log_level)
    log.info("settings: the environment%s", "".join(f" over {f}" for f in reversed(environ.files)))
    try:
        return asyncio.run(run(args, settings) if exit_grace is None else run_then_exit(args, settings, exit_grace))
    except SchedulerError as exc:
        if not isinstance(exc, DatabaseReplaced):  # the engine logged that one, in one ERROR line
            log.error("%s", exc)
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main(exit_grace=EXIT_GRACE_SECONDS))
