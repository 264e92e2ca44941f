"""One typed settings object, read once from the environment and passed down.

``load_settings()`` reads the process environment (with an optional ``.env`` file under it: the
environment wins) and checks every variable at once; ``load_settings(mapping)`` does the same
for a mapping, without looking at the process. A bad value raises ONE ``ConfigError`` listing each
bad variable with what it allows. This is the only module that reads the process environment;
everything else receives a :class:`Settings`.

Each variable's name, meaning, check and default live in the table of :mod:`.config`; the fields
below take them from there, so a default is written once. :func:`config_report` (the ``config``
command) is made from this same reading: each value, where it came from (the model's set fields),
and the bad ones (pydantic's errors), so each variable is checked in one place.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .config import (
    BY_NAME,
    SERVICES,
    SETTINGS,
    BadValue,
    ConfigError,
    Problem,
    Setting,
    mask,
    parse_env_file,
    service_settings,
    warnings,
)
from .identity import Approvers

__all__ = [
    "ConfigReport",
    "Environment",
    "Entry",
    "ServiceSettings",
    "Settings",
    "check_settings",
    "config_report",
    "environment",
    "load_settings",
    "read_environment",
]

_SERVICE_VARIABLE = re.compile(r"^ACTP_([A-Z][A-Z0-9_]*?)_(URL|KEY|HEALTH_PATH)$")
#: The error type a variable's check raises inside validation.
_BAD_VALUE = "bad_value"

#: The mapping ``load_settings`` was given, read by the settings source instead of the process's.
_GIVEN: ContextVar[Mapping[str, str] | None] = ContextVar("actp_settings_environ", default=None)


def _checked(setting: Setting) -> BeforeValidator:
    """The table's check of ``setting`` as a validator: text is parsed, a refusal names what is allowed."""

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value  # a typed value given in code; the field's type checks it
        try:
            return setting.check.parse(value)
        except BadValue:
            raise PydanticCustomError(_BAD_VALUE, "{allowed}", {"allowed": setting.check.allowed}) from None

    return BeforeValidator(parse)


def _variable(name: str) -> Any:
    """The field of variable ``name``: its alias, meaning and the table's default (checked like a set value)."""
    setting = BY_NAME[name]
    info: Any = Field(
        default=setting.default, validation_alias=name, description=setting.meaning, repr=not setting.secret
    )
    info.validate_default = setting.default is not None
    return info


def _check(name: str) -> BeforeValidator:
    return _checked(BY_NAME[name])


#: One service's three variables: their checks and the health path's default hold for every service.
_SERVICE_URL, _SERVICE_KEY, _SERVICE_HEALTH_PATH = service_settings("service")


class ServiceSettings(BaseModel):
    """``ACTP_<SERVICE>_URL``, ``_KEY`` and ``_HEALTH_PATH`` of one cloud service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: Annotated[str | None, _checked(_SERVICE_URL)] = None
    """Base URL; the service's jobs are skipped (not failed) while it is unset."""
    key: Annotated[str | None, _checked(_SERVICE_KEY)] = Field(default=None, repr=False)
    """Bearer key (secret)."""
    health_path: Annotated[str, _checked(_SERVICE_HEALTH_PATH)] = Field(
        default=_SERVICE_HEALTH_PATH.default, validate_default=True
    )
    """Path the health check probes."""


class _EnvironmentSource(PydanticBaseSettingsSource):
    """Every variable of the environment (or of the mapping ``load_settings`` was given), by name."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        given = _GIVEN.get()
        return dict(os.environ if given is None else given)


class Settings(BaseSettings):
    """Every setting the worker, the command line, the adapters and the jobs use, checked.

    Field aliases are the environment variables' names; unset or blank variables take the table's
    default (or None: off). Build it with :func:`load_settings`.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True, validate_by_name=True)

    scheduler_db: Annotated[str, _check("ACTP_SCHEDULER_DB")] = _variable("ACTP_SCHEDULER_DB")
    worker_id: Annotated[str | None, _check("ACTP_WORKER_ID")] = _variable("ACTP_WORKER_ID")
    timezone: Annotated[str | None, _check("ACTP_TIMEZONE")] = _variable("ACTP_TIMEZONE")
    tz: Annotated[str | None, _check("TZ")] = _variable("TZ")
    scheduler_tasks: Annotated[list[str] | None, _check("ACTP_SCHEDULER_TASKS")] = _variable("ACTP_SCHEDULER_TASKS")
    approver_operators: Annotated[list[str] | None, _check("ACTP_APPROVER_OPERATORS")] = _variable(
        "ACTP_APPROVER_OPERATORS"
    )
    log_level: Annotated[str, _check("ACTP_LOG_LEVEL")] = _variable("ACTP_LOG_LEVEL")
    log_format: Annotated[str, _check("ACTP_LOG_FORMAT")] = _variable("ACTP_LOG_FORMAT")
    telegram_bot_token: Annotated[str | None, _check("TELEGRAM_BOT_TOKEN")] = _variable("TELEGRAM_BOT_TOKEN")
    telegram_alert_chat_ids: Annotated[list[int] | None, _check("TELEGRAM_ALERT_CHAT_IDS")] = _variable(
        "TELEGRAM_ALERT_CHAT_IDS"
    )
    telegram_allowed_chat_ids: Annotated[list[int] | None, _check("TELEGRAM_ALLOWED_CHAT_IDS")] = _variable(
        "TELEGRAM_ALLOWED_CHAT_IDS"
    )
    telegram_approver_chat_ids: Annotated[list[int] | None, _check("TELEGRAM_APPROVER_CHAT_IDS")] = _variable(
        "TELEGRAM_APPROVER_CHAT_IDS"
    )
    telegram_api_base_url: Annotated[str | None, _check("TELEGRAM_API_BASE_URL")] = _variable("TELEGRAM_API_BASE_URL")
    operator_timezone: Annotated[str | None, _check("ACTP_OPERATOR_TIMEZONE")] = _variable("ACTP_OPERATOR_TIMEZONE")
    supabase_db_url: Annotated[str | None, _check("SUPABASE_DB_URL")] = _variable("SUPABASE_DB_URL")
    data_dir: Annotated[Path, _check("ACTP_DATA_DIR")] = _variable("ACTP_DATA_DIR")
    download_dir: Annotated[Path, _check("ACTP_DOWNLOAD_DIR")] = _variable("ACTP_DOWNLOAD_DIR")
    log_dir: Annotated[Path, _check("ACTP_LOG_DIR")] = _variable("ACTP_LOG_DIR")
    log_max_bytes: Annotated[int, _check("ACTP_LOG_MAX_BYTES")] = _variable("ACTP_LOG_MAX_BYTES")
    log_keep: Annotated[int, _check("ACTP_LOG_KEEP")] = _variable("ACTP_LOG_KEEP")
    disk_min_free_mb: Annotated[float, _check("ACTP_DISK_MIN_FREE_MB")] = _variable("ACTP_DISK_MIN_FREE_MB")
    run_retention_days: Annotated[int, _check("ACTP_RUN_RETENTION_DAYS")] = _variable("ACTP_RUN_RETENTION_DAYS")
    http_timeout_seconds: Annotated[float, _check("ACTP_HTTP_TIMEOUT_SECONDS")] = _variable("ACTP_HTTP_TIMEOUT_SECONDS")
    test_postgres_url: Annotated[str | None, _check("ACTP_TEST_POSTGRES_URL")] = _variable("ACTP_TEST_POSTGRES_URL")
    test_pg_port: Annotated[int, _check("ACTP_TEST_PG_PORT")] = _variable("ACTP_TEST_PG_PORT")
    test_pg_data: Annotated[Path, _check("ACTP_TEST_PG_DATA")] = _variable("ACTP_TEST_PG_DATA")
    test_pg_bin: Annotated[Path | None, _check("ACTP_TEST_PG_BIN")] = _variable("ACTP_TEST_PG_BIN")
    bench_quick: Annotated[str | None, _check("ACTP_BENCH_QUICK")] = _variable("ACTP_BENCH_QUICK")
    services: dict[str, ServiceSettings] = Field(default_factory=dict)
    """Every service with a variable set, by lower-case name (``crm`` for ``ACTP_CRM_URL``)."""

    _variables: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _from_variables(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """Blank variables count as unset; ``ACTP_<SERVICE>_*`` variables are gathered by service."""
        if not isinstance(data, Mapping):
            return handler(data)
        values: dict[str, Any] = {}
        services: dict[str, dict[str, str]] = {}
        for name, given in data.items():
            value = given.strip() if isinstance(given, str) else given
            if value == "":
                continue
            m = _SERVICE_VARIABLE.match(name) if isinstance(name, str) and name not in _FIELD_VARIABLES else None
            if m is not None and isinstance(value, str):
                services.setdefault(m.group(1).lower(), {})[m.group(2).lower()] = value
            else:
                values[name] = value
        if services:
            values["services"] = {**services, **(values.get("services") or {})}
        settings = handler(values)
        settings._variables = {k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, str)}
        settings._variables.update(
            (f"ACTP_{service.upper()}_{kind.upper()}", text)
            for service, kinds in services.items()
            for kind, text in kinds.items()
        )
        return settings

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvironmentSource(settings_cls))

    # ------------------------------------------------------------------ derived values

    @property
    def alert_chat_ids(self) -> list[int]:
        """TELEGRAM_ALERT_CHAT_IDS, else TELEGRAM_ALLOWED_CHAT_IDS."""
        return list(self.telegram_alert_chat_ids or self.telegram_allowed_chat_ids or [])

    @property
    def effective_worker_id(self) -> str:
        """ACTP_WORKER_ID, else this machine's host name (stable across restarts of the same worker)."""
        return self.worker_id or socket.gethostname()

    @property
    def task_modules(self) -> list[str]:
        """ACTP_SCHEDULER_TASKS as a list (empty when unset)."""
        return list(self.scheduler_tasks or [])

    def service(self, name: str) -> ServiceSettings:
        """The settings of service ``name`` (lower-case); an unset service has no URL or key."""
        return self.services.get(name.lower()) or ServiceSettings()

    def approvers(self) -> Approvers:
        """The humans who may approve proposals: TELEGRAM_APPROVER_CHAT_IDS and ACTP_APPROVER_OPERATORS."""
        return Approvers.of(
            telegram_chats=self.telegram_approver_chat_ids or [], operators=self.approver_operators or []
        )

    def is_set(self, variable: str) -> bool:
        """Whether ``variable`` was set (not blank) where these settings were read: a task's ``requires``."""
        return variable in self._variables

    def secret_values(self) -> list[str]:
        """The secrets that are set, and the passwords in URLs (for a log filter that redacts them)."""
        out: list[str] = []
        for name, text in self._variables.items():
            setting = BY_NAME.get(name) or _service_setting(name)
            if setting is None:
                continue
            if setting.check.kind == "url":
                shown = mask(setting, text)
                if shown != text:
                    out.extend(_url_secrets(text))
            elif setting.secret:
                out.append(text)
        return out


#: The variables that are fields of their own (``ACTP_TEST_POSTGRES_URL`` is no service's).
_FIELD_VARIABLES = frozenset(
    name for name in BY_NAME if not (m := _SERVICE_VARIABLE.match(name)) or m.group(1).lower() not in SERVICES
)


def _service_setting(name: str) -> Setting | None:
    m = _SERVICE_VARIABLE.match(name)
    if m is None:
        return None
    return next(s for s in service_settings(m.group(1).lower()) if s.name == name)


def _url_secrets(text: str) -> list[str]:
    from urllib.parse import parse_qsl, urlsplit

    from .config import SECRET_QUERY_WORDS

    try:
        parts = urlsplit(text)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query) if v and any(w in k.lower() for w in SECRET_QUERY_WORDS)]
    return found


#: The optional settings file of the worker and the command line, read from their working directory
#: (a service's WorkingDirectory): ``NAME=value`` lines under the real environment, which wins.
ENV_FILE = ".env"


@dataclass(frozen=True, slots=True)
class Environment:
    """The process environment over optional ``.env`` files, and what came from where."""

    values: dict[str, str]
    from_file: dict[str, str] = field(default_factory=dict)
    """Variable -> the file its value came from (the environment did not set it)."""
    files: tuple[str, ...] = ()
    """The files that were there and were read."""
    problems: tuple[Problem, ...] = ()
    """The files' bad lines (named by file and line, never shown): every other line was read."""

    def checked(self) -> Environment:
        """This environment, or ConfigError naming each bad line of its files (the worker's reading)."""
        if self.problems:
            raise ConfigError(self.problems)
        return self


def environment(env_files: Iterable[str | os.PathLike[str]] = ()) -> Environment:
    """The process environment over the ``NAME=value`` lines of ``env_files``: a later file wins over
    an earlier one, the environment over every file. A bad line is a problem; the rest are read."""
    values: dict[str, str] = {}
    source: dict[str, str] = {}
    files: list[str] = []
    problems: list[Problem] = []
    seen: set[Path] = set()
    for env_file in env_files:
        try:
            where = Path(env_file).resolve()
        except (OSError, RuntimeError):  # a symbolic link loop: parse_env_file names it
            where = Path(os.path.abspath(env_file))
        if where in seen:
            continue  # the working directory is the script's: one file, read once
        seen.add(where)
        found, bad = parse_env_file(env_file)
        if found or bad or Path(env_file).is_file():
            files.append(str(env_file))
        values.update(found)
        source.update(dict.fromkeys(found, str(env_file)))
        problems += bad
    from_file = {name: path for name, path in source.items() if name not in os.environ}
    return Environment({**values, **os.environ}, from_file, tuple(files), tuple(problems))


def read_environment(env_file: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The process environment, over the ``NAME=value`` lines of ``env_file`` when given (the environment
    wins); ConfigError names each bad line of the file."""
    return environment([] if env_file is None else [env_file]).checked().values


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | os.PathLike[str] | None = None,
    only: Iterable[str] | None = None,
) -> Settings:
    """The settings in ``environ`` (default: the process environment, over ``env_file``), every variable checked.

    ``only`` limits the reading to those variables (the others take their defaults), for a library
    entry point that needs one setting and must not fail on an unrelated one. Raises ConfigError
    listing EVERY bad variable, with its value (secrets masked) and what it allows.
    """
    env: Mapping[str, str] = read_environment(env_file) if environ is None else environ
    if only is not None:
        wanted = set(only)
        env = {k: v for k, v in env.items() if k in wanted}
    token = _GIVEN.set(env)
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_problems(exc, env)) from None
    finally:
        _GIVEN.reset(token)


def check_settings(environ: Mapping[str, str] | None = None) -> tuple[Settings, list[Problem]]:
    """The settings and the bad variables: each bad one is read as unset, so what does not need it still works.

    For the command line, whose commands each need a few settings: a command that needs a bad one
    refuses with its problem; the worker uses :func:`load_settings`, which refuses any.
    """
    env: Mapping[str, str] = read_environment() if environ is None else environ
    try:
        return load_settings(env), []
    except ConfigError as exc:
        bad = {p.variable for p in exc.problems}
        return load_settings({k: v for k, v in env.items() if k not in bad}), list(exc.problems)


def _problems(exc: ValidationError, env: Mapping[str, str]) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if loc and loc[0] == "services" and len(loc) >= 3:
            name = f"ACTP_{str(loc[1]).upper()}_{str(loc[2]).upper()}"
        else:
            name = str(loc[0]) if loc else "?"
        setting = BY_NAME.get(name) or _service_setting(name)
        raw = str(env.get(name, error.get("input", ""))).strip()
        allowed = setting.check.allowed if setting else (error.get("ctx") or {}).get("allowed", error["msg"])
        problems.append(Problem(name, mask(setting, raw) if setting else raw, str(allowed)))
    return sorted(problems, key=lambda p: _TABLE_ORDER.get(p.variable, (len(_TABLE_ORDER), p.variable)))


#: Where each variable of the table stands in it; service variables outside it come after, by name.
_TABLE_ORDER = {s.name: (i, "") for i, s in enumerate(SETTINGS)}
#: The field holding each variable that is a field of its own.
_FIELD_OF = {str(info.validation_alias): name for name, info in Settings.model_fields.items() if info.validation_alias}


# ---------------------------------------------------------------------- the configuration report


@dataclass(frozen=True, slots=True)
class Entry:
    """One variable's effective value and where it came from."""

    setting: Setting
    value: Any
    """The checked value (the default's, when unset), or None when unset without a default or invalid."""
    text: str | None
    """The text as set, or the default's text, or None."""
    source: str
    """env (set in the environment), the path of the ``.env`` file that set it, default (unset, the
    table's default), unset, or invalid (set to a value its check refuses)."""

    @property
    def shown(self) -> str | None:
        """The text, masked when it must be."""
        return None if self.text is None else mask(self.setting, self.text)


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """What reading the settings found: every variable of the table plus service variables that are set."""

    settings: Settings
    """The settings, each bad variable read as unset (as :func:`check_settings` gives them)."""
    entries: dict[str, Entry]
    problems: tuple[Problem, ...] = ()
    """Each variable set to a value its check refuses, in table order."""
    warnings: tuple[str, ...] = field(default=())
    """Things that work but are probably not meant (a token without chats, an unknown ACTP_ variable)."""

    @property
    def services(self) -> list[str]:
        """Services whose URL is set (lower-case names)."""
        return sorted(name for name, service in self.settings.services.items() if service.url is not None)

    def display(self, *, include_unset: bool = True) -> list[dict[str, Any]]:
        """One dict per variable (name, value masked, source, secret, group, meaning, default), table order."""
        rows = []
        for name, e in self.entries.items():
            if not include_unset and e.source == "unset":
                continue
            rows.append(
                {
                    "name": name,
                    "value": e.shown,
                    "source": e.source,
                    "secret": e.setting.secret,
                    "group": e.setting.group,
                    "meaning": e.setting.meaning,
                    "default": e.setting.default if e.setting.default is not None else (e.setting.default_note or None),
                }
            )
        return rows


def config_report(environ: Mapping[str, str] | Environment) -> ConfigReport:
    """The settings read from ``environ`` as the ``config`` command shows them: values, sources, problems, advice.

    Given an :class:`Environment`, a value that came from a ``.env`` file shows that file as its
    source, and the files' bad lines come first among the problems.
    """
    env = environ if isinstance(environ, Environment) else Environment(dict(environ))
    environ, files = env.values, env.from_file
    settings, problems = check_settings(environ)
    problems = [*env.problems, *problems]
    bad = {p.variable for p in problems}
    extra = sorted(
        name for name, text in environ.items() if name not in BY_NAME and _service_setting(name) and text.strip()
    )
    entries: dict[str, Entry] = {}
    for setting in (*SETTINGS, *(s for s in map(_service_setting, extra) if s is not None)):
        name = setting.name
        value, given = _value(settings, name)
        if name in bad:
            entries[name] = Entry(setting, None, environ[name].strip(), "invalid")
        elif given:
            entries[name] = Entry(setting, value, settings._variables[name], files.get(name, "env"))
        elif setting.default is not None:
            entries[name] = Entry(setting, value, setting.default, "default")
        else:
            entries[name] = Entry(setting, None, None, "unset")
    set_names = [name for name, e in entries.items() if e.source not in ("invalid", "default", "unset")]
    return ConfigReport(settings, entries, tuple(problems), tuple(warnings(environ, set_names, entries)))


def _value(settings: Settings, variable: str) -> tuple[Any, bool]:
    """The value of ``variable`` in ``settings`` and whether it was set (a field the model was given)."""
    if variable in _FIELD_OF:
        name = _FIELD_OF[variable]
        return getattr(settings, name), name in settings.model_fields_set
    m = _SERVICE_VARIABLE.match(variable)
    assert m is not None, variable  # every variable of the table is a field or a service's
    service, kind = m.group(1).lower(), m.group(2).lower()
    given = settings.services.get(service)
    return getattr(settings.service(service), kind), given is not None and kind in given.model_fields_set
