"""Domain types of the client: what `once` and the reconciler return, free of protobuf."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional, Tuple

from google.protobuf import duration_pb2, timestamp_pb2

from ._gen.sentinel.v1 import sentinel_pb2 as pb


class Status(str, enum.Enum):
    """Which outcome a call to `once` had."""

    COMPLETED = "completed"
    """The function succeeded, now or earlier; `response` holds its value."""
    IN_PROGRESS = "in_progress"
    """Another worker holds a live lease (`execution_alive`); nothing ran here."""
    FAILED = "failed"
    """A definite failure is stored (NothingHappened(retryable=False) or a reconciler's verdict)."""
    UNCERTAIN = "uncertain"
    """The work may have partly happened; `reconcile` tells how to resolve it."""
    RELEASED = "released"
    """The function raised NothingHappened: the key is free and the next call runs it again."""


class State(str, enum.Enum):
    """The state of an execution as the server reports it."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    RELEASED = "released"


class UncertainReason(str, enum.Enum):
    """Why an execution is UNCERTAIN."""

    UNSPECIFIED = "unspecified"
    LEASE_EXPIRED = "lease_expired"
    HARD_DEADLINE = "hard_deadline"
    REPORTED = "reported"


class LostReason(str, enum.Enum):
    """Why a lease ended before the work finished."""

    FENCED = "fenced"
    LEASE_EXPIRED = "lease_expired"
    HARD_DEADLINE = "hard_deadline"
    RESOLVED = "resolved"
    NOT_FOUND = "not_found"
    LOCAL_DEADLINE = "local_deadline"
    """No ALIVE arrived before the lease's local monotonic deadline (server or network stalled)."""
    CLIENT_CLOSED = "client_closed"


class LeaseExpiry(str, enum.Enum):
    """What a claim does with an execution whose holder's lease expired."""

    UNCERTAIN = "uncertain"
    """Report it as UNCERTAIN and never re-run it silently (the default)."""
    RETRY = "retry"
    """Take it over with a new token; the old holder is fenced."""


@dataclass(frozen=True)
class ReconcileInfo:
    """Everything needed to resolve an uncertain execution.

    Resolve it with `sentinel.reconcile.resolve(info.key, info.token, completed=value)`, or
    `retry=True` to let the next call run it again, or `failed="message"`.
    """

    namespace: str
    key: str
    token: int
    reason: UncertainReason
    holder: str = ""
    attempt: int = 0
    error: str = ""


@dataclass(frozen=True)
class OnceResult:
    """The outcome of `once`. Exactly one of success, execution_alive, uncertain or a failure."""

    status: Status
    response: Any = None
    """The decoded response when COMPLETED (the same value every caller gets), else None."""
    cached: bool = False
    """True when the outcome was replayed from the store rather than produced by this call."""
    exception: Optional[BaseException] = None
    """What the function raised, or why its outcome could not be stored (CodecError, Fenced...)."""
    reconcile: Optional[ReconcileInfo] = None
    """Set when `uncertain`: the key, current token and reason a reconciler needs."""
    error: str = ""
    """The stored failure message for FAILED and UNCERTAIN executions."""
    token: Optional[int] = None
    """The fencing token of the execution this outcome belongs to, when known."""
    attempt: Optional[int] = None
    holder: str = ""
    """For IN_PROGRESS: the worker that holds the lease."""
    late: bool = False
    """The lease had expired but the outcome was still accepted (nobody had taken over)."""

    @property
    def success(self) -> bool:
        return self.status is Status.COMPLETED

    @property
    def execution_alive(self) -> bool:
        return self.status is Status.IN_PROGRESS

    @property
    def uncertain(self) -> bool:
        return self.status is Status.UNCERTAIN

    @property
    def failed(self) -> bool:
        return self.status is Status.FAILED

    @property
    def released(self) -> bool:
        return self.status is Status.RELEASED


@dataclass(frozen=True)
class HistoryEvent:
    """One transition of an execution."""

    at: Optional[datetime]
    token: int
    from_state: Optional[State]
    to_state: Optional[State]
    reason: str
    actor: str
    note: str


@dataclass(frozen=True)
class Execution:
    """The record of one (namespace, key). `response` holds the stored bytes, undecoded."""

    namespace: str
    key: str
    state: Optional[State]
    token: int
    attempt: int
    holder: str
    fingerprint: bytes
    uncertain_reason: Optional[UncertainReason]
    response: bytes
    error: str
    lease_expires_at: Optional[datetime]
    hard_deadline_at: Optional[datetime]
    created_at: Optional[datetime]
    updated_at: Optional[datetime]
    retention_until: Optional[datetime]


@dataclass(frozen=True)
class Inspection:
    """One execution and its recent history, newest first."""

    execution: Execution
    history: Tuple[HistoryEvent, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ReconcileOutcome:
    """The state a reconcile reached and the new current token."""

    state: Optional[State]
    token: int


# --- conversions from protobuf ------------------------------------------------------------------

_STATE = {
    pb.EXECUTION_STATE_RUNNING: State.RUNNING,
    pb.EXECUTION_STATE_COMPLETED: State.COMPLETED,
    pb.EXECUTION_STATE_FAILED: State.FAILED,
    pb.EXECUTION_STATE_UNCERTAIN: State.UNCERTAIN,
    pb.EXECUTION_STATE_RELEASED: State.RELEASED,
}
_STATE_TO_PB = {v: k for k, v in _STATE.items()}

_UNCERTAIN = {
    pb.UNCERTAIN_REASON_LEASE_EXPIRED: UncertainReason.LEASE_EXPIRED,
    pb.UNCERTAIN_REASON_HARD_DEADLINE: UncertainReason.HARD_DEADLINE,
    pb.UNCERTAIN_REASON_REPORTED: UncertainReason.REPORTED,
}

_LOST = {
    pb.LOST_REASON_FENCED: LostReason.FENCED,
    pb.LOST_REASON_LEASE_EXPIRED: LostReason.LEASE_EXPIRED,
    pb.LOST_REASON_HARD_DEADLINE: LostReason.HARD_DEADLINE,
    pb.LOST_REASON_RESOLVED: LostReason.RESOLVED,
    pb.LOST_REASON_NOT_FOUND: LostReason.NOT_FOUND,
}

_EXPIRY_TO_PB = {
    LeaseExpiry.UNCERTAIN: pb.LEASE_EXPIRY_POLICY_UNCERTAIN,
    LeaseExpiry.RETRY: pb.LEASE_EXPIRY_POLICY_RETRY,
}


def state_from_pb(value: pb.ExecutionState.ValueType) -> Optional[State]:
    return _STATE.get(value)


def state_to_pb(value: State) -> pb.ExecutionState.ValueType:
    return _STATE_TO_PB[value]


def uncertain_reason_from_pb(value: pb.UncertainReason.ValueType) -> UncertainReason:
    return _UNCERTAIN.get(value, UncertainReason.UNSPECIFIED)


def lost_reason_from_pb(value: pb.LostReason.ValueType) -> LostReason:
    # An unknown reason from a newer server still means the lease is gone; FENCED is safest.
    return _LOST.get(value, LostReason.FENCED)


def expiry_to_pb(value: LeaseExpiry) -> pb.LeaseExpiryPolicy.ValueType:
    return _EXPIRY_TO_PB[LeaseExpiry(value)]


def ts(value: timestamp_pb2.Timestamp, present: bool) -> Optional[datetime]:
    if not present:
        return None
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
        seconds=value.seconds, microseconds=value.nanos // 1000
    )


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def duration_ms(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def duration_td(td: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(td)
    return d


def execution_from_pb(e: pb.Execution) -> Execution:
    return Execution(
        namespace=e.namespace,
        key=e.key,
        state=state_from_pb(e.state),
        token=e.token,
        attempt=e.attempt,
        holder=e.holder,
        fingerprint=bytes(e.fingerprint),
        uncertain_reason=uncertain_reason_from_pb(e.uncertain_reason)
        if e.uncertain_reason
        else None,
        response=bytes(e.response),
        error=e.error,
        lease_expires_at=ts(e.lease_expires_at, e.HasField("lease_expires_at")),
        hard_deadline_at=ts(e.hard_deadline_at, e.HasField("hard_deadline_at")),
        created_at=ts(e.created_at, e.HasField("created_at")),
        updated_at=ts(e.updated_at, e.HasField("updated_at")),
        retention_until=ts(e.retention_until, e.HasField("retention_until")),
    )


def history_from_pb(h: pb.HistoryEvent) -> HistoryEvent:
    return HistoryEvent(
        at=ts(h.at, h.HasField("at")),
        token=h.token,
        from_state=state_from_pb(h.from_state),
        to_state=state_from_pb(h.to_state),
        reason=h.reason,
        actor=h.actor,
        note=h.note,
    )
