#!/usr/bin/env bash
# Side-by-side throughput benchmark, in one run on one machine:
#   1. raw PostgreSQL with pgbench: a hand-rolled lease table, one transaction per request,
#      and the same work batched by hand;
#   2. Sentinel (release build, `sentinel serve`) driven by sentinel-loadgen: fresh lifecycles
#      and replays at several concurrency levels, contention, and 20,000 live leases renewed
#      every second;
#   3. the original Python library sentinel-coordination 0.5.0 (PyPI) from 16 threads;
#   4. a profile of the server during fresh and replay (pg_stat_statements, perf).
# Each system gets a freshly started PostgreSQL (scripts/pg.sh, same settings for all).
# Prints the table of throughputs and ratios and, for a full run, writes it with the method
# to docs/benchmarks.md (between the generated-results markers).
#
#   bench/run.sh [--quick] [--phases "pgbench sentinel python profile"] [--out DIR]
#                [--docs | --no-docs]
#
#   --quick    a few seconds per measurement (for development); does not write the docs
#   --phases   run only these phases (the report shows what was measured)
#   --out      results directory (default bench/results/<timestamp>)
#
# Environment overrides: BENCH_DURATION, BENCH_WARMUP (seconds), BENCH_LEVELS ("16 64 256 1024"),
# BENCH_DRIVER (client: the sentinel-client crate, the default; raw: the bare tonic stubs),
# BENCH_SERVER_ARGS (extra `sentinel serve` flags for experiments, e.g. "--pool-size 24"),
# BENCH_PRIME (seconds of priming load per cluster; 0 measures on the new, empty tables).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bench="$root/bench"

quick=0
phases="pgbench sentinel python profile"
out=""
docs=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --phases) phases=${2:?--phases needs a list}; shift ;;
    --out) out=${2:?--out needs a directory}; shift ;;
    --docs) docs=1 ;;
    --no-docs) docs=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$docs" ]] || docs=$((1 - quick))

if [[ $quick -eq 1 ]]; then
  duration=${BENCH_DURATION:-3}; warmup=${BENCH_WARMUP:-1}
  replay_keys=2000; py_replay_keys=500; hb_leases=5000; prime=3
else
  duration=${BENCH_DURATION:-20}; warmup=${BENCH_WARMUP:-3}
  replay_keys=10000; py_replay_keys=2000; hb_leases=20000; prime=5
fi
prime=${BENCH_PRIME:-$prime}
levels=${BENCH_LEVELS:-16 64 256 1024}
# pgbench opens one connection per client: every cluster (same settings for all) allows the
# largest level plus room for the server's pool, psql and the Python threads.
max_level=$(printf '%s\n' $levels | sort -n | tail -1)
export PG_MAX_CONNECTIONS=$(( max_level + 64 > 300 ? max_level + 64 : 300 ))
# pgbench holds a socket per client: raise the soft limit on open files if it is lower.
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $((max_level + 64)) ]]; then
  ulimit -n $((max_level + 64)) 2>/dev/null \
    || echo "run.sh: warning: open-file limit $(ulimit -n) is below $((max_level + 64)); pgbench may fail at $max_level clients" >&2
fi
batched_levels="16 64"
batch=16
py_threads=16
connections=4
driver=${BENCH_DRIVER:-client}
out=${out:-$bench/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
: >"$out/commands.txt"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# record CMD...: appends the command line to commands.txt, without this machine's paths.
record() {
  printf '%s\n' "$*" | sed "s#$root/#<repo>/#g; s#$work/#<tmp>/#g; s#$out/#<results>/#g" >>"$out/commands.txt"
}
has_phase() { [[ " $phases " == *" $1 "* ]]; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pgbin=$(pg_config --bindir 2>/dev/null || true)
if [[ -z "$pgbin" || ! -x "$pgbin/pgbench" ]]; then
  # shellcheck disable=SC2012 # version-sorted directory names, no odd characters
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[[ -x "$pgbin/pgbench" && -x "$pgbin/psql" ]] || { echo "run.sh: pgbench/psql not found (install postgresql)" >&2; exit 1; }

# --- build -------------------------------------------------------------------------------
log "building the server (release) and the load generator"
(cd "$root" && cargo build --quiet --release -p sentinel-server)
server_bin="${CARGO_TARGET_DIR:-$root/target}/release/sentinel"
loadgen_target=${BENCH_TARGET_DIR:-$root/target-tools}
(cd "$root" && CARGO_TARGET_DIR="$loadgen_target" cargo build --quiet --release -p sentinel-loadgen)
loadgen="$loadgen_target/release/sentinel-loadgen"

venv="$root/.tools/benchvenv"
if has_phase python; then
  if ! "$venv/bin/python" -c 'import importlib.metadata as m; assert m.version("sentinel-coordination") == "0.5.0"' 2>/dev/null; then
    log "installing sentinel-coordination 0.5.0 into .tools/benchvenv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      sentinel-coordination==0.5.0 'psycopg[binary]==3.3.9' python-dotenv==1.2.4
  fi
fi

# --- throwaway clusters and the server ------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/sentinel-bench.XXXXXX")
chmod 755 "$work"
clusters=()
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  for c in "${clusters[@]}"; do "$root/scripts/pg.sh" stop "$c" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

pg_dir=""; pg_url=""; pg_port=""
pg_start() {
  pg_dir="$work/pg-$1"
  pg_port=$(free_port)
  record "# $1"
  record "$root/scripts/pg.sh" start "$pg_dir" "$pg_port"
  "$root/scripts/pg.sh" start "$pg_dir" "$pg_port"
  clusters+=("$pg_dir")
  pg_url="postgres://postgres@127.0.0.1:$pg_port/postgres"
}
pg_stop() {
  "$root/scripts/pg.sh" stop "$pg_dir"
  cp "$pg_dir/server.log" "$out/postgres-$(basename "$pg_dir").log" 2>/dev/null || true
}
sql() { "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 "$pg_url" "$@"; }

grpc_addr=""; metrics_url=""
server_start() {
  record "$server_bin" serve --database-url "$pg_url" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 "${BENCH_SERVER_ARGS:-}"
  # shellcheck disable=SC2086 # BENCH_SERVER_ARGS is a list of flags
  "$server_bin" serve --database-url "$pg_url" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    ${BENCH_SERVER_ARGS:-} >"$work/server.out" 2>"$out/server-$1.log" &
  server_pid=$!
  for _ in $(seq 1 300); do
    grpc_addr=$(sed -n 's/^sentinel listening on \(.*\)$/\1/p' "$work/server.out" | head -1)
    metrics_url=$(sed -n 's/^sentinel metrics on \(.*\)$/\1/p' "$work/server.out" | head -1)
    [[ -n "$grpc_addr" && -n "$metrics_url" ]] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "run.sh: sentinel did not start:" >&2; cat "$out/server-$1.log" >&2; exit 1
}
server_stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

# Every system is measured on tables in a steady state, not on the empty tables of a new
# cluster: `prime` runs the system's own fresh load for a few seconds, then VACUUM ANALYZE.
# (Plans that a long-lived connection pool caches while a table is still empty can scan the
# whole table later; the analyze invalidates them. See docs/benchmarks.md.)
prime() {
  if [[ $prime == 0 ]]; then record "# not primed (BENCH_PRIME=0)"; return; fi
  record "$@"
  record psql -c "VACUUM ANALYZE"
  "$@" >"$out/prime-$(basename "$pg_dir").log" 2>&1 || { log "priming failed: $*"; cat "$out/prime-$(basename "$pg_dir").log" >&2; exit 1; }
  sql -c "VACUUM ANALYZE"
}

# measure NAME CMD...: one measurement; stdout to NAME.out, stderr to NAME.err, CPU split to
# NAME.cpu.json, the command line to commands.txt. A failing command is reported, not fatal:
# its errors are in its output and the report says so.
measure() {
  local name=$1; shift
  sql -c CHECKPOINT
  record "$@"
  [[ -n "$server_pid" ]] && python3 "$bench/metrics.py" "$metrics_url" "$out/$name.metrics-before.json"
  local status=0
  python3 "$bench/cpu.py" --out "$out/$name.cpu.json" --pg-dir "$pg_dir" ${server_pid:+--server-pid "$server_pid"} \
    -- "$@" >"$out/$name.out" 2>"$out/$name.err" || status=$?
  [[ -n "$server_pid" ]] && python3 "$bench/metrics.py" "$metrics_url" "$out/$name.metrics-after.json"
  if [[ $status -ne 0 ]]; then
    log "$name exited with $status (see $out/$name.err)"
    echo "$status" >"$out/$name.status"
  fi
  python3 "$bench/report.py" --one "$out" "$name" >&2 || true
}

python3 - "$out/env.json" "$server_bin" "$pgbin" "$venv" "$root" <<'EOF'
import json, os, platform, subprocess, sys
out, server, pgbin, venv, root = sys.argv[1:]
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:
        return f"unavailable ({e})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
env = {
    "nproc": run("nproc"),
    "cpu": cpu,
    "memory_gib": round(mem / 1024 / 1024, 1),
    "free_g": run("free", "-g").splitlines()[1] if run("free", "-g") else "?",
    "kernel": platform.release(),
    "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    "postgres": run(os.path.join(pgbin, "postgres"), "--version"),
    "pgbench": run(os.path.join(pgbin, "pgbench"), "--version"),
    "sentinel": run(server, "--version"),
    "rustc": run("rustc", "--version"),
    "python": run(os.path.join(venv, "bin", "python"), "--version") or run("python3", "--version"),
    "git_commit": run("git", "-C", root, "rev-parse", "--short", "HEAD"),
    "git_dirty": bool(run("git", "-C", root, "status", "--porcelain", "--", "server", "client-rs", "proto")),
}
json.dump(env, open(out, "w"), indent=1)
EOF
cat >"$out/settings.json" <<EOF
{"quick": $quick, "duration_s": $duration, "warmup_s": $warmup, "levels": "$levels",
 "batched_levels": "$batched_levels", "batch": $batch, "python_threads": $py_threads,
 "connections": $connections, "driver": "$driver", "server_args": "${BENCH_SERVER_ARGS:-}", "replay_keys": $replay_keys, "python_replay_keys": $py_replay_keys,
 "heartbeat_leases": $hb_leases, "prime_s": $prime, "phases": "$phases"}
EOF
log "results in $out (load average at start: $(cut -d' ' -f1-3 /proc/loadavg))"

# --- 1. raw PostgreSQL with pgbench ------------------------------------------------------------
if has_phase pgbench; then
  log "pgbench: fresh PostgreSQL"
  pg_start pgbench
  record psql -f "$bench/pgbench/schema.sql"
  sql -f "$bench/pgbench/schema.sql" 2>/dev/null
  pgb=("$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -n -M prepared -j 2)
  prime "${pgb[@]}" -c 16 -T "$prime" -f "$bench/pgbench/single.sql" postgres
  for c in $levels; do
    log "pgbench one transaction per request, $c clients"
    measure "pgbench_single_c$c" "${pgb[@]}" -c "$c" -T "$duration" \
      -l --log-prefix="$out/pgbench_single_c$c.log" -f "$bench/pgbench/single.sql" postgres
  done
  for c in $batched_levels; do
    log "pgbench batched ($batch keys per transaction), $c clients"
    measure "pgbench_batched_c$c" "${pgb[@]}" -c "$c" -T "$duration" -D "batch=$batch" \
      -l --log-prefix="$out/pgbench_batched_c$c.log" -f "$bench/pgbench/batched.sql" postgres
  done
  pg_stop
fi

# --- 2. Sentinel through gRPC ----------------------------------------------------------------
lg_common=(--driver "$driver" --connections "$connections" --duration "${duration}s" --warmup "${warmup}s" --json)
if has_phase sentinel; then
  log "sentinel: fresh PostgreSQL, release server"
  pg_start sentinel
  server_start sentinel
  prime "$loadgen" fresh --addr "$grpc_addr" -c 64 --duration "${prime}s" --warmup 0s
  for c in $levels; do
    log "sentinel fresh, $c callers"
    measure "sentinel_fresh_c$c" "$loadgen" fresh --addr "$grpc_addr" -c "$c" "${lg_common[@]}"
  done
  for c in $levels; do
    log "sentinel replay, $c callers"
    measure "sentinel_replay_c$c" "$loadgen" replay --addr "$grpc_addr" -c "$c" --keys "$replay_keys" "${lg_common[@]}"
  done
  log "sentinel contention, 64 callers on 4 keys per 100 ms round"
  measure "sentinel_contention_c64" "$loadgen" contention --addr "$grpc_addr" -c 64 --keys 4 --round 100ms "${lg_common[@]}"
  log "sentinel heartbeat, $hb_leases live leases renewed every second"
  measure "sentinel_heartbeat" "$loadgen" heartbeat --addr "$grpc_addr" -c 64 --leases "$hb_leases" \
    --streams 8 --interval 1s --lease-ttl 10s --hard-ttl 1h "${lg_common[@]}"
  server_stop
  pg_stop
fi

# --- 3. the original Python library -----------------------------------------------------------
if has_phase python; then
  log "python sentinel-coordination 0.5.0: fresh PostgreSQL"
  pg_start python
  py=("$venv/bin/python" "$bench/python_baseline.py" --dsn "$pg_url" --threads "$py_threads")
  prime "${py[@]}" fresh --duration "$prime" --warmup 0
  py+=(--duration "$duration" --warmup "$warmup" --json)
  log "python fresh, $py_threads threads"
  measure "python_fresh_c$py_threads" "${py[@]}" fresh
  log "python replay, $py_threads threads"
  measure "python_replay_c$py_threads" "${py[@]}" replay --keys "$py_replay_keys"
  pg_stop
fi

# --- 4. where the time goes ------------------------------------------------------------------
if has_phase profile; then
  log "profile: fresh PostgreSQL with pg_stat_statements (not used for the throughput table)"
  pg_start profile
  "$root/scripts/pg.sh" stop "$pg_dir"
  printf '%s\n' "shared_preload_libraries = 'pg_stat_statements'" \
    "pg_stat_statements.track_planning = on" >>"$pg_dir/postgresql.conf"
  record "# postgresql.conf += shared_preload_libraries = 'pg_stat_statements', pg_stat_statements.track_planning = on; restart"
  "$root/scripts/pg.sh" start "$pg_dir" "$pg_port"
  sql -c "CREATE EXTENSION pg_stat_statements"
  server_start profile
  prime "$loadgen" fresh --addr "$grpc_addr" -c 64 --duration "${prime}s" --warmup 0s
  perf_ok=0
  if command -v perf >/dev/null && perf record -q -o "$work/probe.data" -- true >/dev/null 2>&1; then
    perf_ok=1
  else
    log "perf is not available (Debian: apt-get install linux-perf); profiling with counters only"
  fi
  # profile NAME SCENARIO ARGS...: warm up, reset the statement and WAL counters, then measure
  # the scenario at 64 callers while perf samples the server process.
  profile() {
    local name=$1; shift
    local ns="profile-$RANDOM$RANDOM" warm=() a
    for a in "$@"; do [[ "$a" == --no-populate ]] || warm+=("$a"); done
    record "$loadgen" "${warm[@]}" --namespace "$ns" --addr "$grpc_addr" -c 64 --connections "$connections" \
      --duration 2s --warmup 0s
    "$loadgen" "${warm[@]}" --namespace "$ns" --addr "$grpc_addr" -c 64 --connections "$connections" \
      --duration 2s --warmup 0s >/dev/null || true
    record psql -c "SELECT pg_stat_statements_reset(), pg_stat_reset_shared('wal')"
    sql -c "SELECT pg_stat_statements_reset(), pg_stat_reset_shared('wal')" >/dev/null
    local perf_pid=""
    if [[ $perf_ok -eq 1 ]]; then
      record "perf record -q -F 499 -p <server pid> -- sleep $((duration + warmup))  # during the next command"
      perf record -q -F 499 -p "$server_pid" -o "$work/perf-$name.data" -- sleep $((duration + warmup)) >/dev/null 2>&1 &
      perf_pid=$!
    fi
    measure "$name" "$loadgen" "$@" --namespace "$ns" --addr "$grpc_addr" -c 64 "${lg_common[@]}"
    sql -A -F $'\t' -c "SELECT calls, rows, round(total_exec_time::numeric, 1) AS total_ms,
        round(mean_exec_time::numeric, 4) AS mean_ms, plans, round(total_plan_time::numeric, 1) AS plan_ms,
        left(regexp_replace(query, '\s+', ' ', 'g'), 120) AS query
      FROM pg_stat_statements WHERE calls > 0 AND query NOT LIKE '%pg_stat%'
      ORDER BY total_exec_time + total_plan_time DESC LIMIT 12" >"$out/$name.pgss.tsv"
    sql -A -F $'\t' -c "SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync FROM pg_stat_wal" \
      >"$out/$name.wal.tsv"
    if [[ -n "$perf_pid" ]]; then
      wait "$perf_pid" || true
      perf report -i "$work/perf-$name.data" --no-children --sort dso --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -12 >"$out/$name.perf-dso.txt" || true
      perf report -i "$work/perf-$name.data" --no-children --sort sym --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -30 >"$out/$name.perf-sym.txt" || true
    fi
  }
  log "profile: fresh, 64 callers"
  profile profile_fresh_c64 fresh
  log "profile: replay, 64 callers"
  # The warmup run completes the keys; the measured run only replays them.
  profile profile_replay_c64 replay --keys "$replay_keys" --no-populate
  server_stop
  pg_stop
fi

# --- report ----------------------------------------------------------------------------------
report_args=("$out")
[[ $docs -eq 1 ]] && report_args+=(--docs "$root/docs/benchmarks.md")
python3 "$bench/report.py" "${report_args[@]}"
log "done; results in $out"
