"""Pacing with the system clock: how long before prepared runs' time their tick begins, and the
garbage collector held back from a claim until its tasks have begun."""

from __future__ import annotations

import asyncio
import gc
from datetime import timedelta

import pytest

from agent.scheduler.engine.pacing import CLAIM_LEAD, CLAIM_MARGIN, CLAIM_SAMPLES, ClaimLead, collection_held

MS = timedelta(milliseconds=1)


def test_the_lead_is_what_the_slowest_recent_claim_needs_with_a_margin_up_to_the_cap() -> None:
    lead = ClaimLead()
    lead.observe(0.040, 1000)  # 40 us a run
    assert lead.ahead(1000) == timedelta(seconds=(0.001 + 0.040) * CLAIM_MARGIN)
    lead.observe(0.020, 1000)  # one quicker claim says little about the next: the slower one counts
    assert lead.ahead(1000) == timedelta(seconds=(0.001 + 0.040) * CLAIM_MARGIN)
    for _ in range(CLAIM_SAMPLES - 1):
        lead.observe(0.020, 1000)
    assert lead.ahead(1000) == timedelta(seconds=(0.001 + 0.020) * CLAIM_MARGIN)  # the slow one has aged out
    lead.observe(0.500, 1000)  # a claim held up (a lock, a pause): the cap bounds the lock held ahead
    assert lead.ahead(1000) == CLAIM_LEAD == 200 * MS
    lead.observe(0.0, 0)  # a tick that claimed nothing measures nothing
    assert lead.ahead(10) == timedelta(seconds=(0.001 + 0.0005 * 10) * CLAIM_MARGIN)


def test_before_any_claim_is_measured_the_lead_guesses_on_the_slow_side() -> None:
    assert ClaimLead().ahead(1) < 3 * MS  # one run: hardly ahead at all
    assert ClaimLead().ahead(1000) == CLAIM_LEAD  # a thousand: as far ahead as allowed


def test_the_collector_waits_while_held_and_comes_back_however_the_hold_ends() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with collection_held(loop):
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(RuntimeError), collection_held(loop):
            raise RuntimeError("the claim failed")
        assert gc.isenabled()
        with collection_held(None):  # not a claim ahead of time: nothing held
            assert gc.isenabled()

    assert gc.isenabled()
    asyncio.run(scenario())
    assert gc.isenabled()


def test_a_hold_ends_at_its_time_limit_even_while_the_claim_still_waits() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with collection_held(loop, seconds=0.01):
            assert not gc.isenabled()
            await asyncio.sleep(0.05)  # a claim retried on a locked database
            assert gc.isenabled()
        assert gc.isenabled()

    asyncio.run(scenario())


def test_holds_of_two_engines_overlap_and_collection_comes_back_when_the_last_ends() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first = collection_held(loop)
        second = collection_held(loop)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert not gc.isenabled()  # the second engine's claim is still under way
        second.__exit__(None, None, None)
        assert gc.isenabled()

    asyncio.run(scenario())


def test_a_process_that_turned_the_collector_off_keeps_it_off() -> None:
    async def scenario() -> None:
        with collection_held(asyncio.get_running_loop()):
            assert not gc.isenabled()
        assert not gc.isenabled()

    gc.disable()
    try:
        asyncio.run(scenario())
        assert not gc.isenabled()
    finally:
        gc.enable()
