"""Typed errors of the Sentinel client.

The server reports every error as a gRPC status whose `grpc-status-details-bin` trailer holds a
`google.rpc.Status` with a `google.rpc.ErrorInfo{reason, domain: "sentinel.v1"}` (and, for bad
input, a `google.rpc.BadRequest`). Callers branch on the exception class, which is chosen from the
machine-readable reason, never from the message text.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import grpc
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo
from google.rpc.status_pb2 import Status

DOMAIN = "sentinel.v1"
_DETAILS_KEY = "grpc-status-details-bin"


class SentinelError(Exception):
    """Base class of every error raised by the Sentinel client."""

    code: Optional[grpc.StatusCode]
    reason: str
    metadata: Dict[str, str]

    def __init__(
        self,
        message: str,
        *,
        code: Optional[grpc.StatusCode] = None,
        reason: str = "",
        metadata: Optional[Dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})


class Fenced(SentinelError):
    """The token is no longer the execution's current token: someone took over or reconciled."""

    @property
    def current_token(self) -> Optional[int]:
        raw = self.metadata.get("current_token")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    @property
    def state(self) -> Optional[str]:
        return self.metadata.get("state")


class FingerprintMismatch(SentinelError):
    """The key exists with a different fingerprint: the key was reused for another request."""


class AlreadyResolved(SentinelError):
    """A different outcome was already stored under this token."""


class NotReconcilable(SentinelError):
    """The execution's state does not allow this reconcile (e.g. RUNNING without force)."""


class NotFound(SentinelError):
    """No execution exists for the namespace and key."""


class InvalidArgument(SentinelError):
    """The server refused the input; `violations` lists (field, description) pairs."""

    violations: List[Tuple[str, str]]

    def __init__(
        self, message: str, *, violations: Sequence[Tuple[str, str]] = (), **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.violations = list(violations)

    def __str__(self) -> str:
        if not self.violations:
            return self.message
        fields = "; ".join(f"{f}: {d}" for f, d in self.violations)
        return f"{self.message} ({fields})"


class ResourceExhausted(SentinelError):
    """A message or stored response is over the server's configured limit."""


class Unavailable(SentinelError):
    """The server or its database is unavailable, or the outcome of a call is unknown; retryable."""


class DatabaseUnavailable(Unavailable):
    """The server could not reach its database; nothing was written."""


class CommitUnknown(Unavailable):
    """The commit outcome is unknown; a claim is retried with the same claim id."""


class CodecError(SentinelError):
    """A value could not be encoded (or stored bytes decoded) without changing it."""


class LeaseLost(SentinelError):
    """The lease ended before the work finished; `lost_reason` says why (see LostReason)."""

    def __init__(self, message: str, *, lost_reason: str, detail: str = "") -> None:
        super().__init__(message, reason=lost_reason)
        self.lost_reason = lost_reason
        self.detail = detail


class NothingHappened(Exception):
    """Raised by a user function to say that it had no side effects.

    With `retryable=True` (the default) the key is released and the next call runs it again;
    with `retryable=False` the failure is stored as definite (FAILED) and replayed to later callers.
    Any other exception means the work may have partly happened and makes the execution UNCERTAIN.
    """

    def __init__(self, message: str = "nothing happened", *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


_BY_REASON: Dict[str, Type[SentinelError]] = {
    "FENCED": Fenced,
    "FINGERPRINT_MISMATCH": FingerprintMismatch,
    "ALREADY_RESOLVED": AlreadyResolved,
    "NOT_RECONCILABLE": NotReconcilable,
    "DATABASE_UNAVAILABLE": DatabaseUnavailable,
    "COMMIT_UNKNOWN": CommitUnknown,
}

_BY_CODE: Dict[grpc.StatusCode, Type[SentinelError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    # A deadline that passed leaves the outcome unknown, exactly like a dropped connection.
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def from_status(
    code: grpc.StatusCode,
    message: str,
    trailing_metadata: Optional[Sequence[Tuple[str, Any]]],
) -> SentinelError:
    """Builds the typed error for a gRPC status and its trailers."""
    reason = ""
    info: Dict[str, str] = {}
    violations: List[Tuple[str, str]] = []
    for key, value in trailing_metadata or ():
        if key != _DETAILS_KEY or not isinstance(value, (bytes, bytearray)):
            continue
        status = Status()
        try:
            status.ParseFromString(bytes(value))
        except Exception:  # noqa: BLE001 - a malformed trailer must not hide the status itself
            continue
        if status.message:
            message = status.message
        for detail in status.details:
            if detail.Is(ErrorInfo.DESCRIPTOR):
                error_info = ErrorInfo()
                detail.Unpack(error_info)
                if error_info.domain in (DOMAIN, ""):
                    reason = error_info.reason
                    info = dict(error_info.metadata)
            elif detail.Is(BadRequest.DESCRIPTOR):
                bad_request = BadRequest()
                detail.Unpack(bad_request)
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code) or SentinelError
    text = f"{code.name}: {message}" if message else code.name
    if cls is InvalidArgument:
        return InvalidArgument(text, violations=violations, code=code, reason=reason, metadata=info)
    return cls(text, code=code, reason=reason, metadata=info)


def from_rpc_error(error: grpc.RpcError) -> SentinelError:
    """Converts a sync or asyncio gRPC error into the typed error."""
    # grpc.RpcError raised by calls is also a grpc.Call (sync) or an AioRpcError; both expose
    # code(), details() and trailing_metadata(), which the base class does not declare.
    call: Any = error
    code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    details = call.details() if hasattr(call, "details") else str(error)
    trailers = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    err = from_status(code or grpc.StatusCode.UNKNOWN, details or "", trailers)
    err.__cause__ = error
    return err


RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
