"""The reconciler: list, inspect and resolve uncertain executions, in the client's namespace."""

from __future__ import annotations

from typing import Callable

import pytest
from conftest import new_key, new_namespace

from sentinel_client import (
    AsyncSentinel,
    Fenced,
    NotFound,
    NotReconcilable,
    OnceResult,
    Sentinel,
    State,
    Status,
)
from sentinel_client._gen.sentinel.v1 import sentinel_pb2 as pb
from sentinel_client.model import duration_ms


def make_uncertain(client: Sentinel, key: str) -> OnceResult:
    def crash() -> None:
        raise RuntimeError("crashed midway")

    result = client.once(key, crash)
    assert result.uncertain and result.reconcile is not None
    return result


def test_reconcile_works_within_the_clients_namespace(
    make_client: Callable[..., Sentinel],
) -> None:
    mine, other = make_client(new_namespace()), make_client(new_namespace())
    keys = [new_key("a"), new_key("b"), new_key("c")]
    uncertain = {k: make_uncertain(mine, k) for k in keys}
    make_uncertain(other, keys[0])  # the same key in another namespace is another record
    assert mine.once(new_key("done"), lambda: 1).success

    listed = mine.reconcile.list_uncertain()
    assert sorted(e.key for e in listed) == sorted(keys)
    assert all(e.namespace == mine.namespace and e.state is State.UNCERTAIN for e in listed)

    a, b, c = keys
    info = uncertain[a].reconcile
    assert info is not None
    inspection = mine.reconcile.inspect(a)
    assert inspection.execution.state is State.UNCERTAIN
    assert inspection.execution.token == info.token
    assert inspection.history and inspection.history[0].to_state is State.UNCERTAIN

    # Mark completed: later callers replay the reconciler's answer without running anything.
    done = mine.reconcile.resolve(a, info.token, completed={"refunded": True}, note="checked")
    assert done.state is State.COMPLETED and done.token > info.token
    replay = mine.once(a, lambda: "must not run")
    assert replay.success and replay.cached and replay.response == {"refunded": True}

    # Retry: the next call runs the function again, under a newer token.
    b_info = uncertain[b].reconcile
    assert b_info is not None
    assert mine.reconcile.resolve(b, b_info.token, retry=True).state is State.RELEASED
    rerun = mine.once(b, lambda: "ran again")
    assert rerun.success and not rerun.cached and rerun.response == "ran again"

    # Failed: stored and replayed as a definite failure.
    c_info = uncertain[c].reconcile
    assert c_info is not None
    assert mine.reconcile.resolve(c, c_info.token, failed="refund issued").state is State.FAILED
    failed = mine.once(c, lambda: "must not run")
    assert failed.status is Status.FAILED and failed.error == "refund issued"

    # The other namespace's record with the same key was left alone.
    assert other.reconcile.inspect(a).execution.state is State.UNCERTAIN
    assert [e.key for e in other.reconcile.list_uncertain()] == [a]


def test_resolve_with_a_stale_token_is_fenced(client: Sentinel) -> None:
    key = new_key()
    info = make_uncertain(client, key).reconcile
    assert info is not None
    client.reconcile.resolve(key, info.token, retry=True)
    with pytest.raises(Fenced) as err:
        client.reconcile.resolve(key, info.token, failed="second reconciler")
    assert err.value.current_token is not None and err.value.current_token > info.token


def test_resolve_of_a_live_execution_needs_force(client: Sentinel) -> None:
    key = new_key()
    acquired = client._stub.Claim(
        pb.ClaimRequest(namespace=client.namespace, key=key, lease_ttl=duration_ms(10_000))
    ).acquired
    with pytest.raises(NotReconcilable):
        client.reconcile.resolve(key, acquired.token, retry=True)


def test_inspect_of_an_unknown_key_raises_not_found(client: Sentinel) -> None:
    with pytest.raises(NotFound):
        client.reconcile.inspect(new_key("never-claimed"))


def test_resolve_needs_exactly_one_resolution(client: Sentinel) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        client.reconcile.resolve("k", 1)
    with pytest.raises(ValueError, match="exactly one"):
        client.reconcile.resolve("k", 1, retry=True, failed="x")


def test_completed_none_is_a_valid_resolution(client: Sentinel) -> None:
    key = new_key()
    info = make_uncertain(client, key).reconcile
    assert info is not None
    assert client.reconcile.resolve(key, info.token, completed=None).state is State.COMPLETED
    replay = client.once(key, lambda: "must not run")
    assert replay.success and replay.response is None and replay.cached


@pytest.mark.asyncio
async def test_async_reconciler_works_within_the_clients_namespace(
    aclient: AsyncSentinel,
) -> None:
    key = new_key()

    async def crash() -> None:
        raise RuntimeError("crashed midway")

    async def must_not_run() -> str:
        raise AssertionError("ran")

    result = await aclient.once(key, crash)
    assert result.uncertain and result.reconcile is not None
    listed = await aclient.reconcile.list_uncertain()
    assert [(e.namespace, e.key) for e in listed] == [(aclient.namespace, key)]
    inspection = await aclient.reconcile.inspect(key)
    assert inspection.execution.token == result.reconcile.token
    outcome = await aclient.reconcile.resolve(key, result.reconcile.token, completed=[1, 2])
    assert outcome.state is State.COMPLETED
    replay = await aclient.once(key, must_not_run)
    assert replay.success and replay.cached and replay.response == [1, 2]
