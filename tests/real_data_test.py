"""Real Fruits-360 images with real ImageNet weights (skipped where ../shared is absent)."""

from __future__ import annotations

import json

import pytest
from conftest import FRUITS_SAMPLE, NO_TOP_WEIGHTS, needs_fruits_sample, needs_weights, run_main

from fruits_tl.cli import train_main


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
