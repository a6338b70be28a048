"""`Sentinel.once` against a real server: one guarantee per test, including the original
library's known defects, each of which must stay fixed."""

from __future__ import annotations

import datetime
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
from conftest import new_key, new_namespace

from sentinel_client import (
    CodecError,
    Fenced,
    FingerprintMismatch,
    InvalidArgument,
    Lease,
    LostReason,
    NothingHappened,
    OnceResult,
    Sentinel,
    State,
    Status,
    UncertainReason,
)
from sentinel_client._gen.sentinel.v1 import sentinel_pb2 as pb
from sentinel_client.model import duration_ms


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def bump(self) -> int:
        with self._lock:
            self.n += 1
            return self.n


def test_one_execution_among_many_concurrent_callers(
    make_client: Callable[..., Sentinel], namespace: str
) -> None:
    workers = [make_client(namespace) for _ in range(3)]
    key = new_key("charge")
    runs = Counter()
    callers = 12
    barrier = threading.Barrier(callers)

    def charge(amount: int) -> dict[str, Any]:
        runs.bump()
        time.sleep(0.5)
        return {"charged": amount}

    def call(i: int) -> OnceResult:
        barrier.wait()
        return workers[i % len(workers)].once(key, charge, kwargs={"amount": 42}, ttl_ms=3000)

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(call, range(callers)))

    assert runs.n == 1
    fresh = [r for r in results if r.success and not r.cached]
    assert len(fresh) == 1
    assert fresh[0].response == {"charged": 42}
    for r in results:
        assert r.execution_alive or (r.success and r.response == {"charged": 42}), r
        assert not r.uncertain
    replay = workers[0].once(key, charge, kwargs={"amount": 42})
    assert replay.success and replay.cached and replay.response == {"charged": 42}
    assert runs.n == 1


def test_replay_is_cached_and_never_runs_the_function_again(client: Sentinel) -> None:
    key = new_key()
    first = client.once(key, lambda: {"id": 7, "items": [1, 2.5, None]})
    assert first.status is Status.COMPLETED
    assert not first.cached
    assert first.token is not None

    def must_not_run() -> None:
        raise AssertionError("a completed key ran again")

    second = client.once(key, must_not_run)
    assert second.success and second.cached
    assert second.response == first.response == {"id": 7, "items": [1, 2.5, None]}
    assert second.token == first.token


def test_callers_between_claim_and_start_are_told_execution_alive_not_done(
    client: Sentinel,
) -> None:
    # Another worker has claimed the key but not started (or not finished) its work: a caller
    # arriving now must hear "alive", never "done, response None".
    key = new_key()
    claimed = client._stub.Claim(
        pb.ClaimRequest(
            namespace=client.namespace, key=key, lease_ttl=duration_ms(5000), holder="other-worker"
        )
    )
    assert claimed.WhichOneof("outcome") == "acquired"

    result = client.once(key, lambda: "must not run")
    assert result.execution_alive
    assert result.status is Status.IN_PROGRESS
    assert not result.success and not result.uncertain and not result.cached
    assert result.response is None
    assert result.holder == "other-worker"


def test_callers_while_the_function_runs_are_told_execution_alive(client: Sentinel) -> None:
    key = new_key()
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(20)
        return "done"

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.once, key, slow, ttl_ms=3000)
        assert started.wait(10)
        during = client.once(key, lambda: "must not run")
        release.set()
        after_first = first.result(20)
    assert during.execution_alive and during.response is None and not during.success
    assert after_first.success and after_first.response == "done"
    assert client.once(key, lambda: "must not run").response == "done"


def test_nothing_happened_releases_the_key_for_the_next_call(client: Sentinel) -> None:
    key = new_key()

    def declined() -> None:
        raise NothingHappened("card network timeout before the request was sent")

    first = client.once(key, declined)
    assert first.status is Status.RELEASED
    assert isinstance(first.exception, NothingHappened)
    assert not first.success and not first.uncertain

    second = client.once(key, lambda: "charged")
    assert second.success and not second.cached and second.response == "charged"
    assert first.token is not None and second.token is not None
    assert second.token > first.token
    assert second.attempt == 2


def test_nothing_happened_not_retryable_is_stored_as_a_definite_failure(client: Sentinel) -> None:
    key = new_key()

    def declined() -> None:
        raise NothingHappened("card declined", retryable=False)

    first = client.once(key, declined)
    assert first.status is Status.FAILED and first.error == "card declined"
    second = client.once(key, lambda: "must not run")
    assert second.failed and second.cached and second.error == "card declined"


def test_any_other_exception_is_uncertain_with_what_a_reconciler_needs(client: Sentinel) -> None:
    key = new_key()

    def boom() -> None:
        raise RuntimeError("crashed after the charge call")

    result = client.once(key, boom)
    assert result.uncertain and not result.success
    assert isinstance(result.exception, RuntimeError)
    assert result.reconcile is not None
    assert result.reconcile.key == key and result.reconcile.namespace == client.namespace
    assert result.reconcile.token == result.token
    assert result.reconcile.reason is UncertainReason.REPORTED
    assert "crashed after the charge call" in result.error

    # It is never re-run silently: later callers get the same uncertain verdict.
    again = client.once(key, lambda: "must not run")
    assert again.uncertain and again.reconcile is not None
    assert again.reconcile.token == result.reconcile.token
    assert again.reconcile.reason is UncertainReason.REPORTED


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
        (1, 2),
        {1: "int key"},
        float("nan"),
    ],
    ids=["datetime", "tuple", "int-key", "nan"],
)
def test_a_return_value_the_codec_refuses_is_uncertain_never_lost_nor_left_running(
    client: Sentinel, value: Any
) -> None:
    key = new_key()
    result = client.once(key, lambda: value)
    assert result.uncertain
    assert isinstance(result.exception, CodecError)
    assert result.response is None
    record = client.reconcile.inspect(key).execution
    assert record.state is State.UNCERTAIN, "the record must not be left RUNNING"
    assert record.uncertain_reason is UncertainReason.REPORTED
    assert "could not be stored" in record.error


def test_the_same_key_with_a_different_fingerprint_raises(client: Sentinel) -> None:
    key = new_key()
    first = client.once(key, lambda: "ok", fingerprint=b"payload-hash-1")
    assert first.success
    # The record exists (the fast path): the fingerprint must still be checked.
    with pytest.raises(FingerprintMismatch):
        client.once(key, lambda: "other", fingerprint=b"payload-hash-2")
    same = client.once(key, lambda: "other", fingerprint=b"payload-hash-1")
    assert same.success and same.cached and same.response == "ok"


def test_fingerprint_is_checked_while_the_execution_runs(client: Sentinel) -> None:
    key = new_key()
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(20)
        return "ok"

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.once, key, slow, fingerprint="a", ttl_ms=3000)
        assert started.wait(10)
        try:
            with pytest.raises(FingerprintMismatch):
                client.once(key, lambda: "other", fingerprint="b")
        finally:
            release.set()
        assert first.result(20).success


def test_namespace_and_key_are_a_composite_key_never_concatenated(
    make_client: Callable[..., Sentinel],
) -> None:
    base = new_namespace()
    # The original library joined namespace and key with ":"; "a"+"b:c" and "a:b"+"c" collided.
    a = make_client(f"{base}-a")
    assert a.once("b:c", lambda: "a / b:c").response == "a / b:c"
    with pytest.raises(InvalidArgument):
        # A namespace cannot contain ":" at all, so it can never alias a key.
        make_client(f"{base}-a:b").once("c", lambda: "a:b / c")
    # The same shape with separators a namespace may contain, and with none at all.
    pairs = [
        ((f"{base}-a", "b.c"), (f"{base}-a.b", "c")),
        ((f"{base}-a", "b-c"), (f"{base}-a-b", "c")),
        ((f"{base}-a", "bc"), (f"{base}-ab", "c")),
    ]
    for (ns1, k1), (ns2, k2) in pairs:
        r1 = make_client(ns1).once(k1, lambda ns=ns1, k=k1: f"{ns}/{k}")
        r2 = make_client(ns2).once(k2, lambda ns=ns2, k=k2: f"{ns}/{k}")
        assert (r1.cached, r2.cached) == (False, False), "each pair is two records"
        assert r1.response == f"{ns1}/{k1}" and r2.response == f"{ns2}/{k2}"


def test_lease_gives_the_token_and_heartbeats_keep_a_long_sync_call_alive(
    client: Sentinel,
) -> None:
    key = new_key()
    ttl_ms = 1000
    seen: dict[str, Any] = {}

    def long_job(lease: Lease) -> int:
        seen["token"] = lease.token
        deadline = time.monotonic() + 3.5 * ttl_ms / 1000
        while time.monotonic() < deadline:
            assert not lease.cancelled.wait(0.1), f"lease lost: {lease.lost_reason}"
        seen["cancelled"] = lease.cancelled.is_set()
        return lease.token

    result = client.once(key, long_job, ttl_ms=ttl_ms)
    assert result.success, result
    assert not result.late
    assert result.response == seen["token"] == result.token
    assert seen["cancelled"] is False


def test_forced_reconcile_tells_the_running_worker_its_lease_is_lost(client: Sentinel) -> None:
    key = new_key()
    started = threading.Event()
    observed: dict[str, Any] = {}

    def job(lease: Lease) -> str:
        observed["token"] = lease.token
        started.set()
        observed["cancelled"] = lease.cancelled.wait(20)
        observed["reason"] = lease.lost_reason
        return "finished anyway"

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.once, key, job, ttl_ms=1500)
        assert started.wait(10)
        outcome = client.reconcile.resolve(
            key, observed["token"], retry=True, force=True, note="operator ended it"
        )
        assert outcome.token > observed["token"]
        result = running.result(30)
    assert observed["cancelled"] is True, "the worker was never told"
    assert observed["reason"] is LostReason.FENCED
    # Its late result is refused by fencing and reported as uncertain, not as success.
    assert result.uncertain and not result.success
    assert isinstance(result.exception, Fenced)
    assert result.reconcile is not None and result.reconcile.token == outcome.token


def test_keyboard_interrupt_is_reported_then_re_raised(client: Sentinel) -> None:
    key = new_key()

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.once(key, interrupted)
    record = client.reconcile.inspect(key).execution
    assert record.state is State.UNCERTAIN


def test_bad_arguments_are_refused_before_anything_is_written(client: Sentinel) -> None:
    key = new_key()
    with pytest.raises(TypeError):
        client.once(key, lambda x: x, kwargs={"y": 1})
    with pytest.raises(ValueError, match="ttl_ms"):
        client.once(key, lambda: 1, ttl_ms=0)
    with pytest.raises(InvalidArgument) as err:
        client.once(key, lambda: 1, ttl_ms=50)  # below the server's 100 ms minimum
    assert any(field == "lease_ttl" for field, _ in err.value.violations)

    async def coro() -> None:
        return None

    with pytest.raises(TypeError, match="AsyncSentinel"):
        client.once(key, coro)
    # Nothing was claimed by any of these.
    assert client.once(key, lambda: "first real run").response == "first real run"


def test_a_retried_claim_with_the_same_claim_id_gets_the_same_lease(client: Sentinel) -> None:
    # once() retries a claim whose outcome is unknown with the same request, hence the same
    # claim id: the retry must get the original lease back, not "someone else holds it".
    req = pb.ClaimRequest(
        namespace=client.namespace,
        key=new_key(),
        lease_ttl=duration_ms(5000),
        holder="retrying-worker",
        claim_id="claim-attempt-1",
    )
    first = client._stub.Claim(req)
    retry = client._stub.Claim(req)
    assert first.WhichOneof("outcome") == retry.WhichOneof("outcome") == "acquired"
    assert retry.acquired.token == first.acquired.token


def test_close_returns_only_after_the_heartbeat_threads_have_ended(addr: str) -> None:
    # A call still in flight while the channel closes or the interpreter exits can hang the
    # process in gRPC's shutdown; close() must leave none behind.
    def heartbeat_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("sentinel-heartbeat")}

    before = heartbeat_threads()
    client = Sentinel(addr, namespace=new_namespace())
    opened = threading.Event()

    def job(lease: Lease) -> int:
        # ttl 600 ms: a heartbeat is due every 200 ms, so the stream opens while this runs.
        deadline = time.monotonic() + 5
        while client._heartbeater.streams_opened == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        opened.set()
        return lease.token

    result = client.once(new_key(), job, ttl_ms=600)
    assert result.success and opened.is_set()
    assert client._heartbeater.streams_opened >= 1
    started = heartbeat_threads() - before
    assert any(t.name == "sentinel-heartbeat-reader" for t in started), started
    client.close()
    assert [t for t in started if t.is_alive()] == []
