# Sourced by gen.sh and test.sh: creates or reuses clients/python/.venv with the pinned tools.
# Reinstalls only when requirements-dev.txt changed, so a warm run costs well under a second.
# Expects $here (this folder); sets $venv and $py.
venv="$here/.venv"
py="$venv/bin/python"
if [[ ! -x "$py" ]]; then
  "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || { echo "sentinel-client needs Python 3.9 or newer (set PYTHON=...)" >&2; exit 1; }
  "${PYTHON:-python3}" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$here/requirements-dev.txt" | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  "$py" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-dev.txt"
  echo "$want" >"$stamp"
fi
