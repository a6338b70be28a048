"""Network faults against servers this test starts itself: claims retried while the server is
down, and the shared heartbeat stream re-opened after a server restart without losing a lease."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import new_key, new_namespace
from faultproxy import FaultProxy

from sentinel_client import (
    AsyncLease,
    AsyncSentinel,
    Lease,
    LeaseLost,
    LostReason,
    Sentinel,
    Unavailable,
)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run through scripts/with-server.sh, which exports it")
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A `sentinel serve` on a fixed port, sharing the database of the main test server."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        out = self.workdir / f"server-{self.starts}.out"
        with open(out, "wb") as stdout, open(self.workdir / "server.err", "ab") as stderr:
            self.proc = subprocess.Popen(
                [
                    _env("SENTINEL_BIN"),
                    "serve",
                    "--database-url",
                    _env("SENTINEL_DATABASE_URL"),
                    "--listen",
                    self.target,
                ],
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + 60
        while b"sentinel listening on" not in out.read_bytes():
            assert self.proc.poll() is None, (self.workdir / "server.err").read_text()
            assert time.monotonic() < deadline, "the extra sentinel server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    with tempfile.TemporaryDirectory() as d:
        s = ServerProcess(_free_port(), Path(d))
        try:
            yield s
        finally:
            s.kill()


def test_claim_is_retried_while_the_server_is_unavailable(server: ServerProcess) -> None:
    client = Sentinel(server.target, namespace=new_namespace(), retry_timeout=60)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.once, new_key(), lambda: "ran once the server was up")
            time.sleep(1.0)
            assert not pending.done(), "once gave up while the server was down"
            server.start()
            result = pending.result(60)
    finally:
        client.close()
    assert result.success and result.response == "ran once the server was up"


def test_heartbeat_stream_reopens_after_a_server_restart_and_keeps_the_lease(
    server: ServerProcess,
) -> None:
    server.start()
    client = Sentinel(server.target, namespace=new_namespace())
    key = new_key()
    started, restarted = threading.Event(), threading.Event()
    state: dict[str, object] = {}

    def job(lease: Lease) -> str:
        started.set()
        assert restarted.wait(60)
        # Wait until a heartbeat over the re-opened stream has extended the lease on the server.
        before = state["expires_before_restart"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            expires = client.reconcile.inspect(key).execution.lease_expires_at
            assert expires is not None and before is not None
            if expires > before:  # type: ignore[operator]
                break
            assert not lease.cancelled.wait(0.2), f"lease lost: {lease.lost_reason}"
        else:
            pytest.fail("no heartbeat extended the lease after the restart")
        state["cancelled"] = lease.cancelled.is_set()
        return "survived"

    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(client.once, key, job, ttl_ms=9000)
            assert started.wait(30)
            state["expires_before_restart"] = client.reconcile.inspect(
                key
            ).execution.lease_expires_at
            server.kill()
            server.start()
            restarted.set()
            result = running.result(90)
        assert client._heartbeater.streams_opened >= 2
    finally:
        client.close()
    assert result.success and result.response == "survived", result
    assert state["cancelled"] is False


@pytest.fixture
def proxy(addr: str) -> Iterator[FaultProxy]:
    p = FaultProxy(addr)
    try:
        yield p
    finally:
        p.close()


def test_a_silently_stalled_connection_cancels_the_lease_at_its_local_deadline(
    proxy: FaultProxy,
) -> None:
    # The peers' failure: a keepalive stream stalls and the worker believes it still holds the
    # lease. Here the connection goes silent for good, and the worker must be told anyway.
    client = Sentinel(proxy.target, namespace=new_namespace(), rpc_timeout=1, retry_timeout=2)
    started = threading.Event()
    seen: dict[str, object] = {}

    def job(lease: Lease) -> str:
        started.set()
        seen["cancelled"] = lease.cancelled.wait(30)
        seen["reason"] = lease.lost_reason
        return "finished after losing the lease"

    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(client.once, new_key(), job, ttl_ms=1500)
            assert started.wait(10)
            proxy.freeze_all()
            result = running.result(60)
    finally:
        client.close()
    assert seen["cancelled"] is True, "the worker was never told its lease was gone"
    assert seen["reason"] is LostReason.LOCAL_DEADLINE
    # Its outcome could not be reported, so it is uncertain, never a silent success.
    assert result.uncertain
    assert isinstance(result.exception, Unavailable)


def test_a_stalled_connection_is_replaced_and_the_lease_survives(
    proxy: FaultProxy, addr: str
) -> None:
    namespace = new_namespace()
    fast_keepalive = [
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.http2.ping_timeout_ms", 1000),
    ]
    client = Sentinel(proxy.target, namespace=namespace, channel_options=fast_keepalive)
    direct = Sentinel(addr, namespace=namespace)
    key = new_key()
    started, frozen = threading.Event(), threading.Event()
    state: dict[str, Any] = {}

    def job(lease: Lease) -> str:
        started.set()
        assert frozen.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            expires = direct.reconcile.inspect(key).execution.lease_expires_at
            if expires is not None and expires > state["expires_at_freeze"]:
                break
            assert not lease.cancelled.wait(0.2), f"lease lost: {lease.lost_reason}"
        else:
            pytest.fail("no heartbeat extended the lease after the connection stalled")
        state["cancelled"] = lease.cancelled.is_set()
        return "survived"

    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(client.once, key, job, ttl_ms=8000)
            assert started.wait(30)
            proxy.freeze_existing()
            # A heartbeat already past the proxy still commits on the server; let it land
            # before taking the baseline, so that only a new stream can extend the lease.
            time.sleep(0.5)
            state["expires_at_freeze"] = direct.reconcile.inspect(key).execution.lease_expires_at
            frozen.set()
            result = running.result(90)
        assert client._heartbeater.streams_opened >= 2
    finally:
        client.close()
        direct.close()
    assert result.success, result
    assert result.response == "survived"
    assert state["cancelled"] is False


@pytest.mark.asyncio
async def test_async_a_silently_stalled_connection_cancels_the_task_at_its_local_deadline(
    proxy: FaultProxy,
) -> None:
    started = asyncio.Event()
    seen: dict[str, Any] = {}

    async def job(lease: AsyncLease) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen["reason"] = lease.lost_reason
            raise
        return "never"

    async with AsyncSentinel(
        proxy.target, namespace=new_namespace(), rpc_timeout=1, retry_timeout=2
    ) as client:
        running = asyncio.ensure_future(client.once(new_key(), job, ttl_ms=1500))
        await asyncio.wait_for(started.wait(), 10)
        proxy.freeze_all()
        result = await asyncio.wait_for(running, 60)
    assert seen.get("reason") is LostReason.LOCAL_DEADLINE, "the task was never cancelled"
    assert result.uncertain
    assert isinstance(result.exception, LeaseLost)
