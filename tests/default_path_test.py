"""tools/default_path.py: what a newcomer reads to follow the default training run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "default_path", os.path.join(REPO, "tools", "default_path.py")
)
default_path = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(default_path)

# The ceiling of the default path, in modules (issue 29's bound) and in lines of code (the
# figure this layout reached, 2026-12-06: BUILD_NOTES.md, "The default path"). A change that
# adds to the path must raise the figure here, on purpose.
MAX_MODULES = 18
MAX_CODE_LINES = 4850


def test_code_lines_leave_out_docstrings_comments_and_blank_lines():
    source = (
        '"""Module docstring,\n'
        'two lines."""\n'
        "\n"
        "import os  # a comment\n"
        "# a comment line\n"
        "\n"
        "def f(x):\n"
        '    """Docstring."""\n'
        "    text = '''a string\n"
        "    that spans lines'''\n"
        "    return (x,\n"
        "            text)\n"
        "\n"
        "class C:\n"
        '    """One line."""\n'
        "    y = 1\n"
    )
    # import, def, the 2-line string assignment, the 2-line return, class, y = 1.
    assert default_path.code_lines(source) == 8


@pytest.mark.slow
def test_the_default_run_stays_within_its_reading_budget():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "default_path.py"), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    # The job and the binary are on it; the options' modules are not.
    assert {"fruits_tl.jobs.train", "fruits_tl.cli.train_main"} <= set(figures["each"])
    assert not {"fruits_tl.data.augment", "fruits_tl.data.data_service"} & set(figures["each"])
    assert figures["modules"] == len(figures["each"]) <= MAX_MODULES
    assert figures["code_lines"] == sum(figures["each"].values()) <= MAX_CODE_LINES
