"""The original Sentinel snippet, unchanged but for the constructor, against a Sentinel server.

Start a server with `sentinel dev` (it listens on 127.0.0.1:50051), then:

    python examples/stripe_webhook.py [CHARGE_ID]

SENTINEL_ADDR overrides the address. The webhook is delivered twice, as Stripe does on a retry:
the charge runs once, and the second delivery replays the stored response.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any, Dict

from sentinel_client import NothingHappened, Sentinel

sentinel = Sentinel(os.environ.get("SENTINEL_ADDR", "127.0.0.1:50051"), namespace="examples")


def charge_customer(charge_id: str, amount: int) -> Dict[str, Any]:
    """Stands in for the payment provider call; pretend a declined card raised before sending."""
    if amount <= 0:
        raise NothingHappened("invalid amount: nothing was sent to the provider", retryable=False)
    print(f"  charging {charge_id}: {amount} cents (this line prints once per charge)")
    return {"charge_id": charge_id, "amount": amount, "status": "succeeded"}


def handle_webhook(charge_id: str, amount: int) -> Dict[str, Any]:
    result = sentinel.once(
        key=f"stripe-webhook:{charge_id}",
        fn=charge_customer,
        kwargs={"charge_id": charge_id, "amount": amount},
        ttl_ms=5000,
        hard_ttl_ms=30000,
    )
    if result.execution_alive:
        # Another worker is processing this charge: ask Stripe to deliver again later.
        return {"http_status": 409, "detail": "in progress"}
    elif result.uncertain:
        # Failed midway; result.reconcile tells how to resolve it.
        info = result.reconcile
        assert info is not None
        print(f"  uncertain: {result.exception!r}; resolve {info.key!r} with token {info.token}")
        return {"http_status": 500, "detail": "needs reconciliation"}
    elif result.failed:
        return {"http_status": 402, "detail": result.error}
    else:
        # Newly completed or replayed from cache.
        return {"http_status": 200, "cached": result.cached, "body": result.response}


def main() -> int:
    charge_id = sys.argv[1] if len(sys.argv) > 1 else f"ch_{uuid.uuid4().hex[:12]}"
    try:
        for delivery in (1, 2):
            print(f"delivery {delivery}:")
            print(f"  -> {handle_webhook(charge_id, 4200)}")
    finally:
        sentinel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
