"""The outbox machine: every allowed and forbidden transition, the claim guards, effects, stale writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.scheduler import InvalidSchedule
from agent.scheduler.enums import AlertStatus
from agent.scheduler.errors import GuardRejected, InvalidTransition, StaleState
from agent.scheduler.machines.binding import Transition
from agent.scheduler.machines.outbox import (
    OUTBOX_MACHINE,
    OUTBOX_STATES,
    alert_status,
    fire_outbox,
    settle_trigger,
)
from agent.scheduler.policies.outbox import claim_expires_before, claimable_statuses, may_reclaim, may_resend
from agent.scheduler.records import Alert

NOW = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)
A = AlertStatus

#: The contract, written out by hand: (status, trigger) -> status after, when the guards allow.
OUTBOX_EDGES = {
    (A.PENDING, "claim"): A.SENDING,
    (A.UNDELIVERABLE, "claim"): A.SENDING,
    (A.SENDING, "claim"): A.SENDING,
    (A.SENDING, "deliver"): A.SENT,
    (A.SENDING, "fail"): A.PENDING,
    (A.SENDING, "shelve"): A.UNDELIVERABLE,
}
OUTBOX_TRIGGERS = sorted({t for _, t in OUTBOX_EDGES})


def alert(status: AlertStatus, **kw: Any) -> Alert:
    fields: dict[str, Any] = {"id": "al_1", "kind": "note", "text": "hello", "status": status, "attempts": 2}
    fields.update(kw)
    return Alert(**fields)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []

    def __call__(self, a: Alert, t: Transition, fields: dict[str, Any]) -> None:
        self.calls.append((t.trigger, t.source, t.dest, fields))


def test_the_states_are_the_stored_lower_case_values() -> None:
    assert OUTBOX_STATES == ["pending", "sending", "sent", "undeliverable"]
    assert OUTBOX_MACHINE.initial == "pending"
    assert Alert(id="x", kind="k", text="t").status is AlertStatus.PENDING


@pytest.mark.parametrize("status", list(AlertStatus))
@pytest.mark.parametrize("trigger", OUTBOX_TRIGGERS)
def test_outbox_transition_allowed_exactly_as_the_table_says(status: AlertStatus, trigger: str) -> None:
    before = alert(status)
    persist = Recorder()
    # A claim old enough to be taken over, and a dispatcher with a notifier: every guard passes.
    kwargs: dict[str, Any] = {"lease": LEASE, "claimed_at": NOW - 2 * LEASE, "notifier_configured": True}
    expected = OUTBOX_EDGES.get((status, trigger))
    if expected is None:
        with pytest.raises(InvalidTransition) as err:
            fire_outbox(before, trigger, now=NOW, persist=persist, **kwargs)
        assert (err.value.state, err.value.trigger) == (status.value, trigger)
        assert persist.calls == []
        return
    after = fire_outbox(before, trigger, now=NOW, persist=persist, **kwargs)
    assert after.status is expected
    assert before.status is status
    assert [(t, s, d) for t, s, d, _ in persist.calls] == [(trigger, status.value, expected.value)]


def test_sent_is_final() -> None:
    for trigger in OUTBOX_TRIGGERS:
        with pytest.raises(InvalidTransition):
            fire_outbox(alert(A.SENT), trigger, now=NOW, persist=Recorder())


def test_unknown_trigger_is_an_invalid_transition_naming_the_known_ones() -> None:
    with pytest.raises(InvalidTransition, match="known: claim, deliver, fail, shelve"):
        fire_outbox(alert(A.PENDING), "send", now=NOW, persist=Recorder())


def test_a_claim_is_taken_over_only_after_its_lease() -> None:
    fresh = NOW - LEASE + timedelta(seconds=1)
    persist = Recorder()
    with pytest.raises(GuardRejected, match="has not run out") as err:
        fire_outbox(alert(A.SENDING), "claim", now=NOW, persist=persist, lease=LEASE, claimed_at=fresh)
    assert err.value.reason.startswith("claimed at 2027-03-13T11:58:01")
    assert persist.calls == []
    # Exactly at the lease it is still held; one instant later it is free.
    at_lease = NOW - LEASE
    with pytest.raises(GuardRejected):
        fire_outbox(alert(A.SENDING), "claim", now=NOW, persist=persist, lease=LEASE, claimed_at=at_lease)
    taken = fire_outbox(
        alert(A.SENDING),
        "claim",
        now=NOW,
        persist=persist,
        lease=LEASE,
        claimed_at=at_lease - timedelta(microseconds=1),
    )
    assert taken.status is A.SENDING and taken.attempts == 3
    with pytest.raises(GuardRejected, match="unknown"):
        fire_outbox(alert(A.SENDING), "claim", now=NOW, persist=persist, lease=LEASE, claimed_at=None)


def test_an_undeliverable_alert_is_claimed_only_by_a_dispatcher_with_a_notifier() -> None:
    persist = Recorder()
    with pytest.raises(GuardRejected, match="no notifier configured"):
        fire_outbox(alert(A.UNDELIVERABLE), "claim", now=NOW, persist=persist, notifier_configured=False)
    assert persist.calls == []
    assert fire_outbox(alert(A.UNDELIVERABLE), "claim", now=NOW, persist=persist).status is A.SENDING
    # A pending alert needs no notifier to be claimed: without one it is logged and shelved.
    assert fire_outbox(alert(A.PENDING), "claim", now=NOW, persist=persist, notifier_configured=False).status is (
        A.SENDING
    )


def test_each_edge_sets_its_fields() -> None:
    persist = Recorder()
    claimed = fire_outbox(alert(A.PENDING, attempts=2), "claim", now=NOW, persist=persist)
    sent = fire_outbox(claimed, "deliver", now=NOW, persist=persist)
    failed = fire_outbox(claimed, "fail", now=NOW, persist=persist, error="ConnectError: down")
    shelved = fire_outbox(claimed, "shelve", now=NOW, persist=persist, error="no notifier")
    assert [f for *_, f in persist.calls] == [
        {"attempts": 3},
        {"delivered_at": NOW, "last_error": None},
        {"last_error": "ConnectError: down"},
        {"last_error": "no notifier"},
    ]
    assert (claimed.attempts, sent.delivered_at, sent.last_error) == (3, NOW, None)
    assert (failed.status, failed.last_error, failed.attempts) == (A.PENDING, "ConnectError: down", 3)
    assert (shelved.status, shelved.last_error) == (A.UNDELIVERABLE, "no notifier")


def test_a_lost_race_leaves_the_alert_unchanged() -> None:
    before = alert(A.SENDING)

    def lose(a: Alert, t: Transition, fields: dict[str, Any]) -> None:
        raise StaleState(a.id, t.source, "sent", t.trigger)

    with pytest.raises(StaleState, match="expected state 'sending', but it is now 'sent'"):
        fire_outbox(before, "deliver", now=NOW, persist=lose)
    assert before.status is A.SENDING and before.delivered_at is None


@pytest.mark.parametrize(
    ("status", "trigger"),
    [("sent", "deliver"), (A.PENDING, "fail"), ("undeliverable", "shelve")],
)
def test_settling_maps_the_wanted_status_to_its_trigger(status: str, trigger: str) -> None:
    assert settle_trigger(status) == trigger


@pytest.mark.parametrize("bad", ["sending", "Sent", "", None, 3])
def test_a_bad_settle_status_names_the_field_and_the_allowed_values(bad: object) -> None:
    with pytest.raises(InvalidSchedule) as err:
        settle_trigger(bad)
    assert err.value.field == "status"
    assert "sent" in err.value.allowed and "undeliverable" in err.value.allowed


def test_an_unknown_alert_status_names_the_field() -> None:
    assert alert_status("sending") is A.SENDING
    with pytest.raises(InvalidSchedule, match="invalid status='lost': one of pending, sending, sent, undeliverable"):
        alert_status("lost")


def test_the_claim_policy_is_pure_arithmetic() -> None:
    assert claimable_statuses(True) == (A.PENDING, A.UNDELIVERABLE)
    assert claimable_statuses(False) == (A.PENDING,)
    assert claim_expires_before(NOW, LEASE) == NOW - LEASE
    assert may_resend(True).allowed and not may_resend(False).allowed
    assert may_reclaim(NOW - LEASE - timedelta(seconds=1), NOW, LEASE).allowed
    assert not may_reclaim(NOW, NOW, LEASE).allowed
