#!/usr/bin/env bash
# Regenerates src/gen (TypeScript messages and service descriptors) from proto/ and from the
# google.rpc protos shipped by the pinned google-proto-files package, with the pinned local
# protoc-gen-es plugin. Deterministic: the same inputs always give the same files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
"$here/scripts/ensure-deps.sh"
cd "$here"
"$root/.tools/node_modules/.bin/buf" generate
