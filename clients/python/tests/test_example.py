"""The stripe_webhook example runs against the server and behaves as its docstring says."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stripe_webhook.py"


def test_stripe_webhook_example_charges_once_and_replays(addr: str) -> None:
    charge_id = f"ch_{uuid.uuid4().hex}"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), charge_id],
        env={**os.environ, "SENTINEL_ADDR": addr},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count(f"charging {charge_id}") == 1, out
    assert "'http_status': 200, 'cached': False" in out, out
    assert "'http_status': 200, 'cached': True" in out, out
