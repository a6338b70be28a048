"""Bookkeeping of the leases one client keeps alive, shared by the sync and asyncio heartbeaters.

Each lease has a local deadline on the monotonic clock: the send time of the heartbeat (or claim)
whose reply said ALIVE, plus the `ttl_remaining` of that reply. Taking the *send* time makes the
deadline err on the early side whatever the network delay, and no wall clock is involved, so a
clock jump on this machine cannot keep a worker running on a lease the server already ended.
When the deadline passes without a newer ALIVE, or the server says LOST, the lease is lost for
good: the worker is told through its lease object, and only the server's verdict at Complete
decides what the outcome becomes.

The table itself does no I/O and takes no lock; the heartbeaters serialize access to it.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Tuple

from ._gen.sentinel.v1 import sentinel_pb2 as pb
from .model import LostReason, lost_reason_from_pb, seconds

LeaseId = Tuple[str, str, int]

# A heartbeat unanswered for this fraction of the lease ttl means the stream stalled: it is
# re-opened while the lease still has time left, instead of waiting silently for the deadline.
_STALL_FRACTION = 0.5
_MIN_STALL_S = 0.25


@dataclass
class Tracked:
    """One lease as the heartbeater sees it."""

    namespace: str
    key: str
    token: int
    ttl_s: float
    deadline: float
    on_lost: Callable[[LostReason, str], None]
    next_due: float = 0.0
    pending: Deque[float] = field(default_factory=deque)
    lost: Optional[LostReason] = None

    @property
    def id(self) -> LeaseId:
        return (self.namespace, self.key, self.token)

    @property
    def interval(self) -> float:
        return self.ttl_s / 3

    def request(self) -> pb.HeartbeatRequest:
        return pb.HeartbeatRequest(namespace=self.namespace, key=self.key, token=self.token)


Notification = Tuple[Tracked, LostReason, str]


class LeaseTable:
    """The leases of one client, their schedules and local deadlines."""

    def __init__(self) -> None:
        self.leases: Dict[LeaseId, Tracked] = {}

    def add(self, t: Tracked, now: float) -> None:
        t.next_due = now + t.interval
        self.leases[t.id] = t

    def remove(self, lease_id: LeaseId) -> None:
        self.leases.pop(lease_id, None)

    def __len__(self) -> int:
        return len(self.leases)

    def due(self, now: float) -> List[pb.HeartbeatRequest]:
        """The heartbeats to send now; marks them pending and schedules the next ones."""
        out = []
        for t in self.leases.values():
            # A lease the server declared lost is final; one that only passed its local
            # deadline keeps heartbeating, so that a late ALIVE still lets it complete on time.
            if t.lost is not None and t.lost is not LostReason.LOCAL_DEADLINE:
                continue
            if now >= t.next_due:
                out.append(t.request())
                t.pending.append(now)
                t.next_due = now + t.interval
        return out

    def expire(self, now: float) -> List[Notification]:
        """Leases whose local deadline passed without an ALIVE."""
        out = []
        for t in self.leases.values():
            if t.lost is None and now >= t.deadline:
                t.lost = LostReason.LOCAL_DEADLINE
                out.append((t, t.lost, "no ALIVE before the lease's local deadline"))
        return out

    def stalled(self, now: float) -> bool:
        """Whether some heartbeat has waited for its reply longer than the stream should take."""
        for t in self.leases.values():
            if t.pending and now - t.pending[0] > max(_MIN_STALL_S, t.ttl_s * _STALL_FRACTION):
                return True
        return False

    def on_stream_reset(self, now: float) -> None:
        """A new stream: replies to old heartbeats will never come; heartbeat everything now."""
        for t in self.leases.values():
            t.pending.clear()
            t.next_due = now

    def on_response(self, resp: pb.HeartbeatResponse) -> Optional[Notification]:
        t = self.leases.get((resp.namespace, resp.key, resp.token))
        if t is None:
            return None  # a lease already finished; nothing is waiting for this reply
        which = resp.WhichOneof("result")
        sent = t.pending.popleft() if t.pending else None
        if which == "alive":
            if sent is not None and t.lost is None:
                t.deadline = max(t.deadline, sent + seconds(resp.alive.ttl_remaining))
            return None
        if which == "lost":
            if t.lost is not None and t.lost is not LostReason.LOCAL_DEADLINE:
                return None
            # After a local-deadline loss this still reports, so the worker learns the real reason.
            t.lost = lost_reason_from_pb(resp.lost.reason)
            t.pending.clear()
            return (t, t.lost, resp.lost.detail)
        return None

    def next_wake(self, now: float, stream_up: bool) -> float:
        """The earliest time something must happen: a heartbeat, a deadline or a stall check."""
        wake = now + 1.0
        for t in self.leases.values():
            if t.lost is None:
                wake = min(wake, t.deadline)
            if stream_up and (t.lost is None or t.lost is LostReason.LOCAL_DEADLINE):
                wake = min(wake, t.next_due)
                if t.pending:
                    wake = min(wake, t.pending[0] + max(_MIN_STALL_S, t.ttl_s * _STALL_FRACTION))
        return wake

    def close(self) -> List[Notification]:
        out = []
        for t in self.leases.values():
            if t.lost is None:
                t.lost = LostReason.CLIENT_CLOSED
                out.append((t, t.lost, "the client was closed"))
        self.leases.clear()
        return out


class Backoff:
    """Exponential backoff with full jitter for re-opening the heartbeat stream."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2**self.failures))
        self.failures += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.failures = 0
