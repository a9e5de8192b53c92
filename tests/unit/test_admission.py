"""Admission (app/api/admission.py): turns per process and per tenant, a bounded wait that ends in 503 or 429,
a tenant's waiting cap, a waiting client that hangs up, and turns always given back."""

from __future__ import annotations

import asyncio

import pytest

from app.api.admission import Gate, Left, Refused


def run(coro):
    return asyncio.run(coro)


def test_a_tenant_holds_at_most_its_share_and_the_process_its_capacity():
    async def scenario():
        gate = Gate(capacity=3, per_tenant=2, waiting=10, wait_s=0.2)
        a1, a2 = await gate.enter("acme"), await gate.enter("acme")
        b1 = await gate.enter("globex")  # another tenant still gets in: acme holds only its share
        with pytest.raises(Refused) as third_of_acme:
            await gate.enter("acme")
        with pytest.raises(Refused) as process_full:
            await gate.enter("initech")
        for release in (a1, a2, b1, b1):  # giving back twice is harmless
            release()
        assert gate.shares == {} and gate.capacity._value == 3
        return third_of_acme.value, process_full.value

    tenant, process = run(scenario())
    assert (tenant.status, tenant.code) == (429, "too_many_concurrent_requests")
    assert (process.status, process.code) == (503, "server_busy")


def test_a_tenant_past_its_waiting_cap_is_refused_at_once():
    async def scenario():
        gate = Gate(capacity=10, per_tenant=1, waiting=2, wait_s=5.0)
        held = await gate.enter("acme")
        waiters = [asyncio.ensure_future(gate.enter("acme")) for _ in range(2)]
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Refused) as refused:
            await gate.enter("acme")  # one holds, two wait: the fourth is not queued behind them
        took = loop.time() - started
        held()
        first = await waiters[0]
        first()
        (await waiters[1])()
        assert gate.shares == {}
        return refused.value, took

    refused, took = run(scenario())
    assert refused.status == 429 and took < 0.1


def test_a_waiting_request_whose_client_left_gives_up_its_place():
    async def scenario():
        gate = Gate(capacity=1, per_tenant=5, waiting=5, wait_s=5.0)
        held = await gate.enter("acme")
        left = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(gate.enter("acme", client_left=left))
        await asyncio.sleep(0.01)
        left.set_result({"type": "http.disconnect"})
        with pytest.raises(Left):
            await waiting
        held()
        assert gate.shares == {} and gate.capacity._value == 1
        (await gate.enter("acme"))()  # and the turn it waited for is free for the next one

    run(scenario())


def test_a_turn_is_given_back_when_its_body_fails():
    async def scenario():
        gate = Gate(capacity=1, per_tenant=1, waiting=1, wait_s=0.1)
        with pytest.raises(RuntimeError):
            async with gate.turn():
                raise RuntimeError("the route failed")
        async with gate.turn():
            pass
        assert gate.capacity._value == 1

    run(scenario())
