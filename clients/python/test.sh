#!/usr/bin/env bash
# Lints, type-checks and tests the Python client against a real server:
#   scripts/with-server.sh clients/python/test.sh      (from the repository root)
# Creates or reuses clients/python/.venv with the pinned tools, installs the package in editable
# mode, then runs ruff, mypy --strict (hand-written code, tests and examples) and pytest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [[ -z "${SENTINEL_ADDR:-}" ]]; then
  echo "test.sh: SENTINEL_ADDR is not set; run it as scripts/with-server.sh clients/python/test.sh" >&2
  exit 2
fi

source "$here/_venv.sh"
cd "$here"

# Editable install, once: later runs see code changes without reinstalling. The check runs from
# / so that the folder itself is not on sys.path.
if ! (cd / && "$py" -c 'import os, sys, sentinel_client as m; sys.exit(os.path.dirname(m.__file__) != sys.argv[1])' \
    "$here/sentinel_client") 2>/dev/null; then
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps -e "$here"
fi

echo "== ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
echo "== mypy --strict"
"$venv/bin/mypy" --strict
echo "== pytest (server $SENTINEL_ADDR)"
status=0
"$venv/bin/pytest" -q -p no:cacheprovider "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit $status
