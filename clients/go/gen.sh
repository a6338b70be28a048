#!/usr/bin/env bash
# Regenerates clients/go/gen from proto/ with pinned plugins. Deterministic; safe to rerun.
# Installs what it needs into $ROOT/.tools (gitignored) on first use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tools="$root/.tools"

# The protoc-gen-go version must equal the google.golang.org/protobuf version in go.mod, so the
# generated code and the runtime it links against always agree.
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
BUF_VERSION=1.75.0

mkdir -p "$tools/bin"
export PATH="$tools/bin:$PATH"

if [[ "$(protoc-gen-go --version 2>/dev/null || true)" != "protoc-gen-go $PROTOC_GEN_GO_VERSION" ]]; then
  GOBIN="$tools/bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if [[ "$(protoc-gen-go-grpc --version 2>/dev/null || true)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]]; then
  GOBIN="$tools/bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

buf="$tools/node_modules/.bin/buf"
if [[ "$("$buf" --version 2>/dev/null || true)" != "$BUF_VERSION" ]]; then
  npm install --silent --no-save --no-audit --no-fund --prefix "$tools" "@bufbuild/buf@$BUF_VERSION"
fi

cd "$here"
"$buf" generate --template buf.gen.yaml
