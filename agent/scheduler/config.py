"""Every environment variable the worker and its tools read, in one table: default, meaning, secrecy, check.

The worker and the command line read these variables once, into ``settings.Settings``, whose
fields take their checks and defaults from this table; the ``config`` command reports what that
reading found (``settings.config_report``). The table also writes ``.env.example``
(``python -m agent.scheduler config --env-example``; a test keeps the file equal to the table),
masks secrets for display (:func:`mask`) and gives the advice the report carries (:func:`warnings`).

Cloud services follow one pattern, ``ACTP_<SERVICE>_URL`` (base URL), ``ACTP_<SERVICE>_KEY``
(bearer key, secret) and ``ACTP_<SERVICE>_HEALTH_PATH`` (health probe path): the table lists them
for the services the legacy jobs call (``SERVICES``), and any other ``ACTP_<NAME>_URL`` found in
the environment is checked by the same rules.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import InvalidSchedule, OperatorActionRequired
from .identity import InvalidIdentity, operator_name
from .triggers import parse_timezone

#: The cloud services the legacy jobs call (``cron_definitions``); a test keeps this equal to that table.
SERVICES = (
    "acquisition",
    "adlite",
    "cloud_bridge",
    "content",
    "crm",
    "email",
    "genlite",
    "memory",
    "metrics",
    "mplite",
    "publish",
    "research",
    "strategy",
    "upwork",
    "workflow",
)
#: Log formats ``configure_logging`` knows.
LOG_FORMATS = ("human", "json")
#: Log levels, lowest first.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: A secret shows this many leading characters when masked (``123***``); shorter secrets show none.
MASK_KEEP_CHARS = 3
#: Secrets shorter than this are masked whole.
MASK_MIN_LENGTH = 8
#: Longest worker id: it is stored as ``worker:<id>`` in a 128-character key.
WORKER_ID_MAX = 120
#: Query parameters of a URL whose values are masked like passwords.
SECRET_QUERY_WORDS = ("password", "passwd", "secret", "token", "key", "apikey", "sslpassword")

_SERVICE_VARIABLE = re.compile(r"^ACTP_([A-Z][A-Z0-9_]*?)_(URL|KEY|HEALTH_PATH)$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_BOT_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")


class ConfigError(OperatorActionRequired, ValueError):
    """One or more environment variables have values the worker cannot use; fix each one listed.

    ``problems`` holds every bad variable (name, value as shown, allowed values); secrets appear masked.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        lines = [f"  {p.variable}={p.shown!r}: {p.allowed}" for p in self.problems]
        super().__init__(f"invalid configuration ({len(self.problems)} variable(s)):\n" + "\n".join(lines))


@dataclass(frozen=True, slots=True)
class Problem:
    """One variable set to a value its check refuses."""

    variable: str
    shown: str
    """The value as set, masked when the variable is a secret."""
    allowed: str


class BadValue(ValueError):
    """Raised by a check: the value is not one it allows (the setting's ``allowed`` says what is)."""


@dataclass(frozen=True, slots=True)
class Check:
    """How a variable's text becomes a value: ``parse`` raises BadValue for text outside ``allowed``."""

    allowed: str
    parse: Callable[[str], Any]
    kind: str = "text"
    """text, url or path: how the value is masked and shown."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """One environment variable: its meaning, default, secrecy and check."""

    name: str
    meaning: str
    check: Check
    group: str
    default: str | None = None
    """The value used when unset, as text (it goes through ``check`` too); None: unset means off."""
    default_note: str = ""
    """How the default is found when it is not a fixed text (``the host name``)."""
    secret: bool = False
    """Shown masked everywhere: ``config``, error messages, and never logged. (A URL's password is
    masked whether or not the variable is a secret.)"""
    example: str = ""
    """A sample value for ``.env.example`` (defaults to ``default``)."""


# ---------------------------------------------------------------------- checks


def _text(value: str) -> str:
    if not value:
        raise BadValue(value)
    return value


def text_check(allowed: str = "any text") -> Check:
    """Any non-empty text."""
    return Check(allowed, _text)


def path_check() -> Check:
    """A file or directory path; ``~`` is expanded."""
    return Check("a file or directory path (~ is expanded)", lambda v: Path(_text(v)).expanduser(), "path")


def whole_check(minimum: int) -> Check:
    """A whole number, ``minimum`` or more."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise BadValue(value) from None
        if number < minimum:
            raise BadValue(value)
        return number

    return Check(f"a whole number, {minimum} or more", parse)


def number_check(minimum: float) -> Check:
    """A finite number, ``minimum`` or more."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise BadValue(value) from None
        if not minimum <= number < float("inf"):
            raise BadValue(value)
        return number

    return Check(f"a number, {minimum:g} or more", parse)


def choice_check(choices: Iterable[str], *, upper: bool = False) -> Check:
    """One of ``choices`` (case-insensitive; normalized to upper or lower case)."""
    options = tuple(choices)

    def parse(value: str) -> str:
        normal = value.upper() if upper else value.lower()
        if normal not in options:
            raise BadValue(value)
        return normal

    return Check("one of " + ", ".join(options), parse)


def timezone_check() -> Check:
    """An IANA timezone name."""

    def parse(value: str) -> str:
        try:
            parse_timezone(value)
        except InvalidSchedule:
            raise BadValue(value) from None
        return value

    return Check('an IANA timezone name such as "UTC" or "Europe/Berlin"', parse)


def chat_ids_check() -> Check:
    """Comma-separated Telegram chat ids (whole numbers, negative for groups)."""

    def parse(value: str) -> list[int]:
        ids = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                ids.append(int(part))
            except ValueError:
                raise BadValue(value) from None
        return ids

    return Check('chat ids as whole numbers, comma-separated, such as "42,-1001234567890"', parse)


def url_check(schemes: Iterable[str], example: str, *, host_required: bool = True) -> Check:
    """A URL whose scheme is one of ``schemes`` (a ``+driver`` suffix allowed), with a host unless told."""
    allowed_schemes = tuple(schemes)

    def parse(value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise BadValue(value) from None
        if parts.scheme.split("+", 1)[0] not in allowed_schemes or (host_required and not parts.hostname):
            raise BadValue(value)
        return value

    return Check(f"a URL ({' or '.join(s + '://' for s in allowed_schemes)}) such as {example}", parse, "url")


def database_check() -> Check:
    """A SQLite file path or a SQLAlchemy URL (sqlite or postgresql)."""
    as_url = url_check(("sqlite", "postgres", "postgresql"), "postgresql://user:pw@host/db", host_required=False)

    def parse(value: str) -> str:
        if "://" in value:
            return str(as_url.parse(value))
        return str(Path(_text(value)).expanduser())

    return Check(
        "a SQLite file path, or a sqlite:// or postgresql:// URL such as postgresql://user:pw@host/db", parse, "url"
    )


def modules_check() -> Check:
    """Comma-separated importable module names."""

    def parse(value: str) -> list[str]:
        names = [n.strip() for n in value.split(",") if n.strip()]
        if not names or not all(_MODULE.match(n) for n in names):
            raise BadValue(value)
        return names

    return Check('Python module names, comma-separated, such as "my_tasks,team.tasks"', parse)


def operators_check() -> Check:
    """Comma-separated user names on this machine, as operator identities (lower-case ASCII)."""

    def parse(value: str) -> list[str]:
        names = [n.strip() for n in value.split(",") if n.strip()]
        try:
            return sorted({operator_name(n) for n in names})
        except InvalidIdentity:
            raise BadValue(value) from None

    return Check('user names on this machine in lower case, comma-separated, such as "alice,bob"', parse)


def worker_id_check() -> Check:
    """A worker id: printable, no blanks, at most WORKER_ID_MAX characters."""

    def parse(value: str) -> str:
        if not value or len(value) > WORKER_ID_MAX or not value.isprintable() or any(c.isspace() for c in value):
            raise BadValue(value)
        return value

    return Check(f"a name without blanks, at most {WORKER_ID_MAX} characters, such as laptop-1", parse)


def bot_token_check() -> Check:
    """A Telegram bot token: digits, a colon, then letters, digits, ``-`` and ``_``."""

    def parse(value: str) -> str:
        if not _BOT_TOKEN.match(value):
            raise BadValue("")
        return value

    return Check("a bot token from @BotFather: digits, a colon, then letters, digits, - and _", parse)


def url_path_check() -> Check:
    """A URL path starting with ``/``."""

    def parse(value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise BadValue(value)
        return value

    return Check('a path starting with "/", such as /api/health', parse)


# ---------------------------------------------------------------------- the table


def service_settings(service: str) -> tuple[Setting, ...]:
    """The three variables of cloud service ``service`` (lower-case name, as in a schedule's params)."""
    upper = service.upper()
    return (
        Setting(
            name=f"ACTP_{upper}_URL",
            meaning=f"base URL of the {service} service; its jobs are skipped (not failed) while unset",
            check=url_check(("http", "https"), f"https://{service.replace('_', '-')}.example.com"),
            group="services",
        ),
        Setting(
            name=f"ACTP_{upper}_KEY",
            meaning=f"bearer key sent to the {service} service",
            check=text_check("the service's API key"),
            group="services",
            secret=True,
        ),
        Setting(
            name=f"ACTP_{upper}_HEALTH_PATH",
            meaning=f"path the health check probes on the {service} service",
            check=url_path_check(),
            group="services",
            default="/api/health",
        ),
    )


#: Group titles for ``.env.example`` and ``config``, in order.
GROUPS = {
    "scheduler": "The scheduler and the worker",
    "logging": "Logging",
    "telegram": "Telegram: alerts and the operator bot",
    "telemetry": "Run telemetry export",
    "jobs": "The built-in jobs (housekeeping)",
    "services": "Cloud services: ACTP_<SERVICE>_URL, ACTP_<SERVICE>_KEY (secret), ACTP_<SERVICE>_HEALTH_PATH",
    "development": "Tests and benchmarks (not read by the worker)",
}

SETTINGS: tuple[Setting, ...] = (
    Setting(
        name="ACTP_SCHEDULER_DB",
        meaning="where schedules and runs live: a SQLite file, or a PostgreSQL URL shared by several workers",
        check=database_check(),
        group="scheduler",
        default="~/.actp/scheduler.db",
    ),
    Setting(
        name="ACTP_WORKER_ID",
        meaning="this worker's id; runs it holds carry it, and its next start reconciles them",
        check=worker_id_check(),
        group="scheduler",
        default_note="the host name",
        example="laptop-1",
    ),
    Setting(
        name="ACTP_TIMEZONE",
        meaning="timezone of the legacy calendar jobs (and of the operator bot, unless ACTP_OPERATOR_TIMEZONE)",
        check=timezone_check(),
        group="scheduler",
        default_note="TZ, else the system's zone (/etc/localtime), else UTC",
        example="Europe/Berlin",
    ),
    Setting(
        name="TZ",
        meaning="the system's timezone; read only when ACTP_TIMEZONE is unset (POSIX rules are passed over)",
        check=text_check("a timezone such as Europe/Berlin"),
        group="scheduler",
        default_note="the system's zone",
    ),
    Setting(
        name="ACTP_SCHEDULER_TASKS",
        meaning="task modules the worker, the proposal commands and install-service load when no --tasks is given",
        check=modules_check(),
        group="scheduler",
        example="tests.fixtures.sample_tasks",
    ),
    Setting(
        name="ACTP_APPROVER_OPERATORS",
        meaning=(
            "user names on this machine who may approve or reject agent proposals at the command line "
            "(the user running it, not a name it is given); unset: nobody there"
        ),
        check=operators_check(),
        group="scheduler",
        example="alice",
    ),
    Setting(
        name="ACTP_LOG_LEVEL",
        meaning="lowest level logged (transitions' chatter stays at WARNING and above)",
        check=choice_check(LOG_LEVELS, upper=True),
        group="logging",
        default="INFO",
    ),
    Setting(
        name="ACTP_LOG_FORMAT",
        meaning="human: one readable line per record; json: one JSON object per line (time, level, logger, message...)",
        check=choice_check(LOG_FORMATS),
        group="logging",
        default="human",
    ),
    Setting(
        name="TELEGRAM_BOT_TOKEN",
        meaning="the bot's token from @BotFather; without it alerts stay in the outbox as undeliverable",
        check=bot_token_check(),
        group="telegram",
        secret=True,
        example="123456789:AAH-your-token",
    ),
    Setting(
        name="TELEGRAM_ALERT_CHAT_IDS",
        meaning="chats that receive alerts (else TELEGRAM_ALLOWED_CHAT_IDS)",
        check=chat_ids_check(),
        group="telegram",
        example="42,-1001234567890",
    ),
    Setting(
        name="TELEGRAM_ALLOWED_CHAT_IDS",
        meaning="chats the operator bot answers; other chats are ignored (and logged)",
        check=chat_ids_check(),
        group="telegram",
        example="42",
    ),
    Setting(
        name="TELEGRAM_APPROVER_CHAT_IDS",
        meaning=(
            "chats whose messages may approve or reject agent proposals (/approve, /reject); the bot answers "
            "them too; a group chat lets every member approve; unset: nobody on Telegram"
        ),
        check=chat_ids_check(),
        group="telegram",
        example="42",
    ),
    Setting(
        name="TELEGRAM_API_BASE_URL",
        meaning="another Bot API server (a local one); the client appends /bot<token>",
        check=url_check(("http", "https"), "http://127.0.0.1:8081/bot"),
        group="telegram",
        default_note="https://api.telegram.org/bot",
    ),
    Setting(
        name="ACTP_OPERATOR_TIMEZONE",
        meaning="timezone the operator bot shows times in",
        check=timezone_check(),
        group="telegram",
        default_note="ACTP_TIMEZONE, else UTC",
        example="Europe/Berlin",
    ),
    Setting(
        name="SUPABASE_DB_URL",
        meaning="PostgreSQL database that receives finished runs (actp_scheduled_runs) and worker heartbeats",
        check=url_check(("postgres", "postgresql"), "postgresql://user:pw@db.example.supabase.co:5432/postgres"),
        group="telemetry",
        secret=True,
    ),
    Setting(
        name="ACTP_DATA_DIR",
        meaning="directory whose disk the disk-space check measures",
        check=path_check(),
        group="jobs",
        default="~/.actp",
    ),
    Setting(
        name="ACTP_DOWNLOAD_DIR",
        meaning="the worker's download directory; temp cleanup deletes files older than 24 h there",
        check=path_check(),
        group="jobs",
        default="~/.actp/downloads",
    ),
    Setting(
        name="ACTP_LOG_DIR",
        meaning="directory whose *.log files log rotation rotates (the service files log to worker.log there)",
        check=path_check(),
        group="jobs",
        default="~/.actp/logs",
    ),
    Setting(
        name="ACTP_LOG_MAX_BYTES",
        meaning="log rotation rotates a file at this size (and daily)",
        check=whole_check(1),
        group="jobs",
        default="10485760",
    ),
    Setting(
        name="ACTP_LOG_KEEP",
        meaning="rotated copies kept per log file",
        check=whole_check(1),
        group="jobs",
        default="7",
    ),
    Setting(
        name="ACTP_DISK_MIN_FREE_MB",
        meaning="the disk-space check alerts below this many free megabytes",
        check=number_check(0),
        group="jobs",
        default="1024",
    ),
    Setting(
        name="ACTP_RUN_RETENTION_DAYS",
        meaning="database maintenance prunes finished runs older than this",
        check=whole_check(1),
        group="jobs",
        default="30",
    ),
    Setting(
        name="ACTP_HTTP_TIMEOUT_SECONDS",
        meaning="how long one cloud service call may take, unless its schedule says",
        check=number_check(0.001),
        group="jobs",
        default="20",
    ),
    *(s for service in SERVICES for s in service_settings(service)),
    Setting(
        name="ACTP_TEST_POSTGRES_URL",
        meaning="PostgreSQL server of the tests (scripts/test-postgres.sh start prints it); unset: those tests skip",
        check=url_check(("postgres", "postgresql"), "postgresql://postgres@127.0.0.1:55432/postgres"),
        group="development",
    ),
    Setting(
        name="ACTP_TEST_PG_PORT",
        meaning="port of the throwaway test PostgreSQL server",
        check=whole_check(1),
        group="development",
        default="55432",
    ),
    Setting(
        name="ACTP_TEST_PG_DATA",
        meaning="data directory of the throwaway test PostgreSQL server",
        check=path_check(),
        group="development",
        default="/tmp/actp-test-pg",
    ),
    Setting(
        name="ACTP_TEST_PG_BIN",
        meaning="directory of the PostgreSQL binaries; exported by scripts/test-postgres.sh start, read by nothing",
        check=path_check(),
        group="development",
        default_note="found on the system",
    ),
    Setting(
        name="ACTP_BENCH_QUICK",
        meaning="benchmarks run at tiny sizes when set (the tests set it)",
        check=text_check("any text, such as 1"),
        group="development",
    ),
)

#: The table by variable name.
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


# ---------------------------------------------------------------------- masking


def mask_secret(value: str) -> str:
    """``123***``: the first characters of a long secret, nothing of a short one."""
    return (value[:MASK_KEEP_CHARS] if len(value) >= MASK_MIN_LENGTH else "") + "***"


def mask_url(value: str) -> str:
    """The URL with its password and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return mask_secret(value)
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostinfo}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_secret_word(k) for k, _ in pairs):
        query = urlencode([(k, "***" if _secret_word(k) else v) for k, v in pairs], safe="*/:")
    if (netloc, query) == (parts.netloc, parts.query):
        return value  # nothing to hide (and urlunsplit would drop the empty host of sqlite:////path)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret_word(name: str) -> bool:
    return any(w in name.lower() for w in SECRET_QUERY_WORDS)


def mask(setting: Setting, value: str) -> str:
    """``value`` as it may be shown: URLs lose their passwords, other secrets all but a prefix."""
    if setting.check.kind == "url" and "://" in value:
        return mask_url(value)
    if setting.secret:
        return mask_secret(value)
    return value


# ---------------------------------------------------------------------- advice


def warnings(env: Mapping[str, str], set_names: Iterable[str], known: Iterable[str]) -> list[str]:
    """What works but is probably not meant: a token without chats, a URL without its key, a misspelt name.

    ``set_names`` are the variables set to good values, ``known`` every variable checked.
    """
    out = []
    set_ = set(set_names)
    chats = {"TELEGRAM_ALERT_CHAT_IDS", "TELEGRAM_ALLOWED_CHAT_IDS"} & set_
    if "TELEGRAM_BOT_TOKEN" in set_ and not chats:
        out.append("TELEGRAM_BOT_TOKEN is set but no chat ids: set TELEGRAM_ALERT_CHAT_IDS to receive alerts")
    if chats and "TELEGRAM_BOT_TOKEN" not in set_:
        out.append(f"{', '.join(sorted(chats))} set but TELEGRAM_BOT_TOKEN is not: nothing is sent")
    for name in sorted(set_):
        m = _SERVICE_VARIABLE.match(name)
        if m and m.group(2) == "URL" and f"ACTP_{m.group(1)}_KEY" not in set_:
            out.append(f"{name} is set without ACTP_{m.group(1)}_KEY: its authenticated calls are skipped")
    checked = set(known)
    listed = [s.name for s in SETTINGS]
    for name in sorted(set_ - set(BY_NAME)):
        near = difflib.get_close_matches(name, listed, n=1, cutoff=0.9)
        if near:
            out.append(f"{name} names a service the legacy jobs do not call (did you mean {near[0]}?)")
    for name in sorted(env):
        if name.startswith("ACTP_") and name not in checked and env[name].strip():
            near = difflib.get_close_matches(name, checked, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            out.append(f"{name} is not a variable the worker reads{hint}")
    return out


# ---------------------------------------------------------------------- .env files


#: The largest ``.env`` file read: settings are a few kilobytes; anything far larger is not one.
ENV_FILE_BYTES = 1024 * 1024


def parse_env_file(path: str | os.PathLike[str]) -> tuple[dict[str, str], list[Problem]]:
    """The ``NAME=value`` lines of a ``.env`` file (blank lines, ``#`` comments and ``export`` prefixes
    allowed; one pair of surrounding quotes is removed), and a problem for each line that is not one.

    A missing file is empty. A problem names the file and the line, never the line's text: a line
    that is not ``NAME=value`` may be part of a secret written over several lines.
    """
    file = Path(path)
    readable = f"a readable UTF-8 text file of at most {ENV_FILE_BYTES // 1024} KiB"
    try:
        info = file.stat()
    except FileNotFoundError:
        if file.is_symlink():
            return {}, [Problem(str(file), "(unreadable)", f"{readable} (a broken symbolic link)")]
        return {}, []
    except (OSError, RuntimeError) as exc:  # a symbolic link loop, a permission
        return {}, [Problem(str(file), "(unreadable)", f"{readable} ({type(exc).__name__})")]
    if not stat.S_ISREG(info.st_mode):  # a directory, a FIFO, a device: nothing to read, or no end to it
        return {}, [Problem(str(file), "(unreadable)", f"{readable} (not a regular file)")]
    if info.st_size > ENV_FILE_BYTES:
        return {}, [Problem(str(file), "(unreadable)", f"{readable} (got {info.st_size} bytes)")]
    values: dict[str, str] = {}
    problems: list[Problem] = []
    try:
        text_of_file = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [Problem(str(file), "(unreadable)", f"{readable} ({type(exc).__name__})")]
    for number, line in enumerate(text_of_file.splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, value = text.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            problems.append(
                Problem(f"{file} line {number}", "(not shown)", "NAME=value on one line (NAME: letters, digits, _)")
            )
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if "\x00" in value:  # no environment variable can hold it
            problems.append(Problem(f"{file} line {number}", name, "a value without NUL"))
            continue
        values[name] = value
    return values, problems


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``parse_env_file``, refusing a file with any bad line (ConfigError naming each)."""
    values, problems = parse_env_file(path)
    if problems:
        raise ConfigError(problems)
    return values


# ---------------------------------------------------------------------- .env.example


def env_example() -> str:
    """The text of ``.env.example``: every variable of the table, commented out, with its meaning and default."""
    lines = [
        "# The ACTP worker's environment: every variable it reads, with its default.",
        "# Copy to .env and uncomment what you set. Generated from agent/scheduler/config.py:",
        "#   .venv/bin/python -m agent.scheduler config --env-example > .env.example",
        "# Check a configuration with: .venv/bin/python -m agent.scheduler config",
    ]
    for group, title in GROUPS.items():
        lines += ["", f"# === {title}"]
        for s in (s for s in SETTINGS if s.group == group):
            if group != "services":
                default = s.default if s.default is not None else (s.default_note or "unset")
                lines.append(f"# {s.name}: {s.meaning}.")
                lines.append(f"#   Allowed: {s.check.allowed}. Default: {default}." + (" Secret." if s.secret else ""))
            elif s.name.endswith("_URL"):
                lines.append(f"# {s.name.removesuffix('_URL').removeprefix('ACTP_').lower()}")
            sample = s.example or s.default or ""
            lines.append(f"#{s.name}={sample}")
    return "\n".join(lines) + "\n"
