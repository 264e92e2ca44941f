"""The store's outbox on SQLite and PostgreSQL: every write is an outbox-machine transition, conditional on the row."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pytest_mock import MockerFixture

from agent.scheduler import FakeClock, InvalidSchedule, ScheduleStore
from agent.scheduler.enums import AlertStatus
from agent.scheduler.machines import outbox

LEASE = timedelta(minutes=2)
A = AlertStatus


@pytest.fixture
def outbox_store(any_url: str, clock: FakeClock) -> Iterator[ScheduleStore]:
    s = ScheduleStore(any_url, clock=clock)
    yield s
    s.close()


def test_an_alert_goes_pending_sending_sent_and_a_settled_alert_is_not_settled_again(
    outbox_store: ScheduleStore, clock: FakeClock, mocker: MockerFixture
) -> None:
    store = outbox_store
    fired = mocker.spy(outbox, "fire_outbox")
    mocker.patch("agent.scheduler.store.outbox.fire_outbox", fired)
    queued = store.add_alert("note", "hello")
    assert queued.status is A.PENDING

    [claimed] = store.claim_alerts(now=clock.now(), lease=LEASE)
    assert (claimed.id, claimed.status, claimed.attempts) == (queued.id, A.SENDING, 1)
    assert store.mark_alerts([queued.id], A.SENT) == 1
    [sent] = store.alerts()
    assert (sent.status, sent.delivered_at, sent.attempts) == (A.SENT, clock.now(), 1)
    assert isinstance(sent.status, AlertStatus)

    # Sent is final: settling it again changes nothing, whatever status is asked for.
    assert store.mark_alerts([queued.id], "pending", error="late") == 0
    assert store.alerts() == [sent]
    assert [c.args[1] for c in fired.call_args_list] == ["claim", "deliver", "fail"]


def test_a_claim_is_exclusive_until_its_lease_runs_out(outbox_store: ScheduleStore, clock: FakeClock) -> None:
    store = outbox_store
    alert = store.add_alert("note", "hello")
    assert [a.id for a in store.claim_alerts(now=clock.now(), lease=LEASE)] == [alert.id]
    # Another dispatcher, before the lease ran out: nothing to take.
    assert store.claim_alerts(now=clock.now() + LEASE, lease=LEASE) == []
    # After it, the vanished dispatcher's claim is taken over, and counted as another attempt.
    later = clock.advance(LEASE + timedelta(seconds=1))
    [again] = store.claim_alerts(now=later, lease=LEASE)
    assert (again.status, again.attempts) == (A.SENDING, 2)
    assert store.mark_alerts([alert.id], A.PENDING, error="ConnectError: down") == 1
    [back] = store.alerts(status=A.PENDING)
    assert (back.attempts, back.last_error) == (2, "ConnectError: down")


def test_undeliverable_alerts_wait_for_a_dispatcher_with_a_notifier(
    outbox_store: ScheduleStore, clock: FakeClock
) -> None:
    store = outbox_store
    alert = store.add_alert("note", "hello")
    store.claim_alerts(now=clock.now(), lease=LEASE, include_undeliverable=False)
    assert store.mark_alerts([alert.id], "undeliverable", error="no notifier") == 1
    assert [a.status for a in store.alerts()] == [A.UNDELIVERABLE]
    assert store.claim_alerts(now=clock.now(), lease=LEASE, include_undeliverable=False) == []
    [claimed] = store.claim_alerts(now=clock.now(), lease=LEASE, include_undeliverable=True)
    assert (claimed.status, claimed.attempts, claimed.last_error) == (A.SENDING, 2, "no notifier")


def test_a_bad_status_names_the_field_and_changes_nothing(outbox_store: ScheduleStore, clock: FakeClock) -> None:
    store = outbox_store
    alert = store.add_alert("note", "hello")
    store.claim_alerts(now=clock.now(), lease=LEASE)
    before = store.alerts()
    for bad in ("sending", "delivered"):
        with pytest.raises(InvalidSchedule) as err:
            store.mark_alerts([alert.id], bad)
        assert err.value.field == "status" and "sent, pending, undeliverable" in err.value.allowed
    with pytest.raises(InvalidSchedule, match="invalid status='lost': one of pending, sending, sent, undeliverable"):
        store.alerts(status="lost")
    assert store.alerts() == before


def test_two_dispatchers_claiming_at_once_never_take_the_same_alert(
    any_url: str, outbox_store: ScheduleStore, clock: FakeClock
) -> None:
    ids = {outbox_store.add_alert("note", f"alert {i}").id for i in range(20)}
    other = ScheduleStore(any_url, clock=clock)
    try:
        start = threading.Barrier(2)
        taken: dict[str, list[str]] = {}

        def claim(name: str, store: ScheduleStore) -> None:
            start.wait()
            taken[name] = [a.id for a in store.claim_alerts(now=clock.now(), lease=LEASE)]

        threads = [threading.Thread(target=claim, args=(n, s)) for n, s in (("a", outbox_store), ("b", other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    assert set(taken["a"]).isdisjoint(taken["b"])
    assert set(taken["a"]) | set(taken["b"]) == ids
    assert {(a.status, a.attempts) for a in outbox_store.alerts()} == {(A.SENDING, 1)}
