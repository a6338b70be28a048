#!/usr/bin/env bash
# Regenerates every language's code from proto/ (the Rust code is generated at build time
# by proto/build.rs). Each client folder owns its generator in clients/<lang>/gen.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-tools.sh"
(cd "$root/proto" && "$root/.tools/node_modules/.bin/buf" lint)
for gen in "$root"/clients/*/gen.sh; do
  [[ -x "$gen" ]] || continue
  echo "gen: ${gen#"$root"/}"
  "$gen"
done
