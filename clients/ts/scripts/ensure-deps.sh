#!/usr/bin/env bash
# Installs this package's pinned dependencies (npm ci) when node_modules is missing or was
# installed from another package-lock.json, and buf into $ROOT/.tools when it is missing.
# Quiet and quick when everything is already in place.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/../.." && pwd)
buf_version=1.75.0

lock_hash=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
stamp="$here/node_modules/.sentinel-lock-sha256"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  # --ignore-scripts: `prepare` builds dist from src, which must not be needed to install
  # (gen.sh installs before src/gen exists or while it is out of date).
  (cd "$here" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" >"$stamp"
fi

buf="$root/.tools/node_modules/.bin/buf"
if [[ ! -x "$buf" || "$("$buf" --version 2>/dev/null)" != "$buf_version" ]]; then
  mkdir -p "$root/.tools"
  npm install --prefix "$root/.tools" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
    "@bufbuild/buf@$buf_version"
fi
