#!/usr/bin/env python
"""How much a newcomer reads to follow the default `fruits-tl-train` run.

Runs `fruits-tl-train` in a child process the default way (a folder, features mode, one
worker) on a small synthetic folder, lists the package modules that run imported, and counts
their lines of code: docstrings, comments and blank lines not counted.

  tools/default_path.py            # the table and the two totals
  tools/default_path.py --json     # the same as JSON

The run uses random weights, alpha 0.25 and 32x32 images so that it takes seconds; those
flags change no import. Its head does not learn on random features, so the underfit guard
runs the learning-rate finder, as it does on the tutorial's recipe with real weights
(`--learning_rate=1e-4`): the finder is counted. The options (augmentation, fine-tuning, the
tf.data service, TFDS records, several workers) import more, inside the functions that need
them, and are not counted.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import subprocess
import sys
import tempfile
import tokenize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, sys
from fruits_tl.cli import train_main
sys.argv = ["fruits-tl-train"] + sys.argv[1:]
try:
    train_main.run()
except SystemExit as stop:
    if stop.code not in (0, None):
        raise
print("MODULES " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "fruits_tl")))
"""


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                docstring_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            continue
        lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstring_lines)


def imported_modules() -> list[str]:
    """The package modules a default training run imports, found by running one."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        subprocess.run(
            [sys.executable, "-m", "fruits_tl.cli.synthetic_main", f"--dest={data}"]
            + ["--num_classes=3", "--train_per_class=8", "--test_per_class=3"],
            check=True,
            capture_output=True,
            env=env,
        )
        run = subprocess.run(
            [sys.executable, "-c", _CHILD, f"--data_dir={data}", f"--model_dir={tmp}/model"]
            + ["--weights=none", "--alpha=0.25", "--image_size=32", "--epochs=1"],
            capture_output=True,
            text=True,
            env=env,
        )
    found = [line for line in run.stdout.splitlines() if line.startswith("MODULES ")]
    if run.returncode != 0 or not found:
        sys.exit(f"the training run failed:\n{run.stderr[-3000:]}")
    return json.loads(found[-1][len("MODULES ") :])


def module_path(name: str) -> str | None:
    base = os.path.join(REPO, *name.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.exists(candidate):
            return candidate
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = []
    for name in imported_modules():
        path = module_path(name)
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            rows.append((name, code_lines(f.read())))
    # A folder's __init__ that holds only its docstring is not reading.
    modules = [(name, lines) for name, lines in rows if lines > 0]
    total = sum(lines for _, lines in modules)
    if args.json:
        print(json.dumps({"modules": len(modules), "code_lines": total, "each": dict(modules)}))
        return
    for name, lines in sorted(modules, key=lambda row: -row[1]):
        print(f"{lines:6d}  {name}")
    print(
        f"{len(modules)} modules, {total} lines of code (docstrings, comments, blanks not counted)"
    )


if __name__ == "__main__":
    main()
