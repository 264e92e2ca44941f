"""Pure guard logic: each policy is a function of (run, schedule, now) returning a Decision."""

from .decision import Decision

__all__ = ["Decision"]
