"""The generic HTTP task and the health check against a real HTTP server on 127.0.0.1 (stdlib, in a thread)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import jobs
from agent.scheduler import RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.adapters.legacy_cron import migrate, to_definition
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.errors import TaskNotConfigured
from agent.scheduler.tasks import RunContext, TaskRegistry
from cron_definitions import CRON_JOBS
from jobs.health import HEALTH_STATE, HealthCheck
from jobs.http import ServiceHTTPError, ServiceTimeout, ServiceUnreachable, call_service
from tests.conftest import T0, run_async
from tests.integration.test_schedule_legacy_migration import SERVICE_VARIABLES, SettlingClock

KEY = "test-key-123"
#: The longest a test waits on the server thread; the timeout test's handler is released at teardown.
SERVER_WAIT_SECONDS = 10.0


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeService:
    """What the local server answers, per path, and what it saw."""

    seen: list[Seen] = field(default_factory=list)
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    base_url: str = ""


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeService]:
    state = FakeService()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            route = self.path.split("?")[0]
            if route == "/slow":
                state.release.wait(SERVER_WAIT_SECONDS)
            status, payload = state.answers.get(route, (404, {"error": "no such route"}))
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("ACTP_MPLITE_URL", state.base_url)
    monkeypatch.setenv("ACTP_MPLITE_KEY", KEY)
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()
    thread.join(SERVER_WAIT_SECONDS)


def context(params: dict[str, Any], *, name: str = "mplite_queue_poll") -> RunContext:
    schedule = ScheduleDefinition(name=name, trigger_type="interval", expression="10s", target="jobs.call_service")
    return RunContext(
        run_id="run_abc",
        schedule=schedule,
        intended_run_at=T0,
        attempt=2,
        params=params,
        checkpoint=None,
        idempotency_key=f"{schedule.id}:2027-03-13T12:00:00.000000Z",
    )


def call(path: str, method: str = "GET", **extra: Any) -> dict[str, Any]:
    return {"service": "mplite", "method": method, "path": path, **extra}


@run_async
async def test_success_sends_the_bearer_key_to_the_path_and_reports_the_answer(service: FakeService) -> None:
    service.answers["/api/queue/next"] = (200, {"item": {"id": "q_1", "platform": "tiktok"}})
    ctx = context(call("/api/queue/next", query={"worker": "w1"}))
    outcome = await call_service(ctx)
    assert outcome == 'mplite GET /api/queue/next: HTTP 200: {"item":{"id":"q_1","platform":"tiktok"}}'
    [seen] = service.seen
    assert (seen.method, seen.path) == ("GET", "/api/queue/next?worker=w1")
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.headers["Idempotency-Key"] == ctx.idempotency_key
    assert (seen.headers["X-ACTP-Schedule"], seen.headers["X-ACTP-Attempt"]) == ("mplite_queue_poll", "2")


@run_async
async def test_post_with_a_json_body_and_a_base_url_with_a_trailing_slash(
    service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTP_MPLITE_URL", service.base_url + "/")
    service.answers["/api/cron/sync"] = (204, b"")
    outcome = await call_service(context(call("/api/cron/sync", "POST", json={"full": True})))
    assert outcome == "mplite POST /api/cron/sync: HTTP 204: (empty)"
    [seen] = service.seen
    assert (seen.method, seen.path, json.loads(seen.body)) == ("POST", "/api/cron/sync", {"full": True})


@run_async
async def test_a_5xx_raises_so_the_run_fails(service: FakeService) -> None:
    service.answers["/api/queue/next"] = (503, {"error": "cold start"})
    with pytest.raises(ServiceHTTPError) as caught:
        await call_service(context(call("/api/queue/next")))
    assert caught.value.status == 503
    assert str(caught.value) == (
        'mplite GET /api/queue/next: HTTP 503 Service Unavailable (server error at the service): {"error":"cold start"}'
    )


@run_async
async def test_a_4xx_raises_with_a_message_saying_what_to_check(service: FakeService) -> None:
    with pytest.raises(ServiceHTTPError, match=r"HTTP 404 Not Found \(client error: check the path and the params\)"):
        await call_service(context(call("/api/nowhere")))
    service.answers["/api/queue/next"] = (401, {"error": "bad key"})
    with pytest.raises(ServiceHTTPError, match=r"HTTP 401 Unauthorized \(client error: check ACTP_MPLITE_KEY\)"):
        await call_service(context(call("/api/queue/next")))
    assert KEY not in str(service.seen[-1].path)


@run_async
async def test_a_slow_service_times_out(service: FakeService) -> None:
    # A ReadTimeout, not an answer: the call gave up at its timeout, long before the server would answer.
    with pytest.raises(ServiceTimeout, match=r"mplite GET /slow: no answer within 0.2 s \(ReadTimeout\)"):
        await call_service(context(call("/slow", timeout_seconds=0.2)))
    assert [s.path for s in service.seen] == ["/slow"]


@run_async
async def test_an_unreachable_service_raises(service: FakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTP_MPLITE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ServiceUnreachable, match="cannot reach ACTP_MPLITE_URL"):
        await call_service(context(call("/api/queue/next")))


@run_async
async def test_not_configured_names_the_missing_variable(service: FakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTP_MPLITE_KEY")
    with pytest.raises(TaskNotConfigured) as caught:
        await call_service(context(call("/api/queue/next")))
    assert caught.value.missing == "ACTP_MPLITE_KEY"
    service.answers["/api/health"] = (200, {"ok": True})
    assert (await call_service(context(call("/api/health", auth=False)))).endswith('HTTP 200: {"ok":true}')
    assert "Authorization" not in service.seen[-1].headers
    monkeypatch.delenv("ACTP_MPLITE_URL")
    with pytest.raises(
        TaskNotConfigured, match=r"^not configured: set ACTP_MPLITE_URL \(base URL of the mplite service\)$"
    ):
        await call_service(context(call("/api/queue/next")))
    assert len(service.seen) == 1


@run_async
async def test_through_the_engine_a_5xx_poll_is_retried_by_policy_then_dead_lettered(
    service: FakeService, tmp_path: Path
) -> None:
    """The migrated mplite poller (1 retry after 5 s) against a failing, then recovering, service."""
    clock = SettlingClock(T0)
    store = ScheduleStore(tmp_path / "http.db", clock=clock)
    tasks = TaskRegistry()
    jobs.register(tasks, store, worker_id="http-test")
    poller = next(e for e in CRON_JOBS if e.name == "mplite_queue_poll")
    genlite = next(e for e in CRON_JOBS if e.name == "genlite_jobs_poll")
    store.add_many([to_definition(poller, timezone="UTC"), to_definition(genlite, timezone="UTC")])
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="http-test")
    service.answers["/api/queue/next"] = (502, {"error": "bad gateway"})
    await engine.start()
    await engine.run_until(T0 + timedelta(seconds=10))  # first poll fails
    await engine.wait_idle()
    store.disable("mplite_queue_poll", reason="only the first occurrence matters here")
    await engine.run_until(T0 + timedelta(seconds=20))  # its retry fails too: retries exhausted
    await engine.wait_idle()
    [run] = store.runs(schedule="mplite_queue_poll")
    assert (run.status, run.attempt, run.error_type) == (RunStatus.DEAD_LETTERED, 2, "ServiceHTTPError")
    assert run.error is not None and "HTTP 502 Bad Gateway" in run.error
    assert [s.path for s in service.seen] == ["/api/queue/next", "/api/queue/next"]
    [letter] = store.dead_letters()
    assert letter.run_id == run.run_id
    # The genlite poller has no URL configured: its polls are skipped, naming the variable.
    skipped = store.runs(schedule="genlite_jobs_poll")
    assert {r.status for r in skipped} == {RunStatus.SKIPPED}
    assert {r.reason for r in skipped} == {"not configured: set ACTP_GENLITE_URL (base URL of the genlite service)"}
    # Recovered: the next polls succeed with the service's answer as their outcome.
    service.answers["/api/queue/next"] = (200, {"item": None})
    store.enable("mplite_queue_poll")
    await engine.run_until(clock.now() + timedelta(seconds=30))
    await engine.wait_idle()
    ok = store.runs(schedule="mplite_queue_poll", status=RunStatus.SUCCEEDED)
    assert len(ok) == 3 and {r.outcome for r in ok} == {'mplite GET /api/queue/next: HTTP 200: {"item":null}'}
    await engine.stop()
    store.close()


@run_async
async def test_the_health_check_alerts_when_a_service_goes_down_and_when_it_comes_back(
    service: FakeService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clock = SettlingClock(T0)
    store = ScheduleStore(tmp_path / "health.db", clock=clock)
    migrate(store, CRON_JOBS, timezone="UTC")
    schedule = store.get("service_health_check")
    check = HealthCheck(store)

    def ctx() -> RunContext:
        return RunContext(
            run_id="r",
            schedule=schedule,
            intended_run_at=T0,
            attempt=1,
            params=dict(schedule.params),
            checkpoint=None,
            idempotency_key="k",
        )

    monkeypatch.delenv("ACTP_MPLITE_URL")
    with pytest.raises(TaskNotConfigured, match="ACTP_MPLITE_URL, ACTP_GENLITE_URL"):
        await check.service_health_check(ctx())
    monkeypatch.setenv("ACTP_MPLITE_URL", service.base_url)
    monkeypatch.setenv("ACTP_GENLITE_URL", service.base_url + "/genlite")
    monkeypatch.setenv("ACTP_GENLITE_HEALTH_PATH", "/healthz")
    service.answers["/api/health"] = (200, {"status": "ok"})
    service.answers["/genlite/healthz"] = (503, {"status": "degraded"})
    assert await check.service_health_check(ctx()) == (
        "1 of 2 configured service(s) up; down: genlite (genlite GET /healthz: HTTP 503 Service Unavailable "
        '(server error at the service): {"status":"degraded"}); 1 change(s) alerted'
    )
    assert {s.path for s in service.seen} == {"/api/health", "/genlite/healthz"}
    probed = {s.path: s.headers for s in service.seen}  # the probes run concurrently: in either order
    assert probed["/api/health"]["Authorization"] == f"Bearer {KEY}"
    assert "Authorization" not in probed["/genlite/healthz"]  # no ACTP_GENLITE_KEY: probed without one
    clock.advance(300)
    assert (await check.service_health_check(ctx())).startswith("1 of 2 configured service(s) up; down: genlite")
    clock.advance(300)
    service.answers["/genlite/healthz"] = (200, {"status": "ok"})
    assert await check.service_health_check(ctx()) == "2 of 2 configured service(s) up; 1 change(s) alerted"
    alerts = store.alerts()
    assert [(a.kind, a.payload["service"], a.payload["up"]) for a in alerts] == [
        ("service_health", "genlite", False),
        ("service_health", "genlite", True),
    ]
    assert alerts[0].text.startswith("Service genlite is DOWN: ") and alerts[1].text.startswith(
        "Service genlite is back up"
    )
    assert store.get_state(HEALTH_STATE) == {"mplite": "up", "genlite": "up"}
    store.close()
