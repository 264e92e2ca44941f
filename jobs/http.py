"""The one generic HTTP task: call a cloud service named by the schedule's params, with its bearer key.

A schedule's ``params`` say ``{"service": "mplite", "method": "GET", "path": "/api/queue/next"}``;
the base URL comes from ``ACTP_<SERVICE>_URL`` and the key from ``ACTP_<SERVICE>_KEY``. An unset
URL or key ends the run ``skipped`` naming the variable (TaskNotConfigured). Every other problem
raises, so the run fails and the schedule's retry policy takes over: 5xx, 4xx, timeouts and
network errors each with their own exception type and a message saying what to check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.scheduler.errors import TaskNotConfigured
from agent.scheduler.settings import Settings
from agent.scheduler.tasks import RunContext

from . import config

#: Methods a schedule may use.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Service names: lower-case letters, digits and ``_``; they become ``ACTP_<SERVICE>_URL``.
SERVICE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: How many characters of a response body go into a run's outcome or error.
BODY_PREVIEW_CHARS = 500
USER_AGENT = "actp-worker (agent.scheduler)"


def url_variable(service: str) -> str:
    """``ACTP_<SERVICE>_URL``: the service's base URL."""
    return f"ACTP_{service.upper()}_URL"


def key_variable(service: str) -> str:
    """``ACTP_<SERVICE>_KEY``: the service's bearer key."""
    return f"ACTP_{service.upper()}_KEY"


class ServiceCallError(Exception):
    """A call to a cloud service did not succeed; the run fails and its schedule's retry policy applies."""

    def __init__(self, message: str, *, service: str, method: str, path: str) -> None:
        self.service = service
        self.method = method
        self.path = path
        super().__init__(message)


class ServiceHTTPError(ServiceCallError):
    """The service answered with an HTTP error status (``status``): 5xx is the service's fault, 4xx the call's."""

    def __init__(self, message: str, *, status: int, service: str, method: str, path: str) -> None:
        super().__init__(message, service=service, method=method, path=path)
        self.status = status


class ServiceTimeout(ServiceCallError):
    """The service did not answer within the timeout."""


class ServiceUnreachable(ServiceCallError):
    """The service could not be reached (DNS, refused connection, TLS, broken connection)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceCall:
    """One call, read from a schedule's params; a bad param raises ValueError naming it."""

    service: str
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None
    """Sent as JSON when not None."""
    timeout_seconds: float | None = None
    """None: ACTP_HTTP_TIMEOUT_SECONDS."""
    auth: bool = True
    """Send ``Authorization: Bearer <ACTP_<SERVICE>_KEY>``; the key is then required."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ServiceCall:
        """Read ``service``, ``method``, ``path`` and optionally ``query``, ``json``, ``timeout_seconds``, ``auth``."""
        service = params.get("service")
        if not isinstance(service, str) or not SERVICE_PATTERN.match(service):
            raise ValueError(f"params.service={service!r}: a service name such as 'mplite' ({SERVICE_PATTERN.pattern})")
        method = params.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ValueError(f"params.method={method!r}: one of {', '.join(METHODS)}")
        path = params.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"params.path={path!r}: a path starting with '/', such as '/api/queue/next'")
        query = params.get("query", {})
        if not isinstance(query, dict) or not all(isinstance(k, str) for k in query):
            raise ValueError(f"params.query={query!r}: an object of query parameters")
        timeout = params.get("timeout_seconds")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError(f"params.timeout_seconds={timeout!r}: a number of seconds above 0")
        auth = params.get("auth", True)
        if not isinstance(auth, bool):
            raise ValueError(f"params.auth={auth!r}: true or false")
        return cls(
            service=service,
            method=method.upper(),
            path=path,
            query={k: str(v) for k, v in query.items()},
            body=params.get("json"),
            timeout_seconds=None if timeout is None else float(timeout),
            auth=auth,
        )

    @property
    def label(self) -> str:
        """``mplite GET /api/queue/next``, for messages."""
        return f"{self.service} {self.method} {self.path}"


def base_url(service: str, settings: Settings | None = None) -> str:
    """The service's base URL; TaskNotConfigured naming ``ACTP_<SERVICE>_URL`` when unset."""
    value = config.current(settings, url_variable(service)).service(service).url
    if value is None:
        raise TaskNotConfigured(url_variable(service), f"base URL of the {service} service")
    return value.rstrip("/")


def bearer_key(service: str, settings: Settings | None = None) -> str:
    """The service's key; TaskNotConfigured naming ``ACTP_<SERVICE>_KEY`` when unset."""
    value = config.current(settings, key_variable(service)).service(service).key
    if value is None:
        raise TaskNotConfigured(key_variable(service), f"bearer key of the {service} service")
    return value


def timeout_for(call: ServiceCall, settings: Settings | None = None) -> float:
    """The call's timeout in seconds."""
    if call.timeout_seconds is not None:
        return call.timeout_seconds
    return config.current(settings, "ACTP_HTTP_TIMEOUT_SECONDS").http_timeout_seconds


async def send(
    call: ServiceCall,
    *,
    headers: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> httpx.Response:
    """Make ``call`` and return its 2xx response; anything else raises a ServiceCallError subclass.

    TaskNotConfigured when the service's URL (or, with ``auth``, its key) is not set.
    """
    url = base_url(call.service, settings) + call.path
    sent = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
    if call.auth:
        sent["Authorization"] = f"Bearer {bearer_key(call.service, settings)}"
    timeout = timeout_for(call, settings)
    where = dict(service=call.service, method=call.method, path=call.path)
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            response = await client.request(call.method, url, params=call.query or None, json=call.body, headers=sent)
    except httpx.TimeoutException as exc:
        raise ServiceTimeout(
            f"{call.label}: no answer within {timeout:g} s ({type(exc).__name__}); the service is slow or down",
            **where,
        ) from exc
    except httpx.TransportError as exc:
        raise ServiceUnreachable(
            f"{call.label}: cannot reach {url_variable(call.service)} ({type(exc).__name__}: {exc})", **where
        ) from exc
    status = response.status_code
    if status >= 500:
        raise ServiceHTTPError(
            f"{call.label}: HTTP {status} {response.reason_phrase} (server error at the service): {preview(response)}",
            status=status,
            **where,
        )
    if status >= 400:
        hint = f"check {key_variable(call.service)}" if status in (401, 403) else "check the path and the params"
        raise ServiceHTTPError(
            f"{call.label}: HTTP {status} {response.reason_phrase} (client error: {hint}): {preview(response)}",
            status=status,
            **where,
        )
    if status >= 300:
        raise ServiceHTTPError(
            f"{call.label}: HTTP {status} {response.reason_phrase} with no redirect to follow", status=status, **where
        )
    return response


def preview(response: httpx.Response) -> str:
    """The start of the body, as compact JSON when it is JSON; ``(empty)`` when there is none."""
    raw = response.text
    if not raw.strip():
        return "(empty)"
    try:
        shown = json.dumps(response.json(), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        shown = " ".join(raw.split())
    return shown if len(shown) <= BODY_PREVIEW_CHARS else shown[:BODY_PREVIEW_CHARS] + "..."


async def call_service(ctx: RunContext, *, settings: Settings | None = None) -> str:
    """Task ``jobs.call_service``: the call its schedule's params describe; the outcome is the answer's start."""
    call = ServiceCall.from_params(ctx.params)
    headers = {
        "Idempotency-Key": ctx.idempotency_key,
        "X-ACTP-Schedule": ctx.schedule.name,
        "X-ACTP-Run-Id": ctx.run_id,
        "X-ACTP-Attempt": str(ctx.attempt),
        "X-ACTP-Intended-Run-At": ctx.intended_run_at.isoformat(),
    }
    response = await send(call, headers=headers, settings=settings)
    return f"{call.label}: HTTP {response.status_code}: {preview(response)}"
