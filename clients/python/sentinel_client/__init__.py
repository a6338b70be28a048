"""Sentinel client: run any keyed operation once, with leases, fencing and replayed outcomes.

from sentinel_client import Sentinel

sentinel = Sentinel("127.0.0.1:50051", namespace="payments")
result = sentinel.once(key=f"stripe-webhook:{charge_id}", fn=charge_customer,
                       kwargs={"charge_id": charge_id, "amount": amount},
                       ttl_ms=5000, hard_ttl_ms=30000)
if result.execution_alive: ...   # another worker is processing this charge
elif result.uncertain: ...       # failed midway; result.reconcile tells how to resolve it
else: return result.response     # newly completed or replayed from cache
"""

from ._aio import AsyncLease, AsyncReconciler, AsyncSentinel
from ._sync import Lease, Reconciler, Sentinel
from .codec import BytesCodec, Codec, JsonCodec
from .errors import (
    AlreadyResolved,
    CodecError,
    CommitUnknown,
    DatabaseUnavailable,
    Fenced,
    FingerprintMismatch,
    InvalidArgument,
    LeaseLost,
    NotFound,
    NothingHappened,
    NotReconcilable,
    ResourceExhausted,
    SentinelError,
    Unavailable,
)
from .model import (
    Execution,
    HistoryEvent,
    Inspection,
    LeaseExpiry,
    LostReason,
    OnceResult,
    ReconcileInfo,
    ReconcileOutcome,
    State,
    Status,
    UncertainReason,
)

__all__ = [
    "AlreadyResolved",
    "AsyncLease",
    "AsyncReconciler",
    "AsyncSentinel",
    "BytesCodec",
    "Codec",
    "CodecError",
    "CommitUnknown",
    "DatabaseUnavailable",
    "Execution",
    "Fenced",
    "FingerprintMismatch",
    "HistoryEvent",
    "Inspection",
    "InvalidArgument",
    "JsonCodec",
    "Lease",
    "LeaseExpiry",
    "LeaseLost",
    "LostReason",
    "NotFound",
    "NotReconcilable",
    "NothingHappened",
    "OnceResult",
    "ReconcileInfo",
    "ReconcileOutcome",
    "Reconciler",
    "ResourceExhausted",
    "Sentinel",
    "SentinelError",
    "State",
    "Status",
    "UncertainReason",
    "Unavailable",
]
