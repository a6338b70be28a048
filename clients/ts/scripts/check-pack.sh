#!/usr/bin/env bash
# Packs the package, installs the tarball into a scratch project and runs one `once` through
# the installed copy against SENTINEL_ADDR: proves that dist/, "exports" and the dependency
# list are what a user gets from `npm pack` / `npm install ./clients/ts`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/sentinel-ts-pack.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

(cd "$here" && npm pack --silent --pack-destination "$scratch" >/dev/null)
tarball=$(ls "$scratch"/*.tgz)
cd "$scratch"
echo '{ "name": "pack-check", "private": true, "type": "module" }' >package.json
npm install --no-audit --no-fund --prefer-offline --loglevel=error "$tarball"
cat >check.mjs <<'JS'
import { createSentinel, FencedError } from "@sentinel-dev/client";
const namespace = `pack-${Date.now().toString(36)}-${Math.random().toString(16).slice(2, 10)}`;
const sentinel = createSentinel({ target: process.env.SENTINEL_ADDR, namespace });
try {
  const first = await sentinel.once({ key: "k", fn: ({ token }) => ({ token: token.toString() }) });
  const second = await sentinel.once({ key: "k", fn: () => { throw new Error("must not run"); } });
  if (first.status !== "completed" || first.cached || second.status !== "completed" || !second.cached) {
    throw new Error(`unexpected results: ${first.status}/${first.cached} ${second.status}/${second.cached}`);
  }
  if (typeof FencedError !== "function") throw new Error("FencedError is not exported");
  console.log(`installed package works: ran once with token ${first.response.token}, replayed cached`);
} finally {
  await sentinel.close();
}
JS
node check.mjs
