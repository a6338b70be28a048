#!/usr/bin/env python3
"""Saves the server's batching and latency counters, to compare before and after a run.

    metrics.py URL OUT.json

Keeps the `_sum` and `_count` series of sentinel_batch_size, sentinel_store_duration_seconds
and sentinel_request_duration_seconds, plus sentinel_requests_total and
sentinel_heartbeat_lost_total, as {"series{labels}": value}.
"""

import json
import re
import sys
import urllib.request

KEEP = re.compile(
    r"^(sentinel_(batch_size|store_duration_seconds|request_duration_seconds)_(sum|count)"
    r"|sentinel_requests_total|sentinel_heartbeat_lost_total)\{"
)


def main():
    url, out = sys.argv[1], sys.argv[2]
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    series = {}
    for line in text.splitlines():
        if KEEP.match(line):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    with open(out, "w") as f:
        json.dump(series, f, indent=0, sort_keys=True)


if __name__ == "__main__":
    main()
