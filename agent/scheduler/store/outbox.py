"""The alert outbox: alerts queued in the transaction that caused them, claimed and marked by the dispatcher."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, DateTime, and_, bindparam, or_, select, update

from .. import schema
from ..enums import AlertStatus
from ..errors import GuardRejected, InvalidTransition, StaleState
from ..machines.binding import Transition
from ..machines.outbox import alert_status, fire_outbox, settle_trigger
from ..policies.outbox import claim_expires_before, claimable_statuses
from ..records import Alert
from .connection import StoreCore
from .rows import alert_from, from_db, new_id, to_db

log = logging.getLogger(__name__)


class OutboxRows(StoreCore):
    """The alert outbox: alerts queued in the transaction that caused them, claimed and marked by the
    dispatcher.
    """

    def add_alert(self, kind: str, text: str, payload: dict[str, Any] | None = None) -> Alert:
        """Queue an alert in the outbox, in the outbox machine's first state (pending)."""
        now = self.clock.now()
        alert = Alert(id=new_id("al"), kind=kind, text=text, payload=dict(payload or {}), created_at=now)
        row = {
            "id": alert.id,
            "kind": kind,
            "text": text,
            "payload": alert.payload,
            "status": alert.status.value,
            "attempts": alert.attempts,
            "created_at": to_db(now),
            "updated_at": to_db(now),
        }
        self._tx(lambda c: c.execute(schema.alerts_outbox.insert().values(**row)))
        for listener in list(self._alert_listeners):
            listener()
        return alert

    def alerts(self, status: AlertStatus | str | None = None) -> builtins.list[Alert]:
        """Alerts in the outbox, oldest first; ``status`` one of pending, sending, sent, undeliverable."""
        a = schema.alerts_outbox
        stmt = select(a).order_by(a.c.created_at, a.c.id)
        if status is not None:
            stmt = stmt.where(a.c.status == alert_status(status).value)
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [alert_from(r) for r in rows]

    def claim_alerts(
        self, *, now: datetime, lease: timedelta, limit: int = 50, include_undeliverable: bool = True
    ) -> builtins.list[Alert]:
        """Take up to ``limit`` deliverable alerts (pending, undeliverable, or a claim older than ``lease``).

        Each claim fires the outbox machine's ``claim``, written conditionally on the status, the
        claim time and the attempts seen, so two dispatchers never send the same alert at once.
        ``include_undeliverable`` says whether this dispatcher has a notifier to send them with.
        """
        a = schema.alerts_outbox

        def build() -> Any:
            free = claimable_statuses(include_undeliverable)
            stale = and_(a.c.status == AlertStatus.SENDING.value, a.c.updated_at < bindparam("cutoff", type_=DateTime))
            return (
                select(a)
                .where(or_(*(a.c.status == s.value for s in free), stale))
                .order_by(a.c.created_at, a.c.id)
                .limit(bindparam("limit"))
            )

        find = self._prepared(("open_alerts", include_undeliverable), build)
        take = self._prepared(
            "claim_alert",
            lambda: (
                update(a)
                .where(
                    and_(
                        a.c.id == bindparam("w_id"),
                        a.c.status == bindparam("w_status"),
                        a.c.updated_at == bindparam("w_at", type_=DateTime),
                        a.c.attempts == bindparam("w_attempts"),
                    )
                )
                .values(
                    status=bindparam("v_status"),
                    attempts=bindparam("v_attempts"),
                    updated_at=bindparam("v_at", type_=DateTime),
                )
            ),
        )

        def work(conn: Connection) -> builtins.list[Alert]:
            cutoff = claim_expires_before(now, lease)
            rows = conn.execute(find, {"cutoff": to_db(cutoff), "limit": limit}).mappings().all()
            claimed = []
            for r in rows:

                def persist(current: Alert, transition: Transition, fields: dict[str, Any], r: Any = r) -> None:
                    params = {
                        "w_id": current.id,
                        "w_status": transition.source,
                        "w_at": r["updated_at"],
                        "w_attempts": current.attempts,
                        "v_status": transition.dest,
                        "v_attempts": fields["attempts"],
                        "v_at": to_db(now),
                    }
                    if conn.execute(take, params).rowcount != 1:
                        self._stale_alert(conn, current, transition)

                try:
                    claimed.append(
                        fire_outbox(
                            alert_from(r),
                            "claim",
                            now=now,
                            persist=persist,
                            lease=lease,
                            claimed_at=from_db(r["updated_at"]),
                            notifier_configured=include_undeliverable,
                        )
                    )
                except (StaleState, GuardRejected) as exc:
                    log.debug("alert %s not claimed: %s", r["id"], exc)
            return claimed

        return self._tx(work)

    def mark_alerts(
        self, ids: Iterable[str], status: AlertStatus | str, *, error: str | None = None, now: datetime | None = None
    ) -> int:
        """Settle claimed alerts: ``sent`` (with the delivery time) or back to ``pending``/``undeliverable``.

        Each alert fires the outbox machine's trigger for ``status`` from ``sending``, written
        conditionally on that status; one no longer ``sending`` (settled by a dispatcher that took
        over its expired claim) is left as it is. Returns how many were settled.
        """
        trigger = settle_trigger(status)
        at = now or self.clock.now()
        wanted = list(ids)
        if not wanted:
            return 0
        a = schema.alerts_outbox

        def work(conn: Connection) -> int:
            settled = 0
            for r in conn.execute(select(a).where(a.c.id.in_(wanted))).mappings().all():

                def persist(current: Alert, transition: Transition, fields: dict[str, Any]) -> None:
                    values = {"status": transition.dest, "updated_at": to_db(at)}
                    values.update({k: to_db(v) if isinstance(v, datetime) else v for k, v in fields.items()})
                    cond = and_(a.c.id == current.id, a.c.status == transition.source)
                    if conn.execute(update(a).where(cond).values(**values)).rowcount != 1:
                        self._stale_alert(conn, current, transition)

                try:
                    fire_outbox(alert_from(r), trigger, now=at, persist=persist, error=error)
                except (StaleState, InvalidTransition) as exc:
                    log.info("alert %s left as it is: %s", r["id"], exc)
                    continue
                settled += 1
            return settled

        return self._tx(work)

    @staticmethod
    def _stale_alert(conn: Connection, alert: Alert, transition: Transition) -> None:
        a = schema.alerts_outbox
        actual = conn.execute(select(a.c.status).where(a.c.id == alert.id)).scalar()
        raise StaleState(alert.id, transition.source, actual, transition.trigger)
