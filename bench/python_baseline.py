#!/usr/bin/env python3
"""The original Python library, sentinel-coordination 0.5.0 from PyPI, under the same load.

It is a library on PostgreSQL (psycopg 3), not a service: `Sentinel.once(key, fn)` runs, on
the caller's connection, an INSERT .. ON CONFLICT claim, a validate-and-extend UPDATE, a
start-execution UPDATE and a complete UPDATE, each with a history INSERT and its own commit,
and registers the lease with a process-wide heartbeat thread. A replay is the claim attempt
(a failed upsert, a SELECT and a 'rejected' history INSERT, one commit) plus a SELECT of the
cached result.

Scenarios, matching `sentinel-loadgen`:
  fresh   once() on new keys; the work returns 16 bytes of text. One op = one once() call.
  replay  once() on keys completed beforehand; every call must be a cached replay.

Each thread reuses one connection (get_conn returns the thread's own connection and the
Sentinel is built with owns_connection=False, so once() does not close it). Prints the same
JSON fields as the load generator with --json.
"""

import argparse
import json
import random
import sys
import threading
import time

import psycopg
from sentinel import Sentinel, init_db

RESPONSE = "r" * 16


def percentiles(latencies_ms):
    if not latencies_ms:
        return None
    s = sorted(latencies_ms)

    def at(q):
        return round(s[min(len(s) - 1, int(q * len(s)))], 3)

    return {
        "count": len(s),
        "mean": round(sum(s) / len(s), 3),
        "p50": at(0.50),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": round(s[-1], 3),
    }


def work():
    return RESPONSE


class Worker(threading.Thread):
    def __init__(self, index, sentinel, keys, window_start, window_end, scenario, replay_keys):
        super().__init__(daemon=True)
        self.index = index
        self.sentinel = sentinel
        self.keys = keys
        self.window_start = window_start
        self.window_end = window_end
        self.scenario = scenario
        self.replay_keys = replay_keys
        self.latencies = []
        self.errors = {}
        self.first_error = None

    def error(self, kind, message):
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.first_error is None:
            self.first_error = message

    def run(self):
        rng = random.Random()
        seq = 0
        while time.monotonic() < self.window_end:
            if self.scenario == "fresh":
                key = f"f-{self.index}-{seq}"
                seq += 1
            else:
                key = f"r-{rng.randrange(self.replay_keys)}"
            t0 = time.monotonic()
            try:
                result = self.sentinel.once(key, work, ttl_ms=10_000, hard_ttl_ms=3_600_000)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                self.error(type(e).__name__, f"{key}: {e!r}")
                time.sleep(0.02)
                continue
            done = time.monotonic()
            expected_cached = self.scenario == "replay"
            if not result.success or result.status != "completed" or result.cached != expected_cached:
                self.error(
                    "unexpected_outcome",
                    f"{key}: success={result.success} status={result.status} cached={result.cached}",
                )
                continue
            if self.window_start <= done < self.window_end:
                self.latencies.append((done - t0) * 1000.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["fresh", "replay"])
    p.add_argument("--dsn", required=True, help="PostgreSQL URL")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before the window")
    p.add_argument("--keys", type=int, default=2000, help="replay: completed keys to replay")
    p.add_argument("--namespace", default=f"py{random.getrandbits(32):08x}")
    p.add_argument("--json", action="store_true", help="print one JSON line on stdout")
    args = p.parse_args()

    with psycopg.connect(args.dsn) as conn:
        init_db(conn)

    local = threading.local()

    def get_conn():
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(args.dsn)
            local.conn = conn
        return conn

    sentinel = Sentinel(get_conn=get_conn, default_ttl_ms=10_000, namespace=args.namespace, owns_connection=False)

    populate_s = None
    if args.scenario == "replay":
        started = time.monotonic()
        errors = []

        def populate(part):
            for k in range(part, args.keys, args.threads):
                r = sentinel.once(f"r-{k}", work, ttl_ms=10_000, hard_ttl_ms=3_600_000)
                if not r.success or r.cached:
                    errors.append(f"r-{k}: success={r.success} status={r.status} cached={r.cached}")

        threads = [threading.Thread(target=populate, args=(i,)) for i in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            sys.exit(f"completing the keys to replay failed {len(errors)} times; first: {errors[0]}")
        populate_s = round(time.monotonic() - started, 2)

    window_start = time.monotonic() + args.warmup
    window_end = window_start + args.duration
    workers = [
        Worker(i, sentinel, args.keys, window_start, window_end, args.scenario, args.keys) for i in range(args.threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    latencies = [x for w in workers for x in w.latencies]
    errors = {}
    first_error = None
    for w in workers:
        for k, v in w.errors.items():
            errors[k] = errors.get(k, 0) + v
        first_error = first_error or w.first_error
    ops = len(latencies)
    report = {
        "scenario": args.scenario,
        "driver": "python sentinel-coordination 0.5.0",
        "namespace": args.namespace,
        "concurrency": args.threads,
        "connections": args.threads,
        "duration_s": args.duration,
        "ops": ops,
        "ops_per_s": ops / args.duration,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "latency_ms": percentiles(latencies),
        "violations": [],
    }
    if first_error:
        report["first_error"] = first_error
    if populate_s is not None:
        report["keys"] = args.keys
        report["populate_s"] = populate_s
    lat = report["latency_ms"] or {}
    print(
        f"python {args.scenario}: {ops} ops in {args.duration:.1f} s = {report['ops_per_s']:.0f} ops/s, "
        f"p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, {report['errors']} errors",
        file=sys.stderr,
    )
    if first_error:
        print(f"first error: {first_error}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    sys.exit(0 if report["errors"] == 0 else 1)


if __name__ == "__main__":
    main()
