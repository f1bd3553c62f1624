"""What a training job reports: metrics.json (`TrainMetrics`), history.csv, batch_digests.csv,
the model files, and the pictures of a run (training curves, the learning-rate range test,
and evaluation's confusion matrix and most confident mistakes).

Every file is written atomically; metrics.json last, so its presence says the rest is complete.
Under several workers only the chief writes `model_dir` (`write_outputs`).

matplotlib is an optional extra (`pip install 'fruits_tl[plots]'`): without it every picture
function returns False and writes nothing (the CSVs hold the same figures), and `MISSING` is
the one line a job prints about it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import shutil
import tempfile

import keras
import numpy as np
from absl import logging

from fruits_tl.core import distribute, files
from fruits_tl.models import model

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
SKIPPED_FILE = "skipped_images.txt"
DIGESTS_FILE = "batch_digests.csv"
H5_FILE = "MobileNet_TransferLearning.h5"
LR_FIND_FILE = "lr_find.csv"
CURVES_PICTURE = "training_curves.png"
LR_FIND_PICTURE = "lr_find.png"


@dataclasses.dataclass(frozen=True)
class TrainMetrics:
    """metrics.json of a training job (`to_json` gives the file's contents).

    Attributes:
      mode, mode_reason: "images" or "features", and why.
      decode_seconds: The decode check, which fills the pixel store (cold: every file decoded
        once; warm: the store's checksums read).
      extract_seconds: Backbone pass over every split (features mode; 0 when reused or images).
      head_train_seconds: Training of the head (features mode) or the whole fit (images mode).
      features_reused: Features came from an earlier run's files.
      test_accuracy, test_top5_accuracy, test_loss: On the test split, of the final model.
      head_test_accuracy, head_test_top5_accuracy, head_test_loss: The same after the head
        phase (equal to the final ones without fine-tuning).
      test_source: "test folder" or "validation_split" (no test folder: the held-out part).
      num_classes, num_train_images, num_validation_images, num_test_images,
      num_skipped_images: The data.
      epochs, train_seconds, train_images_per_second: Training (extraction included).
      strategy, num_replicas, global_batch_size, per_replica_batch_size: Distribution.
      image_size, alpha, weights, optimizer, learning_rate: The recipe (learning_rate: the
        head's rate, the finder's choice with --learning_rate=auto).
      learning_rate_source: "flag" or "finder".
      lr_find_suggested: The finder's rate where it ran (auto, or the underfit guard), else None.
      underfit_warning: The underfit guard's warning, "" when the head learnt.
      augment: The --augment spec ("" for none).
      fine_tune_layers: --fine_tune_layers (0: no fine-tuning).
      fine_tuned_layers: The backbone layers whose weights fine-tuning trained.
      fine_tune_epochs, fine_tune_learning_rate, fine_tune_optimizer, fine_tune_seconds: The
        fine-tuning phase (0 and "" without one).
      trainable_parameters, frozen_parameters: Head and backbone sizes.
      total_seconds: From the data checks to the end of the test evaluation (saving
        excluded): the job's end-to-end time, the figure fruits-tl-bench --compare_modes uses.
    """

    mode: str
    mode_reason: str
    decode_seconds: float
    extract_seconds: float
    head_train_seconds: float
    features_reused: bool
    test_accuracy: float
    test_top5_accuracy: float
    test_loss: float
    head_test_accuracy: float
    head_test_top5_accuracy: float
    head_test_loss: float
    test_source: str
    num_classes: int
    num_train_images: int
    num_validation_images: int
    num_test_images: int
    num_skipped_images: int
    epochs: int
    train_seconds: float
    train_images_per_second: float
    strategy: str
    num_replicas: int
    global_batch_size: int
    per_replica_batch_size: int
    image_size: int
    alpha: float
    weights: str
    optimizer: str
    learning_rate: float
    learning_rate_source: str
    lr_find_suggested: float | None
    underfit_warning: str
    augment: str
    fine_tune_layers: int
    fine_tuned_layers: list
    fine_tune_epochs: int
    fine_tune_learning_rate: float
    fine_tune_optimizer: str
    fine_tune_seconds: float
    trainable_parameters: int
    frozen_parameters: int
    total_seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def history_to_csv(history: dict[str, list[float]]) -> str:
    """Renders per-epoch history as CSV with an `epoch` column first."""
    keys = sorted(history)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    epochs = max((len(v) for v in history.values()), default=0)
    for epoch in range(epochs):
        writer.writerow(
            [
                epoch + 1,
                *(f"{history[k][epoch]:.6g}" if epoch < len(history[k]) else "" for k in keys),
            ]
        )
    return out.getvalue()


def digests_to_csv(digests) -> str:
    """batch_digests.csv: per epoch, the digest of its batches' example indices in feed order
    and of the trainable weights at its end (compare two runs with diff)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", "batches", "indices_digest", "weights_digest"])
    for row in digests:
        writer.writerow(
            [row["epoch"], row["batches"], row["indices_digest"], row["weights_digest"]]
        )
    return out.getvalue()


def train_metrics(
    config,
    splits,
    trained,
    strategy,
    *,
    mode: tuple[str, str],
    parameters,
    decode_seconds: float,
    total_seconds: float,
) -> TrainMetrics:
    """The run's TrainMetrics: `trained` is what the phases returned (`phase.Trained`), `mode`
    is (mode, the reason it was chosen)."""
    tune = trained.fine_tune
    return TrainMetrics(
        mode=mode[0],
        mode_reason=mode[1],
        decode_seconds=decode_seconds,
        extract_seconds=trained.extract_seconds,
        head_train_seconds=trained.head_train_seconds,
        features_reused=trained.features_reused,
        test_accuracy=float(trained.test["accuracy"]),
        test_top5_accuracy=float(trained.test["top5_accuracy"]),
        test_loss=float(trained.test["loss"]),
        head_test_accuracy=float(trained.head_test["accuracy"]),
        head_test_top5_accuracy=float(trained.head_test["top5_accuracy"]),
        head_test_loss=float(trained.head_test["loss"]),
        test_source=(
            "validation_split"
            if splits.validation_is_test and splits.validation_source == "validation_split"
            else "test folder"
        ),
        num_classes=len(splits.class_names),
        num_train_images=len(splits.train),
        num_validation_images=len(splits.validation),
        num_test_images=len(splits.test),
        num_skipped_images=len(splits.bad_images),
        epochs=config.epochs,
        train_seconds=trained.train_seconds,
        train_images_per_second=len(splits.train)
        * (config.epochs + (config.fine_tune_epochs if tune else 0))
        / max(trained.train_seconds, 1e-9),
        strategy=distribute.describe(strategy),
        num_replicas=strategy.num_replicas_in_sync,
        global_batch_size=config.batch_size,
        per_replica_batch_size=distribute.per_replica_batch_size(strategy, config.batch_size),
        image_size=config.data.image_size,
        alpha=config.model.alpha,
        weights=config.model.weights,
        optimizer=config.optimizer,
        learning_rate=trained.learning_rate,
        learning_rate_source="finder" if config.find_learning_rate else "flag",
        lr_find_suggested=trained.finding.suggested if trained.finding else None,
        underfit_warning=trained.underfit_warning,
        augment=config.augment.spec(),
        **_fine_tune_figures(config, tune),
        trainable_parameters=parameters["trainable"],
        frozen_parameters=parameters["frozen"],
        total_seconds=total_seconds,
    )


def _fine_tune_figures(config, tune) -> dict:
    """The fine-tuning fields of TrainMetrics (0 and "" without a fine-tuning phase)."""
    return dict(
        fine_tune_layers=config.fine_tune_layers,
        fine_tuned_layers=list(tune.layers) if tune else [],
        fine_tune_epochs=config.fine_tune_epochs if tune else 0,
        fine_tune_learning_rate=config.fine_tune_learning_rate if tune else 0.0,
        fine_tune_optimizer=config.fine_tune_optimizer if tune else "",
        fine_tune_seconds=tune.seconds if tune else 0.0,
    )


def save_model_files(
    model_dir: str,
    *,
    trained: keras.Model,
    class_names: tuple[str, ...],
    metrics: TrainMetrics,
    history: dict,
    save_h5: bool = False,
    extra_text_files: dict[str, str] | None = None,
) -> None:
    """Writes the model and its reports into model_dir, each file atomically.

    metrics.json is written last, so its presence says the rest is complete.
    """
    files.check_free_space(
        model_dir,
        model.variable_bytes(trained) * (2 if save_h5 else 1) + (1 << 20),
        "the trained model's files",
    )
    for name, text in (extra_text_files or {}).items():
        files.write_text(os.path.join(model_dir, name), text)
    files.write_lines(os.path.join(model_dir, LABELS_FILE), list(class_names))
    with files.atomic_path(os.path.join(model_dir, MODEL_FILE)) as temporary:
        trained.save(temporary)
    if save_h5:
        with files.atomic_path(os.path.join(model_dir, H5_FILE)) as temporary:
            trained.save(temporary)
    files.write_text(os.path.join(model_dir, HISTORY_FILE), history_to_csv(history))
    files.write_json(os.path.join(model_dir, METRICS_FILE), metrics.to_json())


def write_outputs(config, role, classifier, splits, trained, metrics, history, extra_text_files):
    """model_dir's files (the chief's; another worker writes to a temporary folder of its own
    and removes it: the TF/Keras convention, every worker runs the same save code), then the
    finished run's checkpoints are removed."""
    extra = dict(extra_text_files or {})
    extra[DIGESTS_FILE] = digests_to_csv(trained.digests)
    if trained.finding is not None:
        extra[LR_FIND_FILE] = trained.finding.to_csv()
    if splits.bad_images:
        extra[SKIPPED_FILE] = "".join(f"{item}\n" for item in splits.bad_images)
    output_dir = (
        config.model_dir
        if role.is_chief
        else tempfile.mkdtemp(prefix=f"fruits-tl-worker-{role.index}-")
    )
    write_pictures(output_dir, history, trained.finding)
    save_model_files(
        output_dir,
        trained=classifier,
        class_names=splits.class_names,
        metrics=metrics,
        history=history,
        save_h5=config.save_h5,
        extra_text_files=extra,
    )
    if not role.is_chief:
        shutil.rmtree(output_dir, ignore_errors=True)
    elif not config.keep_checkpoints_on_success:
        for store in trained.checkpoints:
            store.remove()
        with contextlib.suppress(OSError):  # The checkpoint folder, if nothing else is in it.
            os.rmdir(config.resolved_checkpoint_dir())


def write_pictures(output_dir: str, history: dict, finding) -> None:
    """training_curves.png, and lr_find.png where the finder ran (`finding`: an
    `phase.Finding` or None); one line instead without matplotlib."""
    if not available():
        logging.info("%s", MISSING)
        return
    os.makedirs(output_dir, exist_ok=True)
    training_curves(history, os.path.join(output_dir, CURVES_PICTURE))
    if finding is not None:
        lr_find(
            finding.learning_rates,
            finding.losses,
            finding.suggested_step,
            os.path.join(output_dir, LR_FIND_PICTURE),
        )


# The pictures.

MISSING = (
    "matplotlib is not installed, so no pictures (.png) were written; the CSVs hold the same "
    "figures. pip install 'fruits_tl[plots]' to get them."
)
DPI = 80


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # Files only: no display, no GUI toolkit.
    import matplotlib.pyplot as plt

    return plt


def save_picture(figure, path: str) -> None:
    plt = pyplot()
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    plt.close(figure)


def training_curves(history: dict, path: str) -> bool:
    """Loss and accuracy per epoch, training and validation; a line where a new phase
    (history["phase"]) begins."""
    if not available():
        return False
    plt = pyplot()
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
    save_picture(figure, path)
    return True


def lr_find(learning_rates, losses, suggested_step: int, path: str) -> bool:
    """The range test's smoothed loss against the learning rate (log scale), the suggestion
    marked."""
    if not available():
        return False
    plt = pyplot()
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
    save_picture(figure, path)
    return True
