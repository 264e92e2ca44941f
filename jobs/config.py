"""The jobs' settings: the worker's Settings when it gave them, else the variables read at each run."""

from __future__ import annotations

from agent.scheduler.config import ConfigError, Problem
from agent.scheduler.settings import Settings, load_settings

__all__ = ["ConfigError", "current", "refused"]


def current(settings: Settings | None, *variables: str) -> Settings:
    """``settings``, or ``variables`` read now and checked (so a changed variable counts from the next run).

    A bad value raises ConfigError naming the variable and what it allows.
    """
    return settings if settings is not None else load_settings(only=variables)


def refused(variable: str, value: str, allowed: str) -> ConfigError:
    """The error for ``variable`` set to ``value``, which a job cannot use: ``allowed`` says what it can."""
    return ConfigError([Problem(variable, value, allowed)])
