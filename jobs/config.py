"""Reading the jobs' settings from the environment: a missing value takes its default, a bad one names itself."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class ConfigError(ValueError):
    """An environment variable is set to a value the job cannot use; fix the variable named in the message."""

    def __init__(self, variable: str, value: str, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"{variable}={value!r} is not usable: {allowed}")


def environment(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``environ``, or the process environment read now (so a changed variable counts from the next run)."""
    return os.environ if environ is None else environ


def text(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value without surrounding blanks, or None when unset or empty."""
    value = environment(environ).get(name, "").strip()
    return value or None


def path(name: str, default: str, environ: Mapping[str, str] | None = None) -> Path:
    """A directory or file path (``~`` expanded), ``default`` when unset."""
    return Path(text(name, environ) or default).expanduser()


def number(name: str, default: float, *, minimum: float, environ: Mapping[str, str] | None = None) -> float:
    """A number >= ``minimum``, ``default`` when unset; anything else raises ConfigError."""
    raw = text(name, environ)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, raw, f"a number, {minimum:g} or more") from None
    if not value >= minimum:
        raise ConfigError(name, raw, f"a number, {minimum:g} or more")
    return value


def whole(name: str, default: int, *, minimum: int, environ: Mapping[str, str] | None = None) -> int:
    """A whole number >= ``minimum``, ``default`` when unset; anything else raises ConfigError."""
    raw = text(name, environ)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, raw, f"a whole number, {minimum} or more") from None
    if value < minimum:
        raise ConfigError(name, raw, f"a whole number, {minimum} or more")
    return value
