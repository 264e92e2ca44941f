"""Decision: what a guard says, and why; the reason ends up on the run's row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """A guard's verdict: ``allowed`` and the ``reason`` recorded with it."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed
