"""TensorBoard scalars from training, read back with TensorBoard's own event reader."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_main

from fruits_tl.cli import train_main

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard package (test extra) is not installed",
)


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [
            (event.step, float(tf.make_ndarray(event.tensor_proto)))
            for event in accumulator.Tensors(tag)
        ]
        for tag in accumulator.Tags()["tensors"]
    }


@pytest.mark.parametrize(
    "extra, steps",
    [
        pytest.param([], [0, 1], id="head"),
        pytest.param(
            ["--fine_tune_layers=6", "--fine_tune_epochs=1"],
            [0, 1, 2],
            id="fine_tune",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_train_and_validation_runs_overlay_with_the_history(
    tiny_dataset, tmp_path, capsys, extra, steps
):
    # With fine-tuning, its epoch continues the head's curves (step 2 after steps 0 and 1).
    board = tmp_path / "tb"
    model_dir = tmp_path / "run"
    args = [
        f"--data_dir={tiny_dataset}",
        f"--model_dir={model_dir}",
        "--alpha=0.25",
        "--image_size=32",
        "--weights=none",
        "--epochs=2",
        "--batch_size=4",
        "--verbose=0",
        f"--tensorboard_dir={board}",
        *extra,
    ]
    assert run_main(train_main, args) == 0, capsys.readouterr().err
    assert sorted(p.name for p in board.iterdir()) == ["train", "validation"]
    train, validation = _scalars(board / "train"), _scalars(board / "validation")
    # Keras's TensorBoard layout: the same tags in both runs, so the curves overlay.
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_top5_accuracy"):
        assert tag in train and tag in validation, (tag, sorted(train), sorted(validation))
    assert "epoch_images_per_second" in train
    with open(model_dir / "history.csv") as stream:
        history = list(csv.DictReader(stream))
    assert [step for step, _ in train["epoch_loss"]] == steps
    np.testing.assert_allclose(
        [v for _, v in train["epoch_loss"]], [float(r["loss"]) for r in history], rtol=1e-5
    )
    np.testing.assert_allclose(
        [v for _, v in validation["epoch_accuracy"]],
        [float(r["val_accuracy"]) for r in history],
        rtol=1e-5,
    )
