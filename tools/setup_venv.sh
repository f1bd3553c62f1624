#!/usr/bin/env bash
# Sourced by tools/test.sh and tools/demo.sh: create .venv if absent and install the package
# with its test extra, pinned by tools/constraints.txt. Re-installs only when pyproject.toml
# or the constraints change (a stamp file in .venv records their digest).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FRUITS_TL_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv with $($python --version 2>&1)" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.fruits_tl-install-stamp"
want="$(cat "$repo/pyproject.toml" "$repo/tools/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing fruits_tl and pinned dependencies into $venv (first run takes a minute)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$repo/tools/constraints.txt" -e "$repo[test]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
