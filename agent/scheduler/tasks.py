"""Tasks: the registry of functions schedules may call, and the RunContext each call receives."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .definition import ScheduleDefinition, check_name
from .enums import RiskTier
from .errors import SchedulerError
from .settings import Settings, load_settings

TaskFunction = Callable[["RunContext"], Any]


class UnknownTask(SchedulerError, LookupError):
    """A schedule names a task that is not registered; register it or fix the schedule's target."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        super().__init__(f"no task named {name!r} is registered; known tasks: {shown or '(none)'}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """A registered task: its function and what it declares about itself."""

    name: str
    fn: TaskFunction
    risk_tier: RiskTier = RiskTier.LOW
    description: str = ""
    requires: tuple[str, ...] = ()
    """Environment variables the task needs; a run without them ends skipped, naming them."""
    side_effects: tuple[str, ...] = ()
    """External effects the task may have (for example "messaging", "network"), read by risk policy."""
    capabilities: tuple[str, ...] = ()
    """Capability scopes a proposal may ask for when it targets this task."""

    is_async: bool = field(init=False, repr=False, compare=False)
    """True for ``async def`` tasks; sync ones run in a thread. Read on every run: computed once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))

    def missing_configuration(self, settings: Settings | Mapping[str, str] | None = None) -> list[str]:
        """The required environment variables that are not set (or blank) in ``settings`` (default: read now)."""
        if not self.requires:  # most tasks: nothing to read, on every run
            return []
        if settings is None:
            settings = load_settings(only=self.requires)
        if isinstance(settings, Settings):
            return [name for name in self.requires if not settings.is_set(name)]
        return [name for name in self.requires if not settings.get(name, "").strip()]


class TaskRegistry:
    """The functions schedules may call, by name. Agents can only name tasks registered here."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}

    def task(
        self,
        name: str | None = None,
        *,
        risk_tier: RiskTier | str = RiskTier.LOW,
        description: str = "",
        requires: tuple[str, ...] | list[str] = (),
        side_effects: tuple[str, ...] | list[str] = (),
        capabilities: tuple[str, ...] | list[str] = (),
    ) -> Callable[[TaskFunction], TaskFunction]:
        """Decorator: register the function under ``name`` (default: the function's name)."""

        def register(fn: TaskFunction) -> TaskFunction:
            self.add(
                name or fn.__name__,
                fn,
                risk_tier=risk_tier,
                description=description or (fn.__doc__ or "").strip(),
                requires=requires,
                side_effects=side_effects,
                capabilities=capabilities,
            )
            return fn

        return register

    def add(
        self,
        name: str,
        fn: TaskFunction,
        *,
        risk_tier: RiskTier | str = RiskTier.LOW,
        description: str = "",
        requires: tuple[str, ...] | list[str] = (),
        side_effects: tuple[str, ...] | list[str] = (),
        capabilities: tuple[str, ...] | list[str] = (),
    ) -> TaskSpec:
        """Register ``fn`` as task ``name``; a name registered twice is an error."""
        check_name("task name", name)
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already registered")
        if not callable(fn):
            raise TypeError(f"task {name!r}: {fn!r} is not callable")
        spec = TaskSpec(
            name=name,
            fn=fn,
            risk_tier=RiskTier(risk_tier),
            description=description,
            requires=tuple(requires),
            side_effects=tuple(side_effects),
            capabilities=tuple(capabilities),
        )
        self._tasks[name] = spec
        return spec

    def get(self, name: str) -> TaskSpec:
        """The task registered as ``name``; UnknownTask when there is none."""
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(name, sorted(self._tasks)) from None

    def names(self) -> list[str]:
        """Every registered task name, sorted."""
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)


@dataclass(eq=False, kw_only=True)
class RunContext:
    """What a task receives: which run this is, its inputs, and the handles it should honour."""

    run_id: str
    schedule: ScheduleDefinition
    intended_run_at: datetime
    attempt: int
    params: dict[str, Any]
    checkpoint: Any
    """The last checkpoint saved by an earlier attempt of this run, or None."""
    idempotency_key: str
    """Schedule id + occurrence: the same for every attempt of this occurrence."""
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the task should stop early (shutdown, replacement); check it between steps."""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("agent.scheduler.task"))
    _save: Callable[[Any], Awaitable[None]] | None = None
    _beat: Callable[[], None] | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def save_checkpoint(self, data: Any) -> None:
        """Persist ``data`` (JSON) as this run's checkpoint; a resumed run receives it back."""
        self.checkpoint = data
        if self._save is not None:
            await self._save(data)

    def save_checkpoint_sync(self, data: Any) -> None:
        """``save_checkpoint`` for sync tasks, which run in a thread."""
        if self._loop is None:
            self.checkpoint = data
            return
        asyncio.run_coroutine_threadsafe(self.save_checkpoint(data), self._loop).result()

    def heartbeat(self) -> None:
        """Tell the scheduler the task is alive (long tasks call it now and then)."""
        if self._beat is not None:
            self._beat()
