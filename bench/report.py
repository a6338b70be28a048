#!/usr/bin/env python3
"""Turns a results directory of bench/run.sh into the comparison table.

    report.py RESULTS [--docs docs/benchmarks.md]   table, ratios, targets (and the docs)
    report.py --one RESULTS NAME                     one line about one measurement

With --docs, the text between the "generated results" markers of the file is replaced (the
rest of the file, the hand-written method and analysis, is kept).
"""

import argparse
import glob
import json
import os
import re
import sys

BEGIN = "<!-- generated results: begin (bench/run.sh writes this part; do not edit by hand) -->"
END = "<!-- generated results: end -->"


def read_text(path):
    with open(path) as f:
        return f.read()


def read_lines(path):
    return read_text(path).splitlines()


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def last_json_line(path):
    try:
        with open(path) as f:
            lines = [l for l in f if l.startswith("{")]
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None


def percentile_summary(values_us):
    if not values_us:
        return None
    s = sorted(values_us)

    def at(q):
        return s[min(len(s) - 1, int(q * len(s)))] / 1000.0

    return {
        "count": len(s),
        "mean": sum(s) / len(s) / 1000.0,
        "p50": at(0.5),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": s[-1] / 1000.0,
    }


def load_pgbench(results, name, batch):
    try:
        text = read_text(os.path.join(results, name + ".out"))
    except OSError:
        return None
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
    if not tps:
        return None
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    clients = re.search(r"number of clients: (\d+)", text)
    duration = re.search(r"duration: (\d+) s", text)
    latencies = []
    for log in glob.glob(os.path.join(results, name + ".log.*")):
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]))
    per_txn = batch if "batched" in name else 1
    return {
        "ops_per_s": float(tps.group(1)) * per_txn,
        "tps": float(tps.group(1)),
        "ops": int(processed.group(1)) * per_txn if processed else None,
        "errors": int(failed.group(1)) if failed else 0,
        "concurrency": int(clients.group(1)) if clients else None,
        "duration_s": float(duration.group(1)) if duration else None,
        "latency_ms": percentile_summary(latencies),
        "violations": [],
    }


def metric_delta(before, after, series):
    if not before or not after:
        return None
    return after.get(series, 0.0) - before.get(series, 0.0)


def server_stats(results, name):
    before = read_json(os.path.join(results, name + ".metrics-before.json"))
    after = read_json(os.path.join(results, name + ".metrics-after.json"))
    if not before or not after:
        return None
    out = {}
    for kind in ("claim", "complete", "heartbeat"):
        n = metric_delta(before, after, f'sentinel_batch_size_count{{kind="{kind}"}}')
        s = metric_delta(before, after, f'sentinel_batch_size_sum{{kind="{kind}"}}')
        t = metric_delta(before, after, f'sentinel_store_duration_seconds_sum{{op="{kind}"}}')
        if n:
            out[kind] = {"batches": n, "avg_batch": s / n, "avg_store_ms": 1000.0 * (t or 0.0) / n}
    return out


def load(results, name, settings):
    if name.startswith("pgbench"):
        r = load_pgbench(results, name, settings.get("batch", 16))
    else:
        r = last_json_line(os.path.join(results, name + ".out"))
    if r is None:
        return None
    r["name"] = name
    r["cpu"] = read_json(os.path.join(results, name + ".cpu.json"))
    r["server"] = server_stats(results, name)
    status = os.path.join(results, name + ".status")
    r["exit_status"] = read_text(status).strip() if os.path.exists(status) else "0"
    return r


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def lat(r, key):
    l = r.get("latency_ms") or {}
    return fmt(l.get(key), 1 if (l.get(key) or 0) >= 10 else 2)


def cores(r):
    c = r.get("cpu")
    if not c or not c.get("wall_s"):
        return "–"
    w = c["wall_s"]
    parts = [f"client {c['client_cpu_s'] / w:.2f}"]
    if c.get("server_cpu_s"):
        parts.append(f"sentinel {c['server_cpu_s'] / w:.2f}")
    parts.append(f"pg {c['postgres_cpu_s'] / w:.2f}")
    parts.append(f"machine {c['machine_busy_s'] / w:.2f}")
    return ", ".join(parts)


SYSTEMS = [
    ("pgbench_single", "PostgreSQL + pgbench, one txn per request", "lifecycle (claim txn + complete txn)"),
    ("pgbench_batched", "PostgreSQL + pgbench, {batch} keys per txn", "lifecycle"),
    ("sentinel_fresh", "Sentinel gRPC, fresh", "lifecycle (Claim + Complete RPC)"),
    ("sentinel_replay", "Sentinel gRPC, replay", "Claim answered COMPLETED"),
    ("sentinel_contention", "Sentinel gRPC, contention (4 keys / 100 ms)", "Claim"),
    ("sentinel_heartbeat", "Sentinel gRPC, heartbeat", "ALIVE reply"),
    ("python_fresh", "sentinel-coordination 0.5.0, fresh", "once() on a new key"),
    ("python_replay", "sentinel-coordination 0.5.0, replay", "once() replayed"),
]


def collect(results):
    settings = read_json(os.path.join(results, "settings.json")) or {}
    names = sorted({os.path.basename(p)[: -len(".cpu.json")] for p in glob.glob(os.path.join(results, "*.cpu.json"))})
    rows = {}
    for n in names:
        r = load(results, n, settings)
        if r is not None:
            rows[n] = r
    return settings, rows


def conc_of(name):
    m = re.search(r"_c(\d+)$", name)
    return int(m.group(1)) if m else None


def ratio_line(label, a, b, target):
    if a is None or b is None or not b:
        return (label, None, target, None)
    x = a / b
    return (label, x, target, x >= target if target else None)


def build(results):
    settings, rows = collect(results)
    env = read_json(os.path.join(results, "env.json")) or {}
    batch = settings.get("batch", 16)
    md = []
    md.append("### Throughput and latency\n")
    md.append(
        "| system | op | concurrency | ops/s | p50 ms | p99 ms | p99.9 ms | errors | CPU cores used during the run |"
    )
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for prefix, title, op in SYSTEMS:
        for name in sorted((n for n in rows if n.startswith(prefix)), key=lambda n: conc_of(n) or 0):
            r = rows[name]
            errors = r.get("errors", 0)
            bad = errors or r.get("violations") or r.get("exit_status") != "0"
            md.append(
                f"| {title.format(batch=batch)} | {op} | {r.get('concurrency') or conc_of(name)} | "
                f"{fmt(r.get('ops_per_s'))} | {lat(r, 'p50')} | {lat(r, 'p99')} | {lat(r, 'p999')} | "
                f"{errors}{' ⚠' if bad else ''} | {cores(r)} |"
            )
    md.append("")

    def ops(name):
        r = rows.get(name)
        return r.get("ops_per_s") if r else None

    checks = []
    levels = sorted({conc_of(n) for n in rows if n.startswith("sentinel_fresh")} - {None})
    for c in levels:
        checks.append(
            ratio_line(
                f"Sentinel fresh / pgbench one-txn-per-request, {c} callers vs {c} clients",
                ops(f"sentinel_fresh_c{c}"),
                ops(f"pgbench_single_c{c}"),
                2.0,
            )
        )
    # A hand-rolled application is not bound to one connection per caller: it could cap its
    # pool at the client count where pgbench peaked. Against that best level, for each level.
    single = [ops(n) for n in rows if n.startswith("pgbench_single")]
    best_single = max((x for x in single if x), default=None)
    for c in levels:
        checks.append(
            ratio_line(
                f"Sentinel fresh at {c} callers / best pgbench one-txn-per-request (any client count)",
                ops(f"sentinel_fresh_c{c}"),
                best_single,
                None,
            )
        )
    py = next((n for n in rows if n.startswith("python_fresh")), None)
    if py:
        pc = conc_of(py)
        checks.append(
            ratio_line(
                f"Sentinel fresh / sentinel-coordination 0.5.0 fresh, both at {pc}",
                ops(f"sentinel_fresh_c{pc}"),
                ops(py),
                20.0,
            )
        )
        best = max((ops(f"sentinel_fresh_c{c}") or 0 for c in levels), default=None)
        checks.append(
            ratio_line(
                f"best Sentinel fresh (any concurrency) / sentinel-coordination 0.5.0 fresh at {pc}",
                best,
                ops(py),
                None,
            )
        )
    for c in levels:
        checks.append(
            ratio_line(
                f"Sentinel replay / Sentinel fresh, {c} callers",
                ops(f"sentinel_replay_c{c}"),
                ops(f"sentinel_fresh_c{c}"),
                3.0,
            )
        )
    pyr = next((n for n in rows if n.startswith("python_replay")), None)
    if pyr:
        pc = conc_of(pyr)
        checks.append(
            ratio_line(
                f"Sentinel replay / sentinel-coordination 0.5.0 replay, both at {pc}",
                ops(f"sentinel_replay_c{pc}"),
                ops(pyr),
                None,
            )
        )
    for c in sorted({conc_of(n) for n in rows if n.startswith("pgbench_batched")} - {None}):
        checks.append(
            ratio_line(
                f"Sentinel fresh / pgbench batched by hand ({batch} keys per txn), {c}",
                ops(f"sentinel_fresh_c{c}"),
                ops(f"pgbench_batched_c{c}"),
                None,
            )
        )

    md.append("### Ratios (all from this one run)\n")
    md.append("| ratio | measured | target | met |")
    md.append("|---|---:|---:|---|")
    for label, x, target, met in checks:
        md.append(
            f"| {label} | {'–' if x is None else f'{x:.2f}x'} | "
            f"{'' if not target else f'≥ {target:g}x'} | "
            f"{'' if met is None else ('yes' if met else '**no**')} |"
        )
    hb = rows.get("sentinel_heartbeat")
    if hb:
        lost = hb.get("spurious_lost")
        rate = hb.get("renewal_rate_ratio")
        ok = (
            lost == 0
            and hb.get("unanswered") == 0
            and hb.get("errors") == 0
            and rate is not None
            and rate >= 0.95
            and (hb.get("max_gap_ms") or 0) < 1000 * (hb.get("lease_ttl_s") or 10)
        )
        md.append(
            f"| {hb.get('leases')} live leases renewed every {hb.get('interval_s')} s over "
            f"{hb.get('streams')} streams: spurious LOST {lost}, unanswered {hb.get('unanswered')}, "
            f"renewals {fmt(hb.get('ops_per_s'))}/s of {fmt(hb.get('expected_renewals_per_s'))}/s asked, "
            f"longest time without ALIVE {fmt(hb.get('max_gap_ms'))} ms (ttl {hb.get('lease_ttl_s')} s) | "
            f"LOST {lost} | 0 LOST, ≥ 95% of the rate | {'yes' if ok else '**no**'} |"
        )
    md.append("")

    srv = [(n, rows[n]["server"]) for n in rows if rows[n].get("server")]
    if srv:
        md.append("### Server batching during each run (from /metrics)\n")
        md.append(
            "| run | claim: batches, avg size, avg txn ms | complete: batches, avg size, avg txn ms | heartbeat: batches, avg size, avg ms |"
        )
        md.append("|---|---|---|---|")
        for n, s in sorted(srv, key=lambda x: (x[0].rsplit("_c", 1)[0], conc_of(x[0]) or 0)):
            cells = []
            for kind in ("claim", "complete", "heartbeat"):
                k = s.get(kind)
                cells.append("–" if not k else f"{int(k['batches']):,}, {k['avg_batch']:.1f}, {k['avg_store_ms']:.2f}")
            md.append(f"| {n} | " + " | ".join(cells) + " |")
        md.append("")

    for pname, what, unit in (
        ("profile_fresh_c64", "fresh", "lifecycle"),
        ("profile_replay_c64", "replay", "replayed claim"),
    ):
        prof = rows.get(pname)
        if prof:
            md.extend(profile_section(results, prof, what, unit))

    md.append("### Machine, versions, settings\n")
    if env:
        md.append(
            f"- {env.get('nproc')} cores ({env.get('cpu')}), {env.get('memory_gib')} GiB memory "
            f"(`free -g`: `{env.get('free_g')}`), kernel {env.get('kernel')}, load average at start "
            f"{' '.join(env.get('loadavg_at_start', []))}; the machine is shared, so expect noise."
        )
        md.append(
            f"- {env.get('postgres')}; {env.get('pgbench')}; {env.get('sentinel')} "
            f"(commit {env.get('git_commit')}{', with local changes' if env.get('git_dirty') else ''}); "
            f"{env.get('rustc')}; {env.get('python')}."
        )
    if settings:
        md.append(
            f"- {settings.get('duration_s')} s measured after {settings.get('warmup_s')} s of warmup per "
            f"measurement; load generator with the `{settings.get('driver', 'client')}` driver and "
            f"{settings.get('connections')} gRPC connections; "
            + (f"server flags `{settings['server_args']}`; " if settings.get("server_args") else "server defaults; ")
            + f"replay over "
            f"{settings.get('replay_keys')} completed keys (Python: {settings.get('python_replay_keys')}); "
            f"heartbeat with {settings.get('heartbeat_leases')} leases; each cluster primed with {settings.get('prime_s')} s of its own fresh load, then VACUUM ANALYZE, before the first measurement; CHECKPOINT before each measurement."
            + (" **Quick mode**: numbers are indicative only." if settings.get("quick") else "")
        )
    cmds = os.path.join(results, "commands.txt")
    if os.path.exists(cmds):
        md.append("\nExact commands (`<repo>` is the repository, `<tmp>` the run's scratch directory):\n")
        md.append("```")
        md.extend(l.rstrip() for l in read_lines(cmds))
        md.append("```")
    return "\n".join(md) + "\n", checks


def profile_section(results, prof, what, unit):
    """Where the time goes in one profiled run (separate cluster with pg_stat_statements)."""
    name = prof["name"]
    md = [f"### Profile: {what}, 64 callers (separate run, cluster with pg_stat_statements)\n"]
    c = prof.get("cpu") or {}
    total_ops = (prof.get("ops_per_s") or 0) * (c.get("wall_s") or 0)
    if total_ops and c:
        md.append(
            f"{fmt(prof.get('ops_per_s'))} {unit}s/s. CPU per {unit} (CPU seconds of the run / "
            f"(rate x wall time)): load generator {1e6 * c['client_cpu_s'] / total_ops:.0f} µs, "
            f"Sentinel server {1e6 * c['server_cpu_s'] / total_ops:.0f} µs, "
            f"PostgreSQL {1e6 * c['postgres_cpu_s'] / total_ops:.0f} µs; the machine was "
            f"{100 * c['machine_busy_s'] / max(c['machine_total_s'], 1e-9):.0f}% busy "
            f"({c.get('cores')} cores, other users included).\n"
        )
    s = prof.get("server") or {}
    if s:
        md.append(
            "Batches: "
            + "; ".join(
                f"{k}: {v['avg_batch']:.1f} requests per batch, {v['avg_store_ms']:.2f} ms per batch"
                for k, v in s.items()
            )
            + ".\n"
        )
    pgss = os.path.join(results, name + ".pgss.tsv")
    if os.path.exists(pgss):
        lines = [l.split("\t") for l in read_lines(pgss) if l.strip()]
        body = [l for l in lines[1:] if len(l) >= 7 and l[0].isdigit()]
        if body:
            md.append(
                "PostgreSQL statements (pg_stat_statements; execution and planning time in the "
                "backend, not counting the commit's WAL flush or the round trips):\n"
            )
            md.append("| calls | rows/call | exec ms total | exec ms mean | plans | plan ms total | statement |")
            md.append("|---:|---:|---:|---:|---:|---:|---|")
            for l in body:
                calls, rws = int(l[0]), int(l[1])
                q = l[6].replace("|", "\\|")
                md.append(
                    f"| {calls:,} | {rws / calls if calls else 0:.1f} | {l[2]} | {l[3]} | {int(l[4]):,} | "
                    f"{l[5]} | `{q[:100]}` |"
                )
            md.append("")
    wal = os.path.join(results, name + ".wal.tsv")
    if os.path.exists(wal) and total_ops:
        lines = [l.split("\t") for l in read_lines(wal) if l.strip()]
        if len(lines) > 1 and lines[1][0].isdigit():
            rec, fpi, size, _, syncs = (int(x) for x in lines[1][:5])
            md.append(
                f"WAL over the run: {rec:,} records ({rec / total_ops:.1f} per {unit}), {fpi:,} full-page "
                f"images, {size / 1e6:.0f} MB ({size / total_ops:.0f} bytes per {unit}), {syncs:,} WAL "
                f"syncs ({total_ops / max(syncs, 1):.1f} {unit}s per sync).\n"
            )
    for suffix, title in (("perf-dso", "by binary"), ("perf-sym", "by function")):
        p = os.path.join(results, f"{name}.{suffix}.txt")
        if os.path.exists(p) and os.path.getsize(p) > 0:
            md.append(f"perf samples of the server process, {title} (self time, top entries):\n")
            md.append("```")
            md.extend(l.rstrip() for l in read_lines(p)[:25])
            md.append("```\n")
    return md


def one(results, name):
    settings = read_json(os.path.join(results, "settings.json")) or {}
    r = load(results, name, settings)
    if r is None:
        print(f"  {name}: no result (see {name}.err)")
        return
    l = r.get("latency_ms") or {}
    extra = ""
    if "spurious_lost" in r:
        extra = (
            f", spurious LOST {r['spurious_lost']}, unanswered {r.get('unanswered')}, max gap {r.get('max_gap_ms')} ms"
        )
    if "duplicate_acquires" in r:
        extra = f", duplicate acquires {r['duplicate_acquires']}"
    print(
        f"  {name}: {fmt(r.get('ops_per_s'))} ops/s, p50 {fmt(l.get('p50'), 2)} ms, "
        f"p99 {fmt(l.get('p99'), 2)} ms, errors {r.get('errors', 0)}{extra}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    p.add_argument("name", nargs="?")
    p.add_argument("--one", action="store_true")
    p.add_argument("--docs")
    args = p.parse_args()
    if args.one:
        one(args.results, args.name)
        return
    text, _ = build(args.results)
    print(text)
    if args.docs:
        try:
            doc = read_text(args.docs)
        except OSError:
            doc = f"# Benchmarks\n\n{BEGIN}\n{END}\n"
        if BEGIN not in doc or END not in doc:
            doc = doc.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(args.docs, "w") as f:
            f.write(f"{head}{BEGIN}\n\n{text}\n{END}{tail}")
        print(f"wrote {args.docs}", file=sys.stderr)


if __name__ == "__main__":
    main()
