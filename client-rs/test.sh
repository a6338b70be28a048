#!/usr/bin/env bash
# Lints and tests the Rust client against the server at SENTINEL_ADDR.
#   scripts/with-server.sh client-rs/test.sh      (from the repository root)
# The caller chooses CARGO_TARGET_DIR; the JSON codec feature is on so that it is tested too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."

if [[ -z "${SENTINEL_ADDR:-}" ]]; then
  echo "client-rs/test.sh: SENTINEL_ADDR is not set; run it as scripts/with-server.sh client-rs/test.sh" >&2
  exit 2
fi

# A fresh toolchain may lack the linters.
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add clippy rustfmt
fi

cargo fmt -p sentinel-client --check
cargo clippy -p sentinel-client --all-targets -- -D warnings
cargo clippy -p sentinel-client --all-targets --features json -- -D warnings
cargo test -p sentinel-client --features json
