#!/usr/bin/env bash
# Runs every test: lints, the generated-code drift check, the Rust suites, each client's
# suite and the deployment checks, against a throwaway PostgreSQL and a real server that
# this script starts and stops. Exits non-zero if anything fails.
#
#   scripts/test.sh            everything
#   SUITES="rust go" scripts/test.sh   only some suites (lint rust gen go python ts deploy)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/install-tools.sh"
# Build before starting anything, so compile time does not count against test time-outs.
cargo build --quiet --workspace --all-targets
exec "$root/scripts/with-server.sh" "$root/scripts/suites.sh"
