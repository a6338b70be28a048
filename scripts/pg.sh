#!/usr/bin/env bash
# A throwaway PostgreSQL for tests and benchmarks.
#   scripts/pg.sh start DIR PORT   initdb (if needed) and start a cluster on 127.0.0.1:PORT
#   scripts/pg.sh stop DIR         stop it (fast shutdown)
# PG_MAX_CONNECTIONS (default 300) sets max_connections.
# Prints nothing but errors; the URL is postgres://postgres@127.0.0.1:PORT/postgres.
set -euo pipefail

cmd=${1:?usage: pg.sh start DIR PORT | stop DIR}
dir=${2:?data directory}
bindir=$(pg_config --bindir 2>/dev/null || true)
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[[ -x "$bindir/initdb" ]] || { echo "pg.sh: no PostgreSQL server binaries found" >&2; exit 1; }

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    port=${3:?port}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
    if [[ ! -f "$dir/PG_VERSION" ]]; then
      as_pg "$bindir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 \
        || { cat "$dir.initdb.log" >&2; exit 1; }
    fi
    as_pg "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=${PG_MAX_CONNECTIONS:-300} -c fsync=on -c synchronous_commit=on" \
      start >/dev/null
    ;;
  stop)
    [[ -f "$dir/postmaster.pid" ]] && as_pg "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    ;;
  *) echo "usage: pg.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
