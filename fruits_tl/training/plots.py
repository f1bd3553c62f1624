"""Pictures of a run: training curves, the learning-rate range test, the confusion matrix and
the most confident mistakes.

matplotlib is an optional extra (`pip install 'fruits_tl[plots]'`): without it every function
here returns False and writes nothing (the CSVs beside the pictures hold the same figures),
and `MISSING` is the one line a job prints about it. Every picture is written atomically.
"""

from __future__ import annotations

import math

import numpy as np

from fruits_tl.core import files

MISSING = (
    "matplotlib is not installed, so no pictures (.png) were written; the CSVs hold the same "
    "figures. pip install 'fruits_tl[plots]' to get them."
)
# Mistakes shown at most, and tiles per row of their grid.
MAX_MISTAKES = 25
TILE_COLUMNS = 5
TILE_INCHES = 2.0
DPI = 80


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # Files only: no display, no GUI toolkit.
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str) -> None:
    plt = _pyplot()
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    plt.close(figure)


def training_curves(history: dict, path: str) -> bool:
    """Loss and accuracy per epoch, training and validation; a line where a new phase
    (history["phase"]) begins."""
    if not available():
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, history[metric], label="training")
        if history.get(f"val_{metric}"):
            axis.plot(epochs, history[f"val_{metric}"], label="validation")
        phases = history.get("phase", [])
        for epoch in range(1, len(phases)):
            if phases[epoch] != phases[epoch - 1]:
                axis.axvline(epoch + 0.5, color="gray", linestyle="--", label="fine-tuning starts")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    figure.tight_layout()
    _save(figure, path)
    return True


def lr_find(learning_rates, losses, suggested_step: int, path: str) -> bool:
    """The range test's smoothed loss against the learning rate (log scale), the suggestion
    marked."""
    if not available():
        return False
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(learning_rates, losses)
    axis.plot(
        [learning_rates[suggested_step]],
        [losses[suggested_step]],
        "ro",
        label=f"suggested {learning_rates[suggested_step]:.2g}",
    )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("smoothed training loss")
    axis.legend()
    figure.tight_layout()
    _save(figure, path)
    return True


def confusion_matrix(matrix: np.ndarray, class_names, path: str, *, pairs: int = 10) -> bool:
    """The confusion matrix (rows: true class, columns: predicted), on a log colour scale so
    that single mistakes show beside the diagonal; the `pairs` most confused (true, predicted)
    pairs circled and named in a list beside it, as ~100 class names cannot label the axes."""
    if not available():
        return False
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    matrix = np.asarray(matrix)
    count = len(class_names)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1]
    worst = [divmod(int(k), count) for k in order[:pairs] if off.flat[k] > 0]
    figure = plt.figure(figsize=(14, 9))
    axis = figure.add_axes([0.05, 0.08, 0.55, 0.85])
    image = axis.imshow(
        np.maximum(matrix, 0.5), norm=LogNorm(vmin=0.5, vmax=max(1, matrix.max())), cmap="viridis"
    )
    figure.colorbar(image, ax=axis, fraction=0.04, label="images")
    axis.set_xlabel("predicted class (index)")
    axis.set_ylabel("true class (index)")
    axis.set_title(f"confusion matrix, {count} classes")
    lines = ["most confused (true -> predicted: images)"]
    for rank, (true, predicted) in enumerate(worst, 1):
        axis.plot(predicted, true, "o", markersize=10, markerfacecolor="none", color="red")
        axis.annotate(
            str(rank),
            (predicted, true),
            color="red",
            xytext=(4, 4),
            fontsize=8,
            textcoords="offset points",
        )
        wrong = int(matrix[true, predicted])
        lines.append(f"{rank}. {class_names[true]} -> {class_names[predicted]}: {wrong}")
    if not worst:
        lines.append("none: no mistakes")
    figure.text(0.64, 0.93, "\n".join(lines), va="top", fontsize=9, family="monospace")
    _save(figure, path)
    return True


def _grid(tiles: int) -> tuple[int, int]:
    """(columns, rows) of the mistakes grid for this many tiles (one tile at least)."""
    columns = max(1, min(TILE_COLUMNS, tiles))
    return columns, max(1, math.ceil(tiles / columns))


def mistakes_grid_size(mistakes: int) -> tuple[int, int]:
    """(width, height) in pixels of mistakes.png for this many tiles."""
    columns, rows = _grid(mistakes)
    size = int(TILE_INCHES * DPI)
    return columns * size, rows * size


def mistakes(images, true_names, predicted_names, probabilities, path: str) -> bool:
    """A grid of the most confident mistakes (fastai's plot_top_losses): each tile the image,
    its true class, the predicted class and the predicted probability. One tile per mistake
    given (at most MAX_MISTAKES: pass them most confident first)."""
    if not available():
        return False
    plt = _pyplot()
    count = len(images)
    columns, rows = _grid(count)
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * TILE_INCHES, rows * TILE_INCHES), squeeze=False
    )
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k >= count:
            continue
        axis.imshow(np.asarray(images[k], np.uint8))
        axis.set_title(
            f"true {true_names[k]}\npred {predicted_names[k]} {probabilities[k]:.2f}",
            fontsize=7,
        )
    if count == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    figure.tight_layout()
    _save(figure, path)
    return True
