"""The parts of `once` that do no I/O, shared by `Sentinel` and `AsyncSentinel`.

The server decides every outcome; this module only turns the caller's arguments into requests and
the server's replies into `OnceResult`s, and maps what the user function did to the outcome that is
reported: a return value is SUCCESS, NothingHappened is FAILURE{NONE}, anything else (including a
value the codec refuses) is FAILURE{POSSIBLE}, so the execution becomes UNCERTAIN and never stays
RUNNING or pretends to have succeeded.
"""

from __future__ import annotations

import inspect
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ._gen.sentinel.v1 import sentinel_pb2 as pb
from .codec import Codec, JsonCodec
from .errors import (
    CodecError,
    Fenced,
    InvalidArgument,
    NothingHappened,
    ResourceExhausted,
    SentinelError,
)
from .model import (
    LeaseExpiry,
    OnceResult,
    ReconcileInfo,
    State,
    Status,
    UncertainReason,
    duration_ms,
    duration_td,
    expiry_to_pb,
    state_from_pb,
    uncertain_reason_from_pb,
)

DEFAULT_NAMESPACE = "default"
DEFAULT_TTL_MS = 30_000
# The server's default limits: failure messages are cut to fit rather than rejected, because a
# rejected Complete would leave the execution RUNNING until its lease expires.
MAX_MESSAGE_BYTES = 4096
MAX_HOLDER_BYTES = 256
# gRPC's default reconnect backoff grows to 120 s, far longer than a lease: after a server
# restart the heartbeat stream must come back within a fraction of the lease ttl. Keepalive pings
# detect a connection that went silent (all streams share it, so re-opening the heartbeat stream
# alone cannot escape it); the local lease deadlines protect correctness in the meantime.
DEFAULT_CHANNEL_OPTIONS: Tuple[Tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Bounds every ping, not only keepalives: otherwise an unanswered flow-control ping sent
    # just before the stall keeps keepalive from running for the default 60 s.
    ("grpc.http2.ping_timeout_ms", 10_000),
)

Fingerprint = Union[bytes, str, None]


def channel_options(user: Sequence[Tuple[str, Any]]) -> List[Tuple[str, Any]]:
    """The defaults above, overridden by any option the user sets."""
    names = {name for name, _ in user}
    return [o for o in DEFAULT_CHANNEL_OPTIONS if o[0] not in names] + list(user)


def default_holder() -> str:
    return truncate_utf8(f"{socket.gethostname()}/pid-{os.getpid()}", MAX_HOLDER_BYTES)


def truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", errors="ignore") + "..."


def wants_lease(fn: Callable[..., Any]) -> bool:
    """Whether `fn` takes a `lease` parameter by keyword, which `once` then fills in."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("lease")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def is_coroutine_function(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


@dataclass(frozen=True)
class Config:
    namespace: str
    default_ttl_ms: int
    codec: Codec
    holder: str
    rpc_timeout: float
    retry_timeout: float


def make_config(
    namespace: Optional[str],
    default_ttl_ms: int,
    codec: Optional[Codec],
    holder: Optional[str],
    rpc_timeout: float,
    retry_timeout: float,
) -> Config:
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError("namespace must be a non-empty string (or None for the default)")
    _check_ms("default_ttl_ms", default_ttl_ms)
    if rpc_timeout <= 0 or retry_timeout < 0:
        raise ValueError("rpc_timeout must be positive and retry_timeout not negative")
    return Config(
        namespace=namespace if namespace is not None else DEFAULT_NAMESPACE,
        default_ttl_ms=default_ttl_ms,
        codec=codec if codec is not None else JsonCodec(),
        holder=truncate_utf8(holder, MAX_HOLDER_BYTES) if holder else default_holder(),
        rpc_timeout=rpc_timeout,
        retry_timeout=retry_timeout,
    )


def _check_ms(name: str, value: Any) -> None:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{name} must be a positive int of milliseconds, got {value!r}")


def _check_binds(fn: Callable[..., Any], kw: Dict[str, Any], pass_lease: bool) -> None:
    # Checked before claiming: a call that cannot even start must not leave an execution behind.
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**kw, **({"lease": None} if pass_lease else {}))
    except TypeError as e:
        raise TypeError(f"fn cannot be called with kwargs {sorted(kw)}: {e}") from None


@dataclass(frozen=True)
class Plan:
    """One call to `once`, validated: what to claim and how to call the function."""

    namespace: str
    key: str
    ttl_ms: int
    fingerprint: bytes
    kwargs: Dict[str, Any]
    pass_lease: bool
    claim: pb.ClaimRequest


def plan(
    cfg: Config,
    key: str,
    fn: Callable[..., Any],
    kwargs: Optional[Mapping[str, Any]],
    ttl_ms: Optional[int],
    hard_ttl_ms: Optional[int],
    fingerprint: Fingerprint,
    retention: Optional[timedelta],
    on_lease_expiry: LeaseExpiry,
) -> Plan:
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    if not callable(fn):
        raise TypeError("fn must be callable")
    ttl = cfg.default_ttl_ms if ttl_ms is None else ttl_ms
    _check_ms("ttl_ms", ttl)
    if hard_ttl_ms is not None:
        _check_ms("hard_ttl_ms", hard_ttl_ms)
    if retention is not None and not isinstance(retention, timedelta):
        raise TypeError("retention must be a datetime.timedelta")
    if isinstance(fingerprint, str):
        fp = fingerprint.encode("utf-8")
    elif fingerprint is None:
        fp = b""
    elif isinstance(fingerprint, bytes):
        fp = fingerprint
    else:
        raise TypeError("fingerprint must be bytes, str or None")
    kw = dict(kwargs or {})
    pass_lease = wants_lease(fn)
    if pass_lease and "lease" in kw:
        raise ValueError("kwargs must not contain 'lease': once passes the lease to fn itself")
    _check_binds(fn, kw, pass_lease)
    claim = pb.ClaimRequest(
        namespace=cfg.namespace,
        key=key,
        lease_ttl=duration_ms(ttl),
        fingerprint=fp,
        holder=cfg.holder,
        claim_id=uuid.uuid4().hex,
        on_lease_expiry=expiry_to_pb(on_lease_expiry),
    )
    if hard_ttl_ms is not None:
        claim.hard_ttl.CopyFrom(duration_ms(hard_ttl_ms))
    if retention is not None:
        claim.retention.CopyFrom(duration_td(retention))
    return Plan(cfg.namespace, key, ttl, fp, kw, pass_lease, claim)


def result_from_claim(cfg: Config, p: Plan, resp: pb.ClaimResponse) -> Optional[OnceResult]:
    """The result for every claim outcome except ACQUIRED (None: the caller must run fn)."""
    which = resp.WhichOneof("outcome")
    if which == "acquired":
        return None
    if which == "in_progress":
        ip = resp.in_progress
        # Callers arriving while another worker runs get "alive", never "done with no response".
        return OnceResult(status=Status.IN_PROGRESS, holder=ip.holder, attempt=ip.attempt)
    if which == "completed":
        c = resp.completed
        return OnceResult(
            status=Status.COMPLETED,
            response=cfg.codec.decode(bytes(c.response)),
            cached=True,
            token=c.token,
        )
    if which == "failed":
        f = resp.failed
        return OnceResult(status=Status.FAILED, cached=True, error=f.error, token=f.token)
    if which == "uncertain":
        u = resp.uncertain
        info = ReconcileInfo(
            namespace=p.namespace,
            key=p.key,
            token=u.token,
            reason=uncertain_reason_from_pb(u.reason),
            holder=u.holder,
            attempt=u.attempt,
            error=u.error,
        )
        return OnceResult(
            status=Status.UNCERTAIN,
            cached=True,
            reconcile=info,
            error=u.error,
            token=u.token,
            attempt=u.attempt,
            holder=u.holder,
        )
    raise SentinelError(f"the server sent a claim response with no known outcome ({which})")


@dataclass
class Report:
    """What is sent to Complete for what the function did, and what the caller is told."""

    outcome: Union[pb.CompleteSuccess, pb.CompleteFailure]
    exception: Optional[BaseException]
    response: Any = None


def report_value(cfg: Config, value: Any) -> Report:
    try:
        data = cfg.codec.encode(value)
        # Decoding what was stored makes the first caller see exactly what every replay will see.
        return Report(pb.CompleteSuccess(response=data), None, cfg.codec.decode(data))
    except CodecError as e:
        return report_possible(e, f"the return value could not be stored: {e}")


def report_exception(exc: BaseException) -> Report:
    if isinstance(exc, NothingHappened):
        return Report(
            pb.CompleteFailure(
                message=truncate_utf8(exc.message or "nothing happened", MAX_MESSAGE_BYTES),
                retryable=exc.retryable,
                side_effects=pb.SIDE_EFFECTS_NONE,
            ),
            exc,
        )
    return report_possible(exc, f"{type(exc).__name__}: {exc}")


def report_possible(exc: BaseException, message: str) -> Report:
    return Report(
        pb.CompleteFailure(
            message=truncate_utf8(message, MAX_MESSAGE_BYTES),
            retryable=False,
            side_effects=pb.SIDE_EFFECTS_POSSIBLE,
        ),
        exc,
    )


def complete_request(p: Plan, token: int, report: Report) -> pb.CompleteRequest:
    req = pb.CompleteRequest(
        namespace=p.namespace, key=p.key, token=token, fingerprint=p.fingerprint
    )
    if isinstance(report.outcome, pb.CompleteSuccess):
        req.success.CopyFrom(report.outcome)
    else:
        req.failure.CopyFrom(report.outcome)
    return req


def store_refused(report: Report, err: SentinelError) -> Optional[Report]:
    """When the server refuses to store a response (too large, invalid), report it as POSSIBLE.

    Returns None when the refusal is not about the response (fencing, a resolved token...).
    """
    if isinstance(report.outcome, pb.CompleteSuccess) and isinstance(
        err, (ResourceExhausted, InvalidArgument)
    ):
        return report_possible(err, f"the return value could not be stored: {err}")
    return None


def result_from_complete(
    p: Plan, token: int, attempt: int, report: Report, resp: pb.CompleteResponse
) -> OnceResult:
    state = state_from_pb(resp.state)
    common: Dict[str, Any] = {"token": resp.token or token, "attempt": attempt, "late": resp.late}
    if state is State.COMPLETED:
        return OnceResult(status=Status.COMPLETED, response=report.response, **common)
    failure = report.outcome if isinstance(report.outcome, pb.CompleteFailure) else None
    message = failure.message if failure is not None else ""
    if state is State.FAILED:
        return OnceResult(status=Status.FAILED, exception=report.exception, error=message, **common)
    if state is State.RELEASED:
        return OnceResult(
            status=Status.RELEASED, exception=report.exception, error=message, **common
        )
    reason = UncertainReason.REPORTED if state is State.UNCERTAIN else UncertainReason.UNSPECIFIED
    return uncertain(p, common["token"], attempt, report.exception, message, reason)


def result_from_complete_error(
    p: Plan, token: int, attempt: int, report: Report, err: SentinelError
) -> OnceResult:
    """Complete was refused or its outcome is unknown: the outcome of this call is uncertain."""
    current = token
    if isinstance(err, Fenced) and err.current_token is not None:
        current = err.current_token
    exc = report.exception if report.exception is not None else err
    return uncertain(p, current, attempt, exc, str(err), UncertainReason.UNSPECIFIED)


def uncertain(
    p: Plan,
    token: int,
    attempt: int,
    exc: Optional[BaseException],
    message: str,
    reason: UncertainReason,
) -> OnceResult:
    holder = p.claim.holder
    info = ReconcileInfo(
        namespace=p.namespace,
        key=p.key,
        token=token,
        reason=reason,
        holder=holder,
        attempt=attempt,
        error=message,
    )
    return OnceResult(
        status=Status.UNCERTAIN,
        exception=exc,
        reconcile=info,
        error=message,
        token=token,
        attempt=attempt,
        holder=holder,
    )


def reconcile_request(
    cfg: Config,
    key: str,
    token: int,
    completed: Any,
    retry: bool,
    failed: Optional[str],
    operator: Optional[str],
    note: str,
    force: bool,
) -> pb.ReconcileRequest:
    chosen = sum([completed is not UNSET, bool(retry), failed is not None])
    if chosen != 1:
        raise ValueError("resolve needs exactly one of completed=..., retry=True or failed=...")
    if type(token) is not int or token <= 0:
        raise ValueError(f"token must be a positive int, got {token!r}")
    req = pb.ReconcileRequest(
        namespace=cfg.namespace,
        key=key,
        expected_token=token,
        operator=operator or cfg.holder,
        note=note,
        force=force,
    )
    if completed is not UNSET:
        req.mark_completed.response = cfg.codec.encode(completed)
    elif retry:
        req.retry.SetInParent()
    else:
        req.mark_failed.message = str(failed)
    return req


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
