#!/usr/bin/env bash
# Checks of deploy/ that need no cluster and no Docker engine:
#   - hadolint on the Dockerfile, shellcheck on the scripts, ruff on the checker;
#   - helm lint --strict (default values, every optional feature on, every optional part off);
#   - deploy/tests/check_chart.py: helm template, strict validation of every rendered object
#     against the Kubernetes schemas, assertions on the rendered output, values that must fail.
# Under scripts/with-server.sh (SENTINEL_ADDR, SENTINEL_BIN, SENTINEL_DATABASE_URL set) it also runs
# the real binary as the chart would (deploy/tests/check_live.py), with the grpcurl of the test pod.
# Installs its tools into $ROOT/.tools on first use. Exits non-zero on any failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tools="$root/.tools"
chart="$here/helm/sentinel"

HELM_VERSION=v3.21.4
# Kubernetes minor of the k8s.io modules that Helm release is built with; its official build
# stamps it in for lint's deprecation checks, `go install` alone would leave 1.20.
HELM_K8S_MINOR=36
GRPCURL_VERSION=v1.9.3 # the version of the test pod's image (values.yaml tests.image.tag)
NEWEST_K8S=1.37.0      # newest Kubernetes the pinned kubernetes-validate has schemas for

helm="$tools/bin/helm"
venv="$tools/deployvenv"

install_helm() {
  if [[ -x "$helm" && "$("$helm" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
    return
  fi
  echo "installing helm $HELM_VERSION into $tools/bin"
  local pkg=helm.sh/helm/v3
  GOBIN="$tools/bin" go install \
    -ldflags "-X $pkg/internal/version.version=$HELM_VERSION \
      -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR \
      -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR" \
    "$pkg/cmd/helm@$HELM_VERSION"
}

install_venv() {
  local stamp="$venv/.requirements.sha256" want
  want=$(sha256sum "$here/tests/requirements.txt" | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  echo "installing the Python tools into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/tests/requirements.txt"
  echo "$want" >"$stamp"
}

install_grpcurl() {
  if [[ -x "$tools/bin/grpcurl" && "$("$tools/bin/grpcurl" -version 2>&1)" == *"$GRPCURL_VERSION"* ]]; then
    return
  fi
  echo "installing grpcurl $GRPCURL_VERSION into $tools/bin"
  GOBIN="$tools/bin" go install -ldflags "-X main.version=$GRPCURL_VERSION" \
    "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
}

mkdir -p "$tools/bin"
install_helm
install_venv

step() { echo "== $*"; }

step "hadolint deploy/docker/Dockerfile"
"$venv/bin/hadolint" "$here/docker/Dockerfile"

step "shellcheck"
"$venv/bin/shellcheck" "$here/test.sh"
"$venv/bin/shellcheck" --shell=sh "$chart/files/claim-complete.sh"

step "ruff"
export RUFF_CACHE_DIR="$tools/ruff-cache"
"$venv/bin/ruff" check --quiet "$here/tests"
"$venv/bin/ruff" format --check --quiet "$here/tests"

step "helm lint --strict (default values)"
"$helm" lint "$chart" --strict --kube-version "$NEWEST_K8S" --set database.existingSecret=sentinel-db
step "helm lint --strict (every optional feature on)"
"$helm" lint "$chart" --strict --kube-version "$NEWEST_K8S" -f "$here/tests/values-all-features.yaml"

step "helm lint --strict (every optional part off)"
"$helm" lint "$chart" --strict --kube-version "$NEWEST_K8S" -f "$here/tests/values-minimal.yaml"

step "rendered chart: Kubernetes schemas (strict) and assertions"
"$venv/bin/python" "$here/tests/check_chart.py" "$helm"

if [[ -n "${SENTINEL_ADDR:-}" ]]; then
  step "the real server run as the chart runs it (migration Job, settings, probes, helm test script, SIGTERM)"
  : "${SENTINEL_BIN:?SENTINEL_BIN must be set with SENTINEL_ADDR (scripts/with-server.sh sets both)}"
  : "${SENTINEL_DATABASE_URL:?SENTINEL_DATABASE_URL must be set with SENTINEL_ADDR (scripts/with-server.sh sets both)}"
  install_grpcurl
  "$venv/bin/python" "$here/tests/check_live.py" "$helm" "$tools/bin/grpcurl"
else
  step "live checks: not run, SENTINEL_ADDR is unset (scripts/with-server.sh deploy/test.sh runs them)"
fi
echo "deploy checks passed"
