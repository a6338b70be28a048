#!/usr/bin/env bash
# Type-checks (tsc --strict), builds and tests the TypeScript client against the real server
# at SENTINEL_ADDR; run it as `scripts/with-server.sh clients/ts/test.sh` from the repository
# root. Also packs the package and uses the packed copy the way a user would install it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ -z "${SENTINEL_ADDR:-}" ]]; then
  echo "clients/ts/test.sh: SENTINEL_ADDR is not set; run it as scripts/with-server.sh clients/ts/test.sh" >&2
  exit 1
fi
"$here/scripts/ensure-deps.sh"
cd "$here"

echo "== tsc (library, strict) =="
rm -rf dist build
npx --no-install tsc -p tsconfig.json
echo "== tsc (tests and examples, strict) =="
npx --no-install tsc -p tsconfig.test.json

echo "== node --test =="
node --test --test-concurrency=2 build/test/

echo "== packed package =="
"$here/scripts/check-pack.sh"
