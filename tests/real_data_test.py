"""Real Fruits-360 images with real ImageNet weights (skipped where ../shared is absent)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from conftest import FRUITS_SAMPLE, NO_TOP_WEIGHTS, needs_fruits_sample, needs_weights, run_main

from fruits_tl.cli import train_main

# Starts processes or servers, or trains on the real sample: the slow tier.
pytestmark = pytest.mark.slow


@pytest.mark.real_data
@needs_fruits_sample
@needs_weights
def test_frozen_imagenet_mobilenet_reaches_90_percent_on_real_fruits(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code = run_main(
        train_main,
        [
            f"--data_dir={FRUITS_SAMPLE}",
            f"--model_dir={model_dir}",
            f"--weights={NO_TOP_WEIGHTS}",
            "--alpha=0.25",
            "--image_size=128",
            "--learning_rate=1e-3",
            "--epochs=5",
            "--verbose=0",
        ],
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["num_classes"], metrics["num_train_images"], metrics["num_test_images"]) == (
        95,
        5700,
        1900,
    )
    assert metrics["test_accuracy"] >= 0.90, metrics


def _flat_four_classes(destination) -> str:
    """A flat folder: the sample's first 4 training classes, 40 images each, no test folder."""
    training = os.path.join(FRUITS_SAMPLE, "Training")
    for name in sorted(os.listdir(training))[:4]:
        os.makedirs(destination / name)
        for file_name in sorted(os.listdir(os.path.join(training, name)))[:40]:
            shutil.copy(os.path.join(training, name, file_name), destination / name)
    return str(destination)


@pytest.mark.real_data
@needs_fruits_sample
@needs_weights
def test_the_guard_warns_at_the_tutorials_rate_and_the_finders_rate_learns(tmp_path, caplog):
    # The tutorial's 1e-4 leaves this head near chance after 25 epochs; nothing used to warn.
    data_dir = _flat_four_classes(tmp_path / "flat")
    common = [
        f"--data_dir={data_dir}",
        "--train_subdir=.",
        "--validation_split=0.25",
        f"--weights={NO_TOP_WEIGHTS}",
        "--alpha=0.25",
        "--image_size=128",
        f"--features_dir={tmp_path / 'features'}",
        "--verbose=0",
    ]
    metrics = {}
    for name, rate in (("tutorial", "1e-4"), ("auto", "auto")):
        model_dir = tmp_path / name
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            code = run_main(
                train_main, [*common, f"--model_dir={model_dir}", f"--learning_rate={rate}"]
            )
        assert code == 0
        metrics[name] = json.loads((model_dir / "metrics.json").read_text())
        metrics[name]["log"] = caplog.text
    tutorial, auto = metrics["tutorial"], metrics["auto"]
    assert tutorial["underfit_warning"].startswith("The head looks underfit")
    assert "The head looks underfit" in tutorial["log"]
    assert "at learning rate 0.0001" in tutorial["underfit_warning"]
    assert tutorial["lr_find_suggested"] > 1e-4
    assert auto["learning_rate_source"] == "finder"
    assert auto["learning_rate"] == auto["lr_find_suggested"]
    assert auto["test_source"] == "validation_split"
    assert auto["test_accuracy"] >= 0.9, auto
    assert auto["underfit_warning"] == ""
    assert (tmp_path / "auto" / "lr_find.csv").is_file()
    assert (tmp_path / "auto" / "lr_find.png").is_file()
