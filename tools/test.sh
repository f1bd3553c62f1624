#!/usr/bin/env bash
# The whole test suite from a fresh clone: sets up .venv, then runs pytest.
# Extra arguments go to pytest (e.g. tools/test.sh -k pipeline, tools/test.sh -m "not slow").
# Three pytest workers (pytest-xdist) by default, work-stealing: the tests that wait on their
# processes and servers leave CPU to the others (BUILD_NOTES.md, "The test suite's time").
# FRUITS_TL_TEST_WORKERS=0 runs in one process.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/tools/setup_venv.sh"
cd "$repo"
# Format and lint first (ruff, pinned in the test extra; configured in pyproject.toml).
ruff format --check fruits_tl tests tools
ruff check fruits_tl tests tools
set +e
python -m pytest -n "${FRUITS_TL_TEST_WORKERS:-3}" --dist worksteal "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "tools/test.sh: pytest collected no tests; treating that as a failure." >&2
  exit 1
fi
exit "$status"
