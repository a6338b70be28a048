#!/usr/bin/env bash
# Lints and tests the Go client against a running server:
#   scripts/with-server.sh clients/go/test.sh      (from the repository root)
# Needs SENTINEL_ADDR (set by with-server.sh); exits non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if [[ -z "${SENTINEL_ADDR:-}" ]]; then
  echo "test.sh: SENTINEL_ADDR is not set; run: scripts/with-server.sh clients/go/test.sh" >&2
  exit 2
fi

go mod download
go mod verify >/dev/null

unformatted=$(gofmt -l .)
if [[ -n "$unformatted" ]]; then
  echo "test.sh: gofmt would change:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...
go build ./...

# -race needs cgo; keep it where the machine has a C compiler.
race=()
if [[ "$(go env CGO_ENABLED)" == 1 ]] && command -v "$(go env CC)" >/dev/null 2>&1; then
  race=(-race)
fi
go test "${race[@]}" -count=1 -timeout 5m ./...
