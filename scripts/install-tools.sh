#!/usr/bin/env bash
# Installs the tools the build and tests need beyond the machine's toolchains, into .tools/
# (gitignored). Idempotent and quick when everything is present. Each client folder installs
# its own dependencies in its test.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools"

BUF_VERSION=1.75.0
if [[ "$("$tools/node_modules/.bin/buf" --version 2>/dev/null)" != "$BUF_VERSION" ]]; then
  echo "install-tools: buf $BUF_VERSION"
  [[ -f "$tools/package.json" ]] || echo '{"name":"sentinel-tools","private":true}' >"$tools/package.json"
  (cd "$tools" && npm install --silent --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION" >/dev/null)
fi

if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# PostgreSQL server binaries for the throwaway test cluster.
if ! { pg_config --bindir >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; } \
   && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "install-tools: PostgreSQL server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "install-tools: PostgreSQL server binaries are missing; install postgresql" >&2
    exit 1
  fi
fi
