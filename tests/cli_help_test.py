"""Each binary's --help lists exactly its own flags; a flag it does not use is refused."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys

import pytest
from conftest import run_main

BINARIES = {
    "fruits-tl-audit": "audit_main",
    "fruits-tl-bench": "bench_main",
    "fruits-tl-data-service": "data_service_main",
    "fruits-tl-download": "download_main",
    "fruits-tl-evaluate": "evaluate_main",
    "fruits-tl-export": "export_main",
    "fruits-tl-extract": "extract_main",
    "fruits-tl-predict": "predict_main",
    "fruits-tl-synthetic": "synthetic_main",
    "fruits-tl-tfds-build": "tfds_build_main",
    "fruits-tl-train": "train_main",
}


def _flag_names(module_name: str) -> set[str]:
    from fruits_tl.cli import common

    module = importlib.import_module(f"fruits_tl.cli.{module_name}")
    return set(common.binary_flag_names(module.__name__, module.USES))


@pytest.mark.slow  # A process per binary.
@pytest.mark.parametrize("program", sorted(BINARIES))
def test_help_lists_the_binarys_flags_and_no_other(program):
    script = os.path.join(os.path.dirname(sys.executable), program)
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    shown = {
        line.split(":")[0].strip()[2:].removeprefix("[no]")
        for line in result.stdout.splitlines()
        if line.startswith("  --")
    }
    own = _flag_names(BINARIES[program])
    others = set().union(*(_flag_names(m) for m in BINARIES.values())) - own
    assert own <= shown, sorted(own - shown)
    assert not shown & others, sorted(shown & others)
    assert "TF_CPP_MIN_LOG_LEVEL=0" in result.stdout


@pytest.mark.parametrize("module_name", sorted(BINARIES.values()))
def test_every_flag_a_binary_reads_is_one_of_its_flags(module_name):
    path = os.path.join(
        os.path.dirname(importlib.import_module("fruits_tl.cli").__file__), f"{module_name}.py"
    )
    tree = ast.parse(open(path, encoding="utf-8").read())
    read = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "FLAGS"
    }
    assert read <= _flag_names(module_name), sorted(read - _flag_names(module_name))


def test_a_flag_the_binary_does_not_use_is_refused(capsys):
    from fruits_tl.cli import predict_main

    assert run_main(predict_main, ["--model=somewhere", "--epochs=3", "photo.jpg"]) == 2
    err = capsys.readouterr().err
    assert "fruits-tl-predict does not use --epochs" in err


def test_train_flags_are_the_train_config_fields_and_round_trip():
    """The one train flag list: every TrainConfig field is a fruits-tl-train flag, and
    fruits-tl-bench --compare_modes runs a config by flags that parse back to it."""
    from absl import flags
    from absl.testing import flagsaver

    from fruits_tl.cli import train_main
    from fruits_tl.core import config
    from fruits_tl.jobs import compare

    table = config.train_flag_fields()
    accepted = _flag_names("train_main")
    assert set(table) <= accepted
    assert accepted - set(table) == {"strategy"}
    wanted = config.TrainConfig(
        data=config.DataConfig(
            data_dir="/d",
            validation_split=0.125,
            shuffle_buffer_size=7,
            seed=3,
            skip_bad_images=True,
            data_service_address="grpc://h:1",
        ),
        model=config.ModelConfig(alpha=0.25, weights="none", dropout=0.1),
        model_dir="/m",
        learning_rate=0.1 + 0.2,  # Not exactly 0.3: the text keeps every bit.
        mode="images",
        deterministic=True,
        checkpoint_every_steps=5,
        keep_checkpoints_on_success=True,
        augment=config.Augmentation.parse("flip_left_right,rotate=0.0625"),
        fine_tune_layers=6,
    )
    argv = compare.train_flags(wanted, strategy="mirrored")
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS([train_main.PROGRAM, *argv])
        assert train_main.build_config() == wanted and flags.FLAGS.strategy == "mirrored"


def test_a_data_service_port_out_of_range_is_refused_before_any_server_starts(capsys):
    from fruits_tl.cli import data_service_main

    assert run_main(data_service_main, ["--port=70000"]) == 2
    assert "--port must be in [0, 65535], got 70000" in capsys.readouterr().err
