"""The claim lead: how long before prepared runs' time their tick begins, with the system clock."""

from __future__ import annotations

from datetime import timedelta

from agent.scheduler.engine.execution import CLAIM_LEAD, CLAIM_SAMPLES, ClaimLead

MS = timedelta(milliseconds=1)


def test_the_lead_is_what_the_slowest_recent_claim_needs_with_a_margin_up_to_the_cap() -> None:
    lead = ClaimLead()
    lead.observe(0.040, 1000)  # 40 us a run
    assert lead.ahead(1000) == timedelta(seconds=(0.001 + 0.040) * 1.25)
    lead.observe(0.020, 1000)  # one quicker claim says little about the next: the slower one counts
    assert lead.ahead(1000) == timedelta(seconds=(0.001 + 0.040) * 1.25)
    for _ in range(CLAIM_SAMPLES - 1):
        lead.observe(0.020, 1000)
    assert lead.ahead(1000) == timedelta(seconds=(0.001 + 0.020) * 1.25)  # the slow one has aged out
    lead.observe(0.500, 1000)  # a claim held up (a lock, a pause): the cap bounds the lock held ahead
    assert lead.ahead(1000) == CLAIM_LEAD == 100 * MS
    lead.observe(0.0, 0)  # a tick that claimed nothing measures nothing
    assert lead.ahead(10) == timedelta(seconds=(0.001 + 0.0005 * 10) * 1.25)


def test_before_any_claim_is_measured_the_lead_guesses_on_the_slow_side() -> None:
    assert ClaimLead().ahead(1) < 2 * MS  # one run: hardly ahead at all
    assert ClaimLead().ahead(1000) == CLAIM_LEAD  # a thousand: as far ahead as allowed
