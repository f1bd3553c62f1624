"""Layering rules, checked from the imports themselves.

The folders of `fruits_tl/` are the layers (core, data, models, training, jobs, cli): imports
point downward only, a job never imports another job, nothing imports the binaries, only the
binaries define flags, and importing the package touches no device. A new module goes in the
folder of its layer.

One rule about tf.data functions is checked from the source too: every function the package
hands to a dataset's `map` or `filter` is marked `tf.autograph.experimental.do_not_convert`
(converting one cost the first input pipeline built in a process 130-200 ms; BENCHMARKS.md 5c).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from conftest import REPO

PACKAGE = os.path.join(REPO, "fruits_tl")


def _modules():
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, REPO), ast.parse(open(path, encoding="utf-8").read())


# The folders are the layers, lowest first. A module may import modules of its own folder or of
# a lower one; a job may not import another job; nothing imports the binaries (`cli`).
ORDER = ["core", "data", "models", "training", "jobs", "cli"]


def _layer_of(module: str) -> str:
    folder = module.split(".")[0]
    if folder not in ORDER:
        raise AssertionError(
            f"fruits_tl.{module} is in no layer: put it in one of the folders {ORDER}"
        )
    return folder


def test_the_top_level_holds_only_the_folders():
    top = sorted(name for name in os.listdir(PACKAGE) if not name.startswith((".", "__pycache__")))
    assert top == sorted(ORDER + ["__init__.py"])
    for folder in ORDER:
        with open(os.path.join(PACKAGE, folder, "__init__.py"), encoding="utf-8") as f:
            init = ast.parse(f.read())
        # Each folder's __init__ says what the folder owns, and holds nothing else.
        assert ast.get_docstring(init), folder
        assert len(init.body) == 1, f"fruits_tl/{folder}/__init__.py holds more than its docstring"


def _package_imports(path: str, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module under fruits_tl) for every import of the package, in functions too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "fruits_tl":
                found += [(node.lineno, alias.name) for alias in node.names]
            elif node.module.count(".") == 1 and node.module.startswith("fruits_tl."):
                folder = node.module[len("fruits_tl.") :]  # from fruits_tl.<folder> import <module>
                found += [(node.lineno, f"{folder}.{alias.name}") for alias in node.names]
            elif node.module.startswith("fruits_tl."):
                found.append((node.lineno, node.module[len("fruits_tl.") :]))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name[len("fruits_tl.") :])
                for alias in node.names
                if alias.name.startswith("fruits_tl.")
            ]
    return found


def _offenders(name: str, path: str, tree: ast.AST) -> list[str]:
    """The imports of module `name` that break the layer rules."""
    own = _layer_of(name)
    offenders = []
    for line, imported in _package_imports(path, tree):
        if imported == "__version__":
            continue
        theirs = _layer_of(imported)
        if ORDER.index(theirs) > ORDER.index(own):
            offenders.append(f"{path}:{line} ({own}) imports {imported} ({theirs}): points up")
        elif own == theirs == "jobs" and imported.split(".")[:2] != name.split(".")[:2]:
            offenders.append(f"{path}:{line}: job {name} imports job {imported}")
    return offenders


def test_imports_point_down_the_folders_and_jobs_import_no_job():
    offenders = []
    for path, tree in _modules():
        name = os.path.splitext(os.path.relpath(path, "fruits_tl"))[0].replace(os.sep, ".")
        if not name.endswith("__init__"):
            offenders += _offenders(name, path, tree)
    assert offenders == []


def test_the_layer_check_catches_an_upward_and_a_job_to_job_import():
    upward = ast.parse("def f():\n    from fruits_tl.jobs import train\n")
    assert _offenders("data.pipeline", "pipeline.py", upward) == [
        "pipeline.py:2 (data) imports jobs.train (jobs): points up"
    ]
    sideways = ast.parse(
        "from fruits_tl.jobs import evaluate\nfrom fruits_tl.data import pipeline\n"
        "import fruits_tl.cli.common\n"
    )
    assert _offenders("jobs.export", "export.py", sideways) == [
        "export.py:1: job jobs.export imports job jobs.evaluate",
        "export.py:3 (jobs) imports cli.common (cli): points up",
    ]


# Maps that stay converted on purpose: the bench's `idfd` variant is the tutorials' code.
CONVERTED_ON_PURPOSE = {("fruits_tl/jobs/benchmark.py", "_idfd_epochs")}


def _is_do_not_convert(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute | ast.Name) and ast.unparse(node).endswith(
        "do_not_convert"
    )


def _converted_dataset_functions(path: str, tree: ast.AST) -> list[str]:
    """`map`/`filter` calls in `tree` whose function AutoGraph would convert."""
    marked = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and any(_is_do_not_convert(d) for d in node.decorator_list)
    }
    marked |= {  # name = tf.autograph.experimental.do_not_convert(...)
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and _is_do_not_convert(node.value.func)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    offenders = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        if (path, function.name) in CONVERTED_ON_PURPOSE:
            continue
        for node in ast.walk(function):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("map", "filter")
                and node.args
            ):
                continue
            given = node.args[0]
            if isinstance(given, ast.Call) and _is_do_not_convert(given.func):
                continue
            if isinstance(given, ast.Name) and given.id in marked:
                continue
            offenders.append(f"{path}:{node.lineno}: .{node.func.attr}({ast.unparse(given)[:40]})")
    return sorted(set(offenders))


def test_every_dataset_function_is_kept_from_autograph():
    offenders = []
    for path, tree in _modules():
        offenders += _converted_dataset_functions(path, tree)
    assert offenders == []


def test_the_autograph_check_catches_a_plain_lambda_and_function():
    source = (
        "def f(dataset):\n"
        "    def g(x):\n"
        "        return x\n"
        "    @tf.autograph.experimental.do_not_convert\n"
        "    def h(x):\n"
        "        return x\n"
        "    return dataset.map(lambda x: x).filter(g).map(h).map(\n"
        "        tf.autograph.experimental.do_not_convert(lambda x: x))\n"
    )
    assert _converted_dataset_functions("m.py", ast.parse(source)) == [
        "m.py:7: .filter(g)",
        "m.py:7: .map(lambda x: x)",
    ]


def test_only_cli_defines_absl_flags():
    offenders = []
    for path, tree in _modules():
        if path.startswith(os.path.join("fruits_tl", "cli")):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("DEFINE")
            ):
                offenders.append(f"{path}:{node.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names]
                module = getattr(node, "module", None) or ""
                if module == "absl" and "flags" in names or "absl.flags" in names:
                    offenders.append(f"{path}:{node.lineno} imports absl.flags")
    assert offenders == []


# Ops that run Python inside a tf.data pipeline (under the interpreter's lock, one call at a
# time): none belongs in the package's per-batch paths, which read the store by TensorFlow ops.
PYTHON_IN_THE_GRAPH = {"numpy_function", "py_function", "from_generator"}


def _python_in_the_graph(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in PYTHON_IN_THE_GRAPH
    ]


def test_no_python_call_runs_inside_a_pipeline():
    offenders = [
        f"{path}:{line}" for path, tree in _modules() for line in _python_in_the_graph(tree)
    ]
    assert offenders == []
    # The check sees one where there is one.
    assert _python_in_the_graph(ast.parse("tf.numpy_function(f, [x], tf.uint8)")) == [1]


def test_nothing_outside_cli_imports_cli():
    offenders = []
    for path, tree in _modules():
        if path.startswith(os.path.join("fruits_tl", "cli")):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fruits_tl.cli"):
                offenders.append(path)
            if isinstance(node, ast.Import) and any(
                a.name.startswith("fruits_tl.cli") for a in node.names
            ):
                offenders.append(path)
    assert offenders == []


@pytest.mark.slow
def test_importing_the_package_touches_no_device():
    # If any import initialised TensorFlow's devices, configuring logical devices would raise.
    modules = sorted(
        "fruits_tl." + os.path.splitext(path)[0].split(os.sep, 1)[1].replace(os.sep, ".")
        for path, _ in _modules()
        if not path.endswith("__init__.py")
    )
    code = (
        "import importlib, tensorflow as tf\n"
        "import fruits_tl\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, "
        "[tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "print('untouched')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "untouched" in result.stdout


def test_no_function_is_longer_than_60_lines():
    """A function a reader can hold in their head: 60 lines at most, docstring included."""
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long
