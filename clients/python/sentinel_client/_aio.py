"""`AsyncSentinel`: the asyncio client on grpc.aio, with its heartbeat task and reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

import grpc
import grpc.aio

from . import _core as core
from ._gen.sentinel.v1 import sentinel_pb2 as pb
from ._gen.sentinel.v1.sentinel_pb2_grpc import SentinelServiceStub
from ._leases import Backoff, LeaseId, LeaseTable, Notification, Tracked
from .codec import Codec
from .errors import RETRYABLE_CODES, LeaseLost, SentinelError, from_rpc_error
from .model import (
    Execution,
    Inspection,
    LeaseExpiry,
    LostReason,
    OnceResult,
    ReconcileOutcome,
    State,
    execution_from_pb,
    history_from_pb,
    seconds,
    state_from_pb,
    state_to_pb,
)

if TYPE_CHECKING:
    # Exists only in the generated stubs: the asyncio view of the same stub class.
    from ._gen.sentinel.v1.sentinel_pb2_grpc import SentinelServiceAsyncStub

log = logging.getLogger("sentinel_client")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
ChannelOptions = Sequence[Tuple[str, Any]]


class AsyncLease:
    """The lease under which a coroutine runs, passed to `fn` if it takes a `lease` parameter.

    `token` is the fencing token for downstream writes. When the lease is lost, `cancelled` is set
    and (unless the client was built with cancel_on_lease_loss=False) the task running `fn` is
    cancelled, so the work stops at its next await.
    """

    def __init__(
        self, namespace: str, key: str, token: int, attempt: int, cancel_task: bool
    ) -> None:
        self.namespace = namespace
        self.key = key
        self.token = token
        self.attempt = attempt
        self.cancelled = asyncio.Event()
        self.lost_reason: Optional[LostReason] = None
        self.lost_detail = ""
        self._cancel_task = cancel_task
        self._task: Optional[asyncio.Future[Any]] = None

    @property
    def lost(self) -> bool:
        return self.cancelled.is_set()

    def raise_if_lost(self) -> None:
        """Raises LeaseLost if the lease is gone."""
        if self.cancelled.is_set():
            reason = self.lost_reason or LostReason.FENCED
            raise LeaseLost(
                f"lease on {self.key!r} lost: {reason.value} {self.lost_detail}".rstrip(),
                lost_reason=reason.value,
                detail=self.lost_detail,
            )

    def _on_lost(self, reason: LostReason, detail: str) -> None:
        first = not self.cancelled.is_set()
        self.lost_reason = reason
        self.lost_detail = detail
        self.cancelled.set()
        if first and self._cancel_task and self._task is not None and not self._task.done():
            self._task.cancel()


class _Heartbeater:
    """Keeps every lease of one client alive over one shared bidirectional stream.

    One task sends each lease's heartbeat every ttl/3, enforces the local deadlines and re-opens
    the stream with backoff when it breaks or stalls; a reader task per stream applies the
    replies. Everything runs on the client's event loop, so the LeaseTable needs no lock.
    """

    _WRITE_TIMEOUT_S = 0.5

    def __init__(self, stub: SentinelServiceAsyncStub) -> None:
        self._stub = stub
        self._table = LeaseTable()
        self._wake = asyncio.Event()
        self._call: Optional[Any] = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._backoff = Backoff()
        self._reopen_at = 0.0
        self._closed = False
        self.streams_opened = 0
        self.last_error: Optional[BaseException] = None

    def register(self, t: Tracked) -> None:
        if self._closed:
            raise RuntimeError("the AsyncSentinel client is closed")
        self._table.add(t, time.monotonic())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    def unregister(self, lease_id: LeaseId) -> None:
        self._table.remove(lease_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _notify(self._table.close())
        reader = self._reader
        self._drop_stream()
        if self._task is not None:
            self._task.cancel()
        # Both end before the channel closes, so that no call of this client is left in flight.
        pending = [t for t in (self._task, reader) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)

    def _drop_stream(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    async def _run(self) -> None:
        # This loop also enforces the local deadlines, so it must outlive any unexpected error.
        while not self._closed:
            try:
                await self._step()
            except Exception:
                log.exception("sentinel heartbeat loop failed; continuing")
                await asyncio.sleep(0.1)

    async def _step(self) -> None:
        """One round: expire deadlines, manage the stream, send what is due, then wait."""
        self._wake.clear()
        now = time.monotonic()
        _notify(self._table.expire(now))
        if self._call is not None and self._reader is not None and self._reader.done():
            self._drop_stream()
            self._reopen_at = now + self._backoff.next_delay()
        if self._call is not None and self._table.stalled(now):
            log.warning("sentinel heartbeat stream stalled; re-opening it")
            self._drop_stream()
            self._reopen_at = now + self._backoff.next_delay()
        if self._call is None and len(self._table) and now >= self._reopen_at:
            self._open(now)
        if self._call is not None:
            await self._send_due(self._call, now)
        wake = self._table.next_wake(now, self._call is not None)
        if self._call is None and len(self._table):
            wake = min(wake, self._reopen_at)
        if not len(self._table) and self._call is None:
            wake = now + 3600.0  # idle until a lease is registered
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, wake - time.monotonic()))

    def _open(self, now: float) -> None:
        call = self._stub.Heartbeat()
        self._call = call
        self.streams_opened += 1
        self._table.on_stream_reset(now)
        self._reader = asyncio.get_running_loop().create_task(self._read(call))

    async def _send_due(self, call: Any, now: float) -> None:
        for req in self._table.due(now):
            try:
                # Bounded: a flow-controlled write to a stalled server must not keep this loop
                # from enforcing the local deadlines.
                await asyncio.wait_for(call.write(req), self._WRITE_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - whatever the failure, the stream is unusable
                self.last_error = e
                log.debug("sentinel heartbeat write failed: %r", e)
                self._drop_stream()
                self._reopen_at = time.monotonic() + self._backoff.next_delay()
                return

    async def _read(self, call: Any) -> None:
        try:
            async for resp in call:
                self._backoff.reset()
                note = self._table.on_response(resp)
                if note is not None:
                    _notify([note])
        except grpc.RpcError as e:
            self.last_error = e
            log.debug("sentinel heartbeat stream ended: %s", e)
        except Exception as e:
            self.last_error = e
            log.exception("sentinel heartbeat reader failed")
        finally:
            self._wake.set()


def _notify(notes: List[Notification]) -> None:
    for t, reason, detail in notes:
        try:
            t.on_lost(reason, detail)
        except Exception:
            log.exception("sentinel lease-lost callback failed")


class AsyncReconciler:
    """Operations for resolving uncertain executions, in the client's namespace."""

    def __init__(self, client: AsyncSentinel) -> None:
        self._client = client

    async def executions(
        self, state: Optional[State] = None, *, page_size: int = 100
    ) -> AsyncIterator[Execution]:
        """Every execution of the namespace (in the given state), page by page."""
        c = self._client
        stub = c._bind()
        token = ""
        while True:
            req = pb.ListExecutionsRequest(
                namespace=c.namespace, page_size=page_size, page_token=token
            )
            if state is not None:
                req.state = state_to_pb(State(state))
            resp, _ = await c._rpc(stub.ListExecutions, req, retry=True)
            for e in resp.executions:
                yield execution_from_pb(e)
            token = resp.next_page_token
            if not token:
                return

    async def list_uncertain(self, *, page_size: int = 100) -> List[Execution]:
        """Every UNCERTAIN execution of the namespace."""
        return [e async for e in self.executions(State.UNCERTAIN, page_size=page_size)]

    async def inspect(self, key: str, *, history_limit: int = 50) -> Inspection:
        """The execution of `key` and its recent history; raises NotFound for an unknown key."""
        c = self._client
        stub = c._bind()
        req = pb.InspectRequest(namespace=c.namespace, key=key, history_limit=history_limit)
        resp, _ = await c._rpc(stub.Inspect, req, retry=True)
        return Inspection(
            execution=execution_from_pb(resp.execution),
            history=tuple(history_from_pb(h) for h in resp.history),
        )

    async def resolve(
        self,
        key: str,
        token: int,
        *,
        completed: Any = core.UNSET,
        retry: bool = False,
        failed: Optional[str] = None,
        operator: Optional[str] = None,
        note: str = "",
        force: bool = False,
    ) -> ReconcileOutcome:
        """Resolves `key` by compare-and-set on `token`; see `Reconciler.resolve`."""
        c = self._client
        stub = c._bind()
        req = core.reconcile_request(
            c._cfg, key, token, completed, retry, failed, operator, note, force
        )
        resp, _ = await c._rpc(stub.Reconcile, req, retry=False)
        return ReconcileOutcome(state=state_from_pb(resp.state), token=resp.token)


class AsyncSentinel:
    """An asyncio Sentinel client on grpc.aio; same options as `Sentinel`.

    The channel is created on first use and bound to that event loop. Close it with
    `await client.close()` or `async with AsyncSentinel(...) as client:`.
    """

    def __init__(
        self,
        target: str,
        *,
        namespace: Optional[str] = None,
        default_ttl_ms: int = core.DEFAULT_TTL_MS,
        codec: Optional[Codec] = None,
        holder: Optional[str] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        channel_options: ChannelOptions = (),
        rpc_timeout: float = 10.0,
        retry_timeout: float = 30.0,
        cancel_on_lease_loss: bool = True,
    ) -> None:
        self._cfg = core.make_config(
            namespace, default_ttl_ms, codec, holder, rpc_timeout, retry_timeout
        )
        self._target = target
        self._credentials = credentials
        self._options = core.channel_options(channel_options)
        self._cancel_on_lease_loss = cancel_on_lease_loss
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._channel: Optional[grpc.aio.Channel] = None
        self._stub: Optional[SentinelServiceAsyncStub] = None
        self._heartbeater: Optional[_Heartbeater] = None
        self._closed = False
        self.reconcile = AsyncReconciler(self)

    @property
    def namespace(self) -> str:
        return self._cfg.namespace

    @property
    def codec(self) -> Codec:
        return self._cfg.codec

    def _bind(self) -> SentinelServiceAsyncStub:
        if self._closed:
            raise RuntimeError("the AsyncSentinel client is closed")
        loop = asyncio.get_running_loop()
        if self._stub is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(
                    self._target, self._credentials, options=self._options
                )
            else:
                channel = grpc.aio.insecure_channel(self._target, options=self._options)
            self._channel = channel
            self._stub = SentinelServiceStub(channel)
            self._heartbeater = _Heartbeater(self._stub)
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                "this AsyncSentinel is bound to the event loop it was first used in; "
                "create one client per event loop"
            )
        return self._stub

    async def close(self) -> None:
        """Stops heartbeating (any running lease is told it is lost) and closes the channel."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeater is not None:
            await self._heartbeater.close()
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncSentinel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def once(
        self,
        key: str,
        fn: Callable[..., Awaitable[Any]],
        *,
        kwargs: Optional[Mapping[str, Any]] = None,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        fingerprint: core.Fingerprint = None,
        retention: Optional[timedelta] = None,
        on_lease_expiry: LeaseExpiry = LeaseExpiry.UNCERTAIN,
    ) -> OnceResult:
        """Awaits `fn(**kwargs)` once for `key` across every worker, or reports how it went.

        Same contract as `Sentinel.once`; `fn` must be a coroutine function. If this call is
        cancelled while `fn` runs, `fn` is cancelled, the outcome is reported as UNCERTAIN, and
        the cancellation propagates.
        """
        if not core.is_coroutine_function(fn):
            raise TypeError(
                "fn must be a coroutine function (async def); use Sentinel for sync code"
            )
        stub = self._bind()
        heartbeater = self._heartbeater
        assert heartbeater is not None
        p = core.plan(
            self._cfg, key, fn, kwargs, ttl_ms, hard_ttl_ms, fingerprint, retention, on_lease_expiry
        )
        resp, sent = await self._rpc(stub.Claim, p.claim, retry=True)
        settled = core.result_from_claim(self._cfg, p, resp)
        if settled is not None:
            return settled
        acq = resp.acquired
        lease = AsyncLease(p.namespace, p.key, acq.token, acq.attempt, self._cancel_on_lease_loss)
        remaining = seconds(acq.ttl_remaining) if acq.HasField("ttl_remaining") else p.ttl_ms / 1000
        tracked = Tracked(
            namespace=p.namespace,
            key=p.key,
            token=acq.token,
            ttl_s=p.ttl_ms / 1000,
            deadline=sent + remaining,
            on_lost=lease._on_lost,
        )
        heartbeater.register(tracked)
        try:
            report = await self._run(fn, p, lease)
            result = await self._complete(stub, p, acq.token, acq.attempt, report)
        finally:
            heartbeater.unregister(tracked.id)
        if report.exception is not None and not isinstance(report.exception, Exception):
            raise report.exception
        return result

    async def _run(
        self, fn: Callable[..., Awaitable[Any]], p: core.Plan, lease: AsyncLease
    ) -> core.Report:
        kw = dict(p.kwargs)
        if p.pass_lease:
            kw["lease"] = lease
        try:
            task = asyncio.ensure_future(fn(**kw))
        except BaseException as e:  # noqa: BLE001 - every way out of fn is reported
            return core.report_exception(e)
        lease._task = task
        try:
            # asyncio.wait, unlike awaiting the task, tells "our caller was cancelled" (raises
            # here) apart from "fn's task was cancelled" (it returns with the task cancelled).
            await asyncio.wait({task})
        except asyncio.CancelledError as outer:
            task.cancel()
            await asyncio.wait({task})
            return core.report_possible(outer, "the caller was cancelled while the function ran")
        if task.cancelled():
            if lease.lost:
                try:
                    lease.raise_if_lost()
                except LeaseLost as e:
                    return core.report_possible(e, f"the function was cancelled: {e}")
            err = asyncio.CancelledError()
            return core.report_possible(err, "the function was cancelled")
        exc = task.exception()
        if exc is not None:
            return core.report_exception(exc)
        return core.report_value(self._cfg, task.result())

    async def _complete(
        self,
        stub: SentinelServiceAsyncStub,
        p: core.Plan,
        token: int,
        attempt: int,
        report: core.Report,
    ) -> OnceResult:
        while True:
            req = core.complete_request(p, token, report)
            try:
                resp, _ = await self._rpc(stub.Complete, req, retry=True)
            except SentinelError as err:
                fallback = core.store_refused(report, err)
                if fallback is not None:
                    report = fallback
                    continue
                return core.result_from_complete_error(p, token, attempt, report, err)
            return core.result_from_complete(p, token, attempt, report, resp)

    async def _rpc(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        retry: bool,
    ) -> Tuple[Resp, float]:
        """Calls `method`; with `retry`, retries UNAVAILABLE and DEADLINE_EXCEEDED with backoff
        for up to retry_timeout. Returns the reply and the monotonic time its request was sent."""
        deadline = time.monotonic() + self._cfg.retry_timeout
        backoff = Backoff(base=0.05, cap=1.0)
        while True:
            sent = time.monotonic()
            try:
                return await method(request, timeout=self._cfg.rpc_timeout), sent
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if retry and err.code in RETRYABLE_CODES:
                    delay = backoff.next_delay()
                    if time.monotonic() + delay < deadline:
                        log.debug("sentinel: retrying after %s", err)
                        await asyncio.sleep(delay)
                        continue
                raise err from e
