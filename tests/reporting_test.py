"""The pictures: decoded back and checked for what can be checked (size, tiles, presence)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from fruits_tl.jobs import evaluate
from fruits_tl.training import reporting


def _png(path) -> np.ndarray:
    return tf.io.decode_png(tf.io.read_file(str(path)), channels=3).numpy()


def _runs(mask_1d: np.ndarray) -> int:
    """Runs of True in a 1-D mask."""
    padded = np.concatenate([[False], mask_1d, [False]])
    return int(np.sum(padded[1:] & ~padded[:-1]))


@pytest.mark.parametrize("count", [1, 5, 7, 12])
def test_the_mistakes_grid_has_one_tile_per_mistake(tmp_path, count):
    # Pure red images: the tiles are the red blocks of the picture, counted row by row.
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    path = tmp_path / "mistakes.png"
    assert evaluate.mistakes(
        [red] * count, ["Apple"] * count, ["Pear"] * count, [0.9] * count, str(path)
    )
    picture = _png(path).astype(int)
    # Tiles of 2 x 2 inches at 80 dpi, at most 5 to a row.
    columns, rows = min(count, 5), -(-count // 5)
    assert (picture.shape[1], picture.shape[0]) == (160 * columns, 160 * rows)
    is_red = (picture[..., 0] > 200) & (picture[..., 1] < 60) & (picture[..., 2] < 60)
    tiles = 0
    rows = is_red.any(axis=1)
    padded = np.concatenate([[False], rows, [False]])
    starts = np.nonzero(padded[1:] & ~padded[:-1])[0]
    ends = np.nonzero(~padded[1:] & padded[:-1])[0]
    for start, end in zip(starts, ends, strict=True):
        tiles += _runs(is_red[start:end].any(axis=0))
    assert tiles == count


def test_training_curves_and_lr_find_pictures(tmp_path):
    history = {
        "loss": [1.0, 0.5, 0.4, 0.3],
        "accuracy": [0.5, 0.8, 0.85, 0.9],
        "val_loss": [1.1, 0.6, 0.5, 0.45],
        "val_accuracy": [0.4, 0.7, 0.8, 0.85],
        "phase": [1, 1, 2, 2],
    }
    assert reporting.training_curves(history, str(tmp_path / "curves.png"))
    assert _png(tmp_path / "curves.png").shape == (4 * reporting.DPI, 10 * reporting.DPI, 3)
    rates = list(np.geomspace(1e-7, 1, 50))
    assert reporting.lr_find(rates, list(np.linspace(2, 1, 50)), 20, str(tmp_path / "lr.png"))
    assert _png(tmp_path / "lr.png").shape == (4 * reporting.DPI, 6 * reporting.DPI, 3)


def test_the_confusion_matrix_names_the_most_confused_pairs(tmp_path):
    names = tuple(f"class {k}" for k in range(100))
    matrix = np.diag(np.full(100, 20))
    matrix[3, 7] = 5
    path = tmp_path / "confusion.png"
    assert evaluate.confusion_matrix(matrix, names, str(path))
    assert _png(path).shape == (9 * reporting.DPI, 14 * reporting.DPI, 3)


@pytest.mark.slow  # A process.
def test_without_matplotlib_nothing_is_drawn_and_one_line_says_why(tmp_path):
    # A real ImportError: the interpreter is told matplotlib does not exist.
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from fruits_tl.training import reporting\n"
        "print(reporting.available(),\n"
        f"      reporting.training_curves({{'loss': [1.0]}}, '{tmp_path}/c.png'))\n"
        "print(reporting.MISSING)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    first, second = result.stdout.splitlines()
    assert first == "False False"
    assert "pip install 'fruits_tl[plots]'" in second
    assert not (tmp_path / "c.png").exists()
