"""The stripe_webhook example runs against the server and behaves as its docstring says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stripe_webhook.py"


def test_stripe_webhook_example_charges_once_and_replays(addr: str) -> None:
    charge_id = f"ch_{uuid.uuid4().hex}"
    # With the fault handler on, SIGABRT makes a stuck example print every thread's stack.
    env = {**os.environ, "SENTINEL_ADDR": addr, "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(
        [sys.executable, str(EXAMPLE), charge_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate()
            raise AssertionError(f"the example did not exit within 60 s\n{out}\n{err}") from None
    assert proc.returncode == 0, err
    assert out.count(f"charging {charge_id}") == 1, out
    assert "'http_status': 200, 'cached': False" in out, out
    assert "'http_status': 200, 'cached': True" in out, out
