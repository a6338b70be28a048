"""`Sentinel`: the blocking client, with its heartbeat thread and reconciler."""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import timedelta
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import grpc

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

log = logging.getLogger("sentinel_client")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
ChannelOptions = Sequence[Tuple[str, Any]]


class Lease:
    """The lease under which a function runs, passed to `fn` if it takes a `lease` parameter.

    Pass `token` to downstream writes so that they can reject a stale worker. `cancelled` is set
    when the lease is lost (the server said LOST, or no ALIVE arrived before the local deadline):
    the work should then stop as soon as it safely can, because another worker or an operator may
    act on the key. The outcome is still reported; the server decides whether it is accepted.
    """

    def __init__(self, namespace: str, key: str, token: int, attempt: int) -> None:
        self.namespace = namespace
        self.key = key
        self.token = token
        self.attempt = attempt
        self.cancelled = threading.Event()
        self.lost_reason: Optional[LostReason] = None
        self.lost_detail = ""

    @property
    def lost(self) -> bool:
        return self.cancelled.is_set()

    def raise_if_lost(self) -> None:
        """Raises LeaseLost if the lease is gone; a convenient check between steps of the work."""
        if self.cancelled.is_set():
            reason = self.lost_reason or LostReason.FENCED
            raise LeaseLost(
                f"lease on {self.key!r} lost: {reason.value} {self.lost_detail}".rstrip(),
                lost_reason=reason.value,
                detail=self.lost_detail,
            )

    def _on_lost(self, reason: LostReason, detail: str) -> None:
        self.lost_reason = reason
        self.lost_detail = detail
        self.cancelled.set()


class _Stream:
    """One incarnation of the Heartbeat call; requests are fed through a queue."""

    def __init__(self, stub: SentinelServiceStub) -> None:
        self._requests: queue.SimpleQueue[Optional[pb.HeartbeatRequest]] = queue.SimpleQueue()
        self.call = stub.Heartbeat(self._iter())
        self.done = False

    def _iter(self) -> Iterator[pb.HeartbeatRequest]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def send(self, req: pb.HeartbeatRequest) -> None:
        self._requests.put(req)

    def end_requests(self) -> None:
        # Unblocks gRPC's request-consuming thread, which would otherwise wait on the queue forever.
        self._requests.put(None)

    def close(self) -> None:
        self.end_requests()
        self.call.cancel()


class _Heartbeater:
    """Keeps every lease of one client alive over one shared bidirectional stream.

    A daemon thread sends each lease's heartbeat every ttl/3, enforces the local deadlines and
    re-opens the stream with backoff when it breaks or stalls; a reader thread per stream applies
    the replies. All state lives in a LeaseTable guarded by one condition variable.
    """

    _IDLE_CLOSE_S = 30.0

    def __init__(self, stub: SentinelServiceStub) -> None:
        self._stub = stub
        self._cond = threading.Condition()
        self._table = LeaseTable()
        self._stream: Optional[_Stream] = None
        self._backoff = Backoff()
        self._reopen_at = 0.0
        self._idle_since = time.monotonic()
        self._thread: Optional[threading.Thread] = None
        self._readers: List[threading.Thread] = []
        self._closed = False
        self.streams_opened = 0
        self.last_error: Optional[BaseException] = None

    @property
    def closed(self) -> bool:
        return self._closed

    def register(self, t: Tracked) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the Sentinel client is closed")
            self._table.add(t, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sentinel-heartbeat", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def unregister(self, lease_id: LeaseId) -> None:
        with self._cond:
            self._table.remove(lease_id)
            if not len(self._table):
                self._idle_since = time.monotonic()

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            notes = self._table.close()
            stream, self._stream = self._stream, None
            self._cond.notify_all()
        _notify(notes)
        if stream is not None:
            stream.close()
        # Wait for the loop and for every reader to see its call end, so that no call of this
        # client is still in flight when the caller closes the channel or the interpreter exits.
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = [self._thread, *self._readers]
        for t in threads:
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        # This loop also enforces the local deadlines, so it must outlive any unexpected error.
        while not self._closed:
            try:
                self._step()
            except Exception:
                log.exception("sentinel heartbeat loop failed; continuing")
                time.sleep(0.1)

    def _step(self) -> None:
        """One round: expire deadlines, manage the stream, send what is due, then wait."""
        to_close: Optional[_Stream] = None
        with self._cond:
            if self._closed:
                return
            now = time.monotonic()
            notes = self._table.expire(now)
            stream = self._stream
            if stream is not None and stream.done:
                self._stream = stream = None
                self._reopen_at = now + self._backoff.next_delay()
            if stream is not None and self._table.stalled(now):
                log.warning("sentinel heartbeat stream stalled; re-opening it")
                to_close, self._stream, stream = stream, None, None
                self._reopen_at = now + self._backoff.next_delay()
            if (
                stream is not None
                and not len(self._table)
                and now - self._idle_since > self._IDLE_CLOSE_S
            ):
                to_close, self._stream, stream = stream, None, None
            if stream is None and len(self._table) and now >= self._reopen_at:
                stream = self._open(now)
            if stream is not None:
                for req in self._table.due(now):
                    stream.send(req)
            wake = self._table.next_wake(now, stream is not None)
            if stream is None and len(self._table):
                wake = min(wake, self._reopen_at)
            if not notes and to_close is None:
                self._cond.wait(max(0.0, wake - now))
        _notify(notes)
        if to_close is not None:
            to_close.close()

    def _open(self, now: float) -> _Stream:
        stream = _Stream(self._stub)
        self._stream = stream
        self.streams_opened += 1
        self._table.on_stream_reset(now)
        self._readers = [t for t in self._readers if t.is_alive()]
        reader = threading.Thread(
            target=self._read, args=(stream,), name="sentinel-heartbeat-reader", daemon=True
        )
        self._readers.append(reader)
        reader.start()
        return stream

    def _read(self, stream: _Stream) -> None:
        error: Optional[BaseException] = None
        try:
            for resp in stream.call:
                with self._cond:
                    self._backoff.reset()
                    note = self._table.on_response(resp)
                if note is not None:
                    _notify([note])
        except grpc.RpcError as e:
            error = e
        except Exception as e:
            error = e
            log.exception("sentinel heartbeat reader failed")
        finally:
            stream.end_requests()
            with self._cond:
                stream.done = True
                if error is not None:
                    self.last_error = error
                self._cond.notify_all()
        if error is not None:
            log.debug("sentinel heartbeat stream ended: %s", error)


def _notify(notes: List[Notification]) -> None:
    for t, reason, detail in notes:
        try:
            t.on_lost(reason, detail)
        except Exception:
            log.exception("sentinel lease-lost callback failed")


class Reconciler:
    """Operations for resolving uncertain executions, in the client's namespace."""

    def __init__(self, client: Sentinel) -> None:
        self._client = client

    def executions(
        self, state: Optional[State] = None, *, page_size: int = 100
    ) -> Iterator[Execution]:
        """Every execution of the namespace (in the given state), page by page."""
        c = self._client
        token = ""
        while True:
            req = pb.ListExecutionsRequest(
                namespace=c.namespace, page_size=page_size, page_token=token
            )
            if state is not None:
                req.state = state_to_pb(State(state))
            resp, _ = c._rpc(c._stub.ListExecutions, req, retry=True)
            for e in resp.executions:
                yield execution_from_pb(e)
            token = resp.next_page_token
            if not token:
                return

    def list_uncertain(self, *, page_size: int = 100) -> List[Execution]:
        """Every UNCERTAIN execution of the namespace: what needs a human or a reconciler."""
        return list(self.executions(State.UNCERTAIN, page_size=page_size))

    def inspect(self, key: str, *, history_limit: int = 50) -> Inspection:
        """The execution of `key` and its recent history; raises NotFound for an unknown key."""
        c = self._client
        req = pb.InspectRequest(namespace=c.namespace, key=key, history_limit=history_limit)
        resp, _ = c._rpc(c._stub.Inspect, req, retry=True)
        return Inspection(
            execution=execution_from_pb(resp.execution),
            history=tuple(history_from_pb(h) for h in resp.history),
        )

    def resolve(
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
        """Resolves `key` by compare-and-set on `token` (e.g. `result.reconcile.token`).

        Exactly one of: `completed=value` (stored through the client's codec and replayed),
        `retry=True` (the next call runs the function again) or `failed="message"`.
        Raises Fenced if the token is not current, NotReconcilable if the state forbids it
        (a live RUNNING execution needs `force=True`, which fences its holder).
        """
        c = self._client
        req = core.reconcile_request(
            c._cfg, key, token, completed, retry, failed, operator, note, force
        )
        # Not retried: a reconcile bumps the token, so a blind retry after an unknown outcome
        # would be reported as FENCED. The caller inspects and decides.
        resp, _ = c._rpc(c._stub.Reconcile, req, retry=False)
        return ReconcileOutcome(state=state_from_pb(resp.state), token=resp.token)


class Sentinel:
    """A blocking Sentinel client. Thread-safe; share one per process and server.

    `target` is "host:port" (plaintext unless `credentials` are given). `namespace` scopes every
    key (default "default"). `default_ttl_ms` is the lease ttl when `once` gets none. `codec`
    turns return values into stored bytes (default: JsonCodec, which refuses lossy values).
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
    ) -> None:
        self._cfg = core.make_config(
            namespace, default_ttl_ms, codec, holder, rpc_timeout, retry_timeout
        )
        options = core.channel_options(channel_options)
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = SentinelServiceStub(self._channel)
        self._heartbeater = _Heartbeater(self._stub)
        self.reconcile = Reconciler(self)

    @property
    def namespace(self) -> str:
        return self._cfg.namespace

    @property
    def codec(self) -> Codec:
        return self._cfg.codec

    def close(self) -> None:
        """Stops heartbeating (any running lease is told it is lost) and closes the channel."""
        self._heartbeater.close()
        self._channel.close()

    def __enter__(self) -> Sentinel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def once(
        self,
        key: str,
        fn: Callable[..., Any],
        *,
        kwargs: Optional[Mapping[str, Any]] = None,
        ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        fingerprint: core.Fingerprint = None,
        retention: Optional[timedelta] = None,
        on_lease_expiry: LeaseExpiry = LeaseExpiry.UNCERTAIN,
    ) -> OnceResult:
        """Runs `fn(**kwargs)` once for `key` across every worker, or reports how it went.

        If `fn` has a `lease` parameter it receives the Lease (fencing token, cancellation).
        Returning a value completes the execution; raising NothingHappened releases it (or, with
        retryable=False, stores a definite failure); any other exception, or a value the codec
        refuses, makes it UNCERTAIN with `result.exception` set. KeyboardInterrupt and other
        BaseExceptions are reported as UNCERTAIN too, then re-raised.
        """
        if core.is_coroutine_function(fn):
            raise TypeError("fn is a coroutine function: use AsyncSentinel for async code")
        if self._heartbeater.closed:
            # Checked before claiming: a lease nobody can keep alive would only expire.
            raise RuntimeError("the Sentinel client is closed")
        p = core.plan(
            self._cfg, key, fn, kwargs, ttl_ms, hard_ttl_ms, fingerprint, retention, on_lease_expiry
        )
        resp, sent = self._rpc(self._stub.Claim, p.claim, retry=True)
        settled = core.result_from_claim(self._cfg, p, resp)
        if settled is not None:
            return settled
        acq = resp.acquired
        lease = Lease(p.namespace, p.key, acq.token, acq.attempt)
        remaining = seconds(acq.ttl_remaining) if acq.HasField("ttl_remaining") else p.ttl_ms / 1000
        tracked = Tracked(
            namespace=p.namespace,
            key=p.key,
            token=acq.token,
            ttl_s=p.ttl_ms / 1000,
            deadline=sent + remaining,
            on_lost=lease._on_lost,
        )
        self._heartbeater.register(tracked)
        try:
            report = self._run(fn, p, lease)
            result = self._complete(p, acq.token, acq.attempt, report)
        finally:
            self._heartbeater.unregister(tracked.id)
        if report.exception is not None and not isinstance(report.exception, Exception):
            raise report.exception
        return result

    def _run(self, fn: Callable[..., Any], p: core.Plan, lease: Lease) -> core.Report:
        kw = dict(p.kwargs)
        if p.pass_lease:
            kw["lease"] = lease
        try:
            value = fn(**kw)
        except BaseException as e:  # noqa: BLE001 - every way out of fn is reported
            return core.report_exception(e)
        if hasattr(value, "__await__"):
            close = getattr(value, "close", None)
            if callable(close):
                close()
            err = TypeError("fn returned an awaitable: use AsyncSentinel for async code")
            return core.report_possible(err, str(err))
        return core.report_value(self._cfg, value)

    def _complete(self, p: core.Plan, token: int, attempt: int, report: core.Report) -> OnceResult:
        while True:
            req = core.complete_request(p, token, report)
            try:
                resp, _ = self._rpc(self._stub.Complete, req, retry=True)
            except SentinelError as err:
                fallback = core.store_refused(report, err)
                if fallback is not None:
                    report = fallback
                    continue
                return core.result_from_complete_error(p, token, attempt, report, err)
            return core.result_from_complete(p, token, attempt, report, resp)

    def _rpc(
        self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req, *, retry: bool
    ) -> Tuple[Resp, float]:
        """Calls `method`; with `retry`, retries UNAVAILABLE and DEADLINE_EXCEEDED with backoff
        for up to retry_timeout. Returns the reply and the monotonic time its request was sent."""
        deadline = time.monotonic() + self._cfg.retry_timeout
        backoff = Backoff(base=0.05, cap=1.0)
        while True:
            sent = time.monotonic()
            try:
                return method(request, timeout=self._cfg.rpc_timeout), sent
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if retry and err.code in RETRYABLE_CODES:
                    delay = backoff.next_delay()
                    if time.monotonic() + delay < deadline:
                        log.debug("sentinel: retrying after %s", err)
                        time.sleep(delay)
                        continue
                raise err from e
