"""Layering rules: flags only in fruits_tl/cli, nothing imports cli, import touches no device."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGE = os.path.join(REPO, "fruits_tl")


def _modules():
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, REPO), ast.parse(open(path, encoding="utf-8").read())


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
