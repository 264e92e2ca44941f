"""The service health check: probe each configured service's health URL; alert when one goes down or comes back.

The services come from the schedule's ``params.services``; a service is probed when its
``ACTP_<SERVICE>_URL`` is set, at ``ACTP_<SERVICE>_HEALTH_PATH`` (default ``/api/health``), with its
bearer key when one is set. Up or down is remembered in engine_state, so an alert goes out on a
change, not at every probe.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from agent.scheduler.errors import TaskNotConfigured
from agent.scheduler.settings import Settings
from agent.scheduler.store import ScheduleStore
from agent.scheduler.tasks import RunContext

from . import config
from .http import ServiceCall, ServiceCallError, send, url_variable

#: A probe taking longer than this counts as down.
HEALTH_TIMEOUT_SECONDS = 10.0
#: engine_state key holding each service's last known state.
HEALTH_STATE = "jobs.service_health"


@dataclass(frozen=True, slots=True)
class Probe:
    """One service's health, as just measured."""

    service: str
    up: bool
    detail: str


@dataclass
class HealthCheck:
    """The health check of one worker, bound to its store (for state and alerts)."""

    store: ScheduleStore
    settings: Settings | None = None
    """The worker's settings; None: the services' variables, read at each run."""

    async def service_health_check(self, ctx: RunContext) -> str:
        """Task ``jobs.service_health_check``: probe every configured service; skipped when none is configured."""
        services = ctx.params.get("services")
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services) or not services:
            raise ValueError(f"params.services={services!r}: a non-empty list of service names such as ['mplite']")
        variables = [f"ACTP_{s.upper()}_{kind}" for s in services for kind in ("URL", "KEY", "HEALTH_PATH")]
        settings = config.current(self.settings, *variables)
        configured = [s for s in services if settings.service(s).url]
        if not configured:
            names = ", ".join(url_variable(s) for s in services)
            raise TaskNotConfigured(names, "set the URL of at least one service to probe")
        probes = await asyncio.gather(*(self._probe(s, settings) for s in configured))
        changes = await asyncio.to_thread(self._record, probes)
        down = [p for p in probes if not p.up]
        text = f"{len(probes) - len(down)} of {len(probes)} configured service(s) up"
        if down:
            text += "; down: " + "; ".join(f"{p.service} ({p.detail})" for p in down)
        if changes:
            text += f"; {len(changes)} change(s) alerted"
        return text

    async def _probe(self, service: str, settings: Settings) -> Probe:
        path = settings.service(service).health_path
        call = ServiceCall(
            service=service,
            method="GET",
            path=path,
            timeout_seconds=HEALTH_TIMEOUT_SECONDS,
            auth=settings.service(service).key is not None,
        )
        try:
            response = await send(call, settings=settings)
        except ServiceCallError as exc:
            return Probe(service, False, str(exc))
        return Probe(service, True, f"HTTP {response.status_code}")

    def _record(self, probes: list[Probe]) -> list[Probe]:
        """Store the new states; queue one alert per service whose state changed. Returns the changed ones."""
        previous: dict[str, Any] = self.store.get_state(HEALTH_STATE) or {}
        current = dict(previous)
        changed = []
        for probe in probes:
            state = "up" if probe.up else "down"
            before = previous.get(probe.service)
            current[probe.service] = state
            # A service first seen up is not news; first seen down, or any flip, is.
            if before != state and (before is not None or not probe.up):
                changed.append(probe)
        self.store.put_state(HEALTH_STATE, current)
        for probe in changed:
            state = "back up" if probe.up else "DOWN"
            self.store.add_alert(
                "service_health",
                f"Service {probe.service} is {state}: {probe.detail}",
                {"service": probe.service, "up": probe.up, "detail": probe.detail},
            )
        return changed
