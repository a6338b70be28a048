#!/usr/bin/env bash
# The test suites, run by scripts/test.sh inside scripts/with-server.sh (which provides
# SENTINEL_ADDR, SENTINEL_BIN and SENTINEL_DATABASE_URL). Each suite runs even when an
# earlier one failed; the summary line counts suites.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${SENTINEL_ADDR:?run through scripts/test.sh}"
export SENTINEL_TEST_DATABASE_URL="$SENTINEL_DATABASE_URL"
buf="$root/.tools/node_modules/.bin/buf"
wanted=${SUITES:-lint gen rust go python ts deploy}

suite_lint() {
  cargo fmt --all --check &&
    cargo clippy --quiet --workspace --all-targets -- -D warnings &&
    "$buf" lint proto &&
    # The wire contract of the last release: proto/releases/<version>.binpb, made with
    # `buf build proto -o proto/releases/<version>.binpb` when a release is cut.
    "$buf" breaking proto --against "$(ls "$root"/proto/releases/*.binpb | sort -V | tail -1)"
}

# Regenerates every language and fails if the committed code differs.
suite_gen() {
  "$root/scripts/gen.sh" || return 1
  if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    local drift
    drift=$(git -C "$root" status --porcelain -- clients)
    if [[ -n "$drift" ]]; then
      echo "generated code differs from the committed code; run scripts/gen.sh and commit:" >&2
      echo "$drift" >&2
      git -C "$root" diff --stat -- clients >&2
      return 1
    fi
  fi
}

suite_rust() {
  cargo test --workspace --no-fail-fast
}

suite_client() {
  local dir="$root/clients/$1"
  [[ -x "$dir/test.sh" ]] || { echo "clients/$1/test.sh missing" >&2; return 1; }
  "$dir/test.sh"
}
suite_go() { suite_client go; }
suite_python() { suite_client python; }
suite_ts() { suite_client ts; }
suite_deploy() { "$root/deploy/test.sh"; }

passed=0
failed=0
failures=()
for s in $wanted; do
  echo "=== suite: $s"
  start=$(date +%s)
  if "suite_$s"; then
    passed=$((passed + 1))
    echo "=== suite $s: ok ($(($(date +%s) - start)) s)"
  else
    failed=$((failed + 1))
    failures+=("$s")
    echo "=== suite $s: FAILED ($(($(date +%s) - start)) s)"
  fi
done
echo
[[ $failed -gt 0 ]] && echo "failed suites: ${failures[*]}"
echo "suites: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
