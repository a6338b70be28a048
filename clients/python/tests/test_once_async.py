"""`AsyncSentinel.once` against a real server, and the sync and async clients side by side."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import pytest
from conftest import new_key

from sentinel_client import (
    AsyncLease,
    AsyncSentinel,
    CodecError,
    Lease,
    LeaseLost,
    LostReason,
    NothingHappened,
    Sentinel,
    State,
    Status,
    UncertainReason,
)


@pytest.mark.asyncio
async def test_async_heartbeat_keeps_a_long_coroutine_alive(aclient: AsyncSentinel) -> None:
    key = new_key()
    ttl_ms = 1000
    lost_seen: list[bool] = []

    async def long_job(lease: AsyncLease) -> int:
        deadline = time.monotonic() + 3.5 * ttl_ms / 1000  # well past 3 lease ttls
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            lost_seen.append(lease.cancelled.is_set())
        return lease.token

    result = await aclient.once(key, long_job, ttl_ms=ttl_ms)
    assert result.success, result
    assert not result.late
    assert result.response == result.token
    assert lost_seen and not any(lost_seen)
    record = (await aclient.reconcile.inspect(key)).execution
    assert record.state is State.COMPLETED


@pytest.mark.asyncio
async def test_a_sync_and_an_async_client_in_one_process_both_keep_their_leases(
    addr: str, namespace: str
) -> None:
    ttl_ms = 1000
    run_s = 3.5 * ttl_ms / 1000
    sync_client = Sentinel(addr, namespace=namespace)
    try:
        async with AsyncSentinel(addr, namespace=namespace) as async_client:

            def sync_job(lease: Lease) -> str:
                deadline = time.monotonic() + run_s
                while time.monotonic() < deadline:
                    assert not lease.cancelled.wait(0.1), f"sync lease lost: {lease.lost_reason}"
                return "sync done"

            async def async_job(lease: AsyncLease) -> str:
                deadline = time.monotonic() + run_s
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    assert not lease.cancelled.is_set(), f"async lease lost: {lease.lost_reason}"
                return "async done"

            sync_result, async_result = await asyncio.gather(
                asyncio.to_thread(sync_client.once, new_key("sync"), sync_job, ttl_ms=ttl_ms),
                async_client.once(new_key("async"), async_job, ttl_ms=ttl_ms),
            )
    finally:
        sync_client.close()
    assert sync_result.success and sync_result.response == "sync done", sync_result
    assert async_result.success and async_result.response == "async done", async_result
    assert not sync_result.late and not async_result.late


@pytest.mark.asyncio
async def test_async_one_execution_among_many_concurrent_callers(aclient: AsyncSentinel) -> None:
    key = new_key()
    runs = 0

    async def charge(amount: int) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.5)
        return {"charged": amount}

    results = await asyncio.gather(
        *(aclient.once(key, charge, kwargs={"amount": 5}, ttl_ms=3000) for _ in range(10))
    )
    assert runs == 1
    assert sum(1 for r in results if r.success and not r.cached) == 1
    for r in results:
        assert r.execution_alive or (r.success and r.response == {"charged": 5}), r
    replay = await aclient.once(key, charge, kwargs={"amount": 5})
    assert replay.success and replay.cached and replay.response == {"charged": 5}
    assert runs == 1


@pytest.mark.asyncio
async def test_async_datetime_return_value_is_uncertain_not_lost(aclient: AsyncSentinel) -> None:
    key = new_key()

    async def returns_datetime() -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc)

    result = await aclient.once(key, returns_datetime)
    assert result.uncertain and isinstance(result.exception, CodecError)
    record = (await aclient.reconcile.inspect(key)).execution
    assert record.state is State.UNCERTAIN
    assert record.uncertain_reason is UncertainReason.REPORTED


@pytest.mark.asyncio
async def test_async_nothing_happened_releases_the_key(aclient: AsyncSentinel) -> None:
    key = new_key()

    async def declined() -> None:
        raise NothingHappened()

    async def works() -> str:
        return "ok"

    first = await aclient.once(key, declined)
    assert first.status is Status.RELEASED and isinstance(first.exception, NothingHappened)
    second = await aclient.once(key, works)
    assert second.success and not second.cached and second.attempt == 2


@pytest.mark.asyncio
async def test_async_lease_loss_cancels_the_running_task(aclient: AsyncSentinel) -> None:
    key = new_key()
    started = asyncio.Event()
    tokens: list[int] = []
    cancelled = False

    async def job(lease: AsyncLease) -> str:
        nonlocal cancelled
        tokens.append(lease.token)
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled = True
            raise
        return "never"

    running = asyncio.ensure_future(aclient.once(key, job, ttl_ms=1500))
    await asyncio.wait_for(started.wait(), 10)
    outcome = await aclient.reconcile.resolve(key, tokens[0], retry=True, force=True)
    result = await asyncio.wait_for(running, 30)
    assert cancelled, "the task was not cancelled when its lease was lost"
    assert result.uncertain and isinstance(result.exception, LeaseLost)
    assert result.exception.lost_reason == LostReason.FENCED.value
    assert result.reconcile is not None and result.reconcile.token == outcome.token


@pytest.mark.asyncio
async def test_cancelling_the_caller_reports_uncertain_and_propagates(
    aclient: AsyncSentinel,
) -> None:
    key = new_key()
    started = asyncio.Event()

    async def job() -> None:
        started.set()
        await asyncio.sleep(30)

    running = asyncio.ensure_future(aclient.once(key, job, ttl_ms=2000))
    await asyncio.wait_for(started.wait(), 10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    record = (await aclient.reconcile.inspect(key)).execution
    assert record.state is State.UNCERTAIN, "a cancelled caller must not leave the record RUNNING"
    assert record.uncertain_reason is UncertainReason.REPORTED


@pytest.mark.asyncio
async def test_async_once_refuses_a_sync_function(aclient: AsyncSentinel) -> None:
    with pytest.raises(TypeError, match="coroutine"):
        await aclient.once(new_key(), lambda: 1)  # type: ignore[arg-type, return-value]
