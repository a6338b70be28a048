#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL and a real `sentinel serve`, then stops both.
#   scripts/with-server.sh CMD [ARGS...]
# The command sees:
#   SENTINEL_ADDR          host:port of the running server (plaintext gRPC)
#   SENTINEL_BIN           path of the `sentinel` binary (to start more servers)
#   SENTINEL_DATABASE_URL  admin URL of the PostgreSQL cluster (tests may create databases)
# Set SENTINEL_PROFILE=release to use a release build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${SENTINEL_PROFILE:-debug}
work=$(mktemp -d "${TMPDIR:-/tmp}/sentinel-run.XXXXXX")
chmod 755 "$work"
pgport=${SENTINEL_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  "$root/scripts/pg.sh" stop "$work/pg"
  rm -rf "$work"
}
trap cleanup EXIT

if [[ "$profile" == release ]]; then
  cargo build --quiet --release -p sentinel-server --manifest-path "$root/Cargo.toml"
else
  cargo build --quiet -p sentinel-server --manifest-path "$root/Cargo.toml"
fi
export SENTINEL_BIN="${CARGO_TARGET_DIR:-$root/target}/$profile/sentinel"
"$root/scripts/pg.sh" start "$work/pg" "$pgport"
export SENTINEL_DATABASE_URL="postgres://postgres@127.0.0.1:$pgport/postgres"

# The server prints "sentinel listening on ADDR" on stdout once it accepts connections.
"$SENTINEL_BIN" serve --database-url "$SENTINEL_DATABASE_URL" --listen 127.0.0.1:0 \
  >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 300); do
  addr=$(sed -n 's/^sentinel listening on \(.*\)$/\1/p' "$work/server.out" | head -1)
  [[ -n "$addr" ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err" >&2; exit 1; }
  sleep 0.1
done
[[ -n "${addr:-}" ]] || { echo "with-server: sentinel did not start" >&2; cat "$work/server.err" >&2; exit 1; }
export SENTINEL_ADDR="$addr"
status=0
"$@" || status=$?
if [[ $status -ne 0 ]]; then echo "--- sentinel server log (tail) ---" >&2; tail -50 "$work/server.err" >&2; fi
exit $status
