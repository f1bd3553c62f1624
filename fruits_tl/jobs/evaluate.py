"""Evaluation and prediction with a trained model: reports, confusion matrix, top-k.

`compute_report` is pure NumPy over labels and probabilities, so its arithmetic is tested on
known predictions; `evaluate_folder` and `predict_paths` run a saved model (any format of
`servable.load_servable`: model_dir, .keras, SavedModel, .tflite) through the input pipeline
(uint8 batches in file order) under a distribution strategy.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core import distribute, files, progress, stopping
from fruits_tl.core.config import DataConfig, require
from fruits_tl.data import decode, loading, store, train_input
from fruits_tl.models import model, servable
from fruits_tl.training import reporting

TFDS_SPLIT_NAMES = {
    "test": "test",
    "training": "train",
    "train": "train",
    "validation": "validation",
}


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """One evaluation (fruits-tl-evaluate).

    Attributes:
      model: A model_dir, .keras file, SavedModel folder or .tflite file.
      data: Where the images are (a folder, or the TFDS source).
      split: The folder inside data_dir to evaluate, or a TFDS split name (TFDS_SPLIT_NAMES).
      output_dir: Where the report goes; "" for `<model_dir>/evaluation-<split>`.
      batch_size: Global batch size.
      num_mistakes: How many of the most confident mistakes to keep.
      collective_timeout: Under several workers, seconds to wait for the others' predictions.
    """

    model: str
    data: DataConfig
    split: str = "Test"
    output_dir: str = ""
    batch_size: int = 32
    num_mistakes: int = 20
    collective_timeout: float = 300.0

    def __post_init__(self) -> None:
        require(bool(self.model), "model is required: the trained model to evaluate.")
        require(self.num_mistakes >= 0, f"num_mistakes must be >= 0, got {self.num_mistakes}.")
        require(
            1 <= self.batch_size <= 65536,
            f"batch_size must be in [1, 65536], got {self.batch_size}.",
        )
        require(
            self.data.data_source != "tfds" or self.split.lower() in TFDS_SPLIT_NAMES,
            f"--split={self.split} is not a split of the TFDS source (Test, Training, validation).",
        )

    def resolved_output_dir(self) -> str:
        if self.output_dir:
            return self.output_dir
        model_dir = (
            self.model
            if os.path.isdir(self.model)
            else os.path.dirname(os.path.abspath(self.model))
        )
        return os.path.join(model_dir, f"evaluation-{self.split}")


# Keras's SparseCategoricalCrossentropy clips probabilities to [epsilon, 1 - epsilon].
EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class ReportMetrics:
    """The headline figures of an evaluation (metrics.json)."""

    accuracy: float
    top5_accuracy: float
    loss: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    num_images: int
    num_classes: int
    num_mistakes: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ClassFigures:
    """One class's row of per_class.csv."""

    class_name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclasses.dataclass(frozen=True)
class Mistake:
    """One confident wrong prediction (a row of mistakes.csv)."""

    file_path: str
    true_class: str
    predicted_class: str
    probability: float


@dataclasses.dataclass(frozen=True, eq=False)
class Report:
    """An evaluation of one labelled split.

    Attributes:
      metrics: The headline figures.
      per_class: One row per class, in label order.
      confusion: [C, C] counts, rows true class, columns predicted class.
      mistakes: The most confident wrong predictions, highest probability first.
      class_names: The label map.
    """

    metrics: ReportMetrics
    per_class: tuple[ClassFigures, ...]
    confusion: np.ndarray
    mistakes: tuple[Mistake, ...]
    class_names: tuple[str, ...]


def _per_class_figures(confusion: np.ndarray):
    """Precision, recall, F1 and support of each class from the confusion matrix (0 where a
    class was never predicted or has no images)."""
    num_classes = len(confusion)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(
        true_positive, predicted_count, out=np.zeros(num_classes), where=predicted_count > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0
    )
    return precision, recall, f1, support


def compute_report(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    class_names: tuple[str, ...],
    file_paths: tuple[str, ...],
    num_mistakes: int = 20,
) -> Report:
    """Computes every figure of an evaluation from true labels and predicted probabilities.

    Precision of a class never predicted, and recall of a class with no images, are 0 (and
    such classes still count in the macro averages).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    predicted = probabilities.argmax(axis=1)
    k = model.top_k(num_classes)
    top_k = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    precision, recall, f1, support = _per_class_figures(confusion)
    true_probability = probabilities[np.arange(len(labels)), labels]
    count = len(labels)
    loss = (
        float(-np.mean(np.log(np.clip(true_probability, EPSILON, 1 - EPSILON)))) if count else 0.0
    )
    metrics = ReportMetrics(
        accuracy=float(np.mean(predicted == labels)) if count else 0.0,
        top5_accuracy=float(np.mean((top_k == labels[:, None]).any(axis=1))) if count else 0.0,
        loss=loss,
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        num_images=int(count),
        num_classes=num_classes,
        num_mistakes=int(np.sum(predicted != labels)),
    )
    per_class = tuple(
        ClassFigures(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(class_names)
    )
    (wrong,) = np.nonzero(predicted != labels)
    order = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:num_mistakes]
    mistakes = tuple(
        Mistake(
            file_path=file_paths[i],
            true_class=class_names[labels[i]],
            predicted_class=class_names[predicted[i]],
            probability=float(probabilities[i, predicted[i]]),
        )
        for i in order
    )
    return Report(
        metrics=metrics,
        per_class=per_class,
        confusion=confusion,
        mistakes=mistakes,
        class_names=tuple(class_names),
    )


def _csv(rows: list[list]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def save_report(output_dir: str, report: Report) -> None:
    """Writes per_class.csv, confusion_matrix.csv, mistakes.csv, their pictures, then
    metrics.json, each atomically."""
    os.makedirs(output_dir, exist_ok=True)
    per_class = [["class", "precision", "recall", "f1", "support"]] + [
        [r.class_name, f"{r.precision:.6f}", f"{r.recall:.6f}", f"{r.f1:.6f}", r.support]
        for r in report.per_class
    ]
    files.write_text(os.path.join(output_dir, "per_class.csv"), _csv(per_class))
    confusion = [["true \\ predicted", *report.class_names]] + [
        [name, *row.tolist()]
        for name, row in zip(report.class_names, report.confusion, strict=True)
    ]
    files.write_text(os.path.join(output_dir, "confusion_matrix.csv"), _csv(confusion))
    mistakes = [["file_path", "true_class", "predicted_class", "probability"]] + [
        [m.file_path, m.true_class, m.predicted_class, f"{m.probability:.6f}"]
        for m in report.mistakes
    ]
    files.write_text(os.path.join(output_dir, "mistakes.csv"), _csv(mistakes))
    save_pictures(output_dir, report)
    files.write_json(os.path.join(output_dir, "metrics.json"), report.metrics.to_json())


def save_pictures(output_dir: str, report: Report) -> None:
    """confusion_matrix.png and mistakes.png (one tile per row of mistakes.csv), or one line
    saying how to get them where matplotlib is missing."""
    if not reporting.available():
        logging.info("%s", reporting.MISSING)
        return
    confusion_matrix(
        report.confusion, report.class_names, os.path.join(output_dir, "confusion_matrix.png")
    )
    mistakes(
        [_picture(m.file_path) for m in report.mistakes],
        [m.true_class for m in report.mistakes],
        [m.predicted_class for m in report.mistakes],
        [m.probability for m in report.mistakes],
        os.path.join(output_dir, "mistakes.png"),
    )


def _picture(path: str, *, largest: int = 256) -> np.ndarray:
    """A mistake's image for its tile (at most `largest` pixels a side); grey where the file
    cannot be read (a TFDS record's name, a file removed since)."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError):
        return np.full((32, 32, 3), 128, np.uint8)
    if max(image.shape[:2]) > largest:
        image = tf.image.resize(image, [largest, largest], preserve_aspect_ratio=True)
    return np.asarray(tf.cast(image, tf.uint8))


def summary_table(report: Report, *, worst: int = 5) -> str:
    """A short human summary: headline metrics and the classes with the lowest F1."""
    m = report.metrics
    lines = [
        f"images {m.num_images}  classes {m.num_classes}  accuracy {m.accuracy:.4f}  "
        f"top-5 {m.top5_accuracy:.4f}  loss {m.loss:.4f}",
        f"macro precision {m.macro_precision:.4f}  recall {m.macro_recall:.4f}  "
        f"F1 {m.macro_f1:.4f}",
    ]
    rows = sorted(report.per_class, key=lambda r: (r.f1, r.class_name))[:worst]
    if rows:
        width = max([len("lowest F1 classes")] + [len(r.class_name) for r in rows])
        lines.append(f"{'lowest F1 classes'.ljust(width)}  precision  recall     f1  support")
        for r in rows:
            lines.append(
                f"{r.class_name.ljust(width)}  {r.precision:9.4f}  {r.recall:6.4f}  "
                f"{r.f1:5.4f}  {r.support:7d}"
            )
    return "\n".join(lines)


class _PredictProgress(keras.callbacks.Callback):
    """Feeds Keras's predict loop into a progress.Progress."""

    def __init__(self, counter: progress.Progress):
        super().__init__()
        self.counter = counter

    def on_predict_batch_end(self, batch, logs=None):
        outputs = (logs or {}).get("outputs")
        self.counter.add(len(outputs) if outputs is not None else 0)


def predict_batches(
    classifier: servable.Servable, batches: tf.data.Dataset, *, count: int
) -> np.ndarray:
    """Class probabilities for `count` images in the input pipeline's `(uint8 images, labels)`
    batches, in order; rows past `count` (a padded last batch, `pipeline.PADDING_LABEL`) are
    dropped.

    A Keras model runs through `predict` (under the strategy it was loaded in); the other
    formats take one batch at a time. With `count` 0 (a worker of a cluster with more workers
    than images) nothing is run: Keras's `predict` refuses an empty dataset.
    """
    if count == 0:
        return np.zeros((0, len(classifier.class_names)), np.float32)
    counter = progress.Progress(count, label=f"predict ({classifier.format})")
    images = batches.map(tf.autograph.experimental.do_not_convert(lambda pixels, labels: pixels))
    if classifier.keras_model is not None:
        result = np.asarray(
            classifier.keras_model.predict(images, verbose=0, callbacks=[_PredictProgress(counter)])
        )
        counter.finish()
        return result[:count]
    outputs = []
    for batch in images.as_numpy_iterator():
        outputs.append(classifier.predict_pixels(batch))
        counter.add(len(batch))
    return np.concatenate(outputs)[:count]


# Evaluation under several workers: chunks of at most this many rows, chunk k to worker
# k mod n (`store.owns_chunk`). Small, so a test split is shared among the workers.
EVALUATION_CHUNK = 256

# A split to evaluate, made from the model's label map and input size: (folder, its stored
# pixels).
SplitFor = Callable[[tuple[str, ...], int], tuple[loading.ImageFolder, store.StoredRows]]


def predict_stored(
    classifier: servable.Servable, examples, *, count: int, batch_size: int
) -> np.ndarray:
    """Probabilities for `count` stored images (a split's rows of the pixel store) in order:
    the one input pipeline in file order (the last batch padded) into `predict_batches`."""
    batches = train_input.file_order_batches(
        examples, np.zeros(count, np.int32), batch_size=batch_size
    )
    return predict_batches(classifier, batches, count=count)


def predict_sharded(
    classifier: servable.Servable,
    examples: store.StoredRows,
    *,
    count: int,
    strategy: tf.distribute.Strategy,
    batch_size: int,
    timeout: float | None = None,
) -> np.ndarray:
    """Probabilities for a split's stored images in order, each worker of a cluster predicting
    its share.

    The work is split by the package's one rule (`store.owns_chunk`: chunk k of the split's
    rows to worker k mod n, in chunks of at most `EVALUATION_CHUNK` rows, at least four per
    worker where there are enough rows); each worker predicts its
    rows on its own devices with its share of the global batch, and the shares are exchanged
    through one all-reduce (`distribute.gather_rows`), so every worker ends with the whole
    split and no file is shared. With one worker this is `predict_stored`.
    """
    role = distribute.worker_role(strategy)
    if role.count <= 1:
        return predict_stored(classifier, examples, count=count, batch_size=batch_size)
    chunk = max(1, min(EVALUATION_CHUNK, -(-count // (4 * role.count))))
    chunks = np.arange(count) // chunk
    mine = np.flatnonzero(store.owns_chunk(chunks, role.index, role.count))
    share = store.StoredRows(examples.array, examples.rows[mine])
    logging.info(
        "Worker %d of %d predicts %d of %d images", role.index, role.count, len(mine), count
    )
    part = predict_stored(
        classifier, share, count=len(mine), batch_size=max(1, batch_size // role.count)
    )
    stopping.point("evaluate:predicted")
    parts = distribute.gather_rows(strategy, part.astype(np.float32), timeout=timeout)
    probabilities = np.zeros((count, len(classifier.class_names)), np.float32)
    for index, rows in enumerate(parts):
        probabilities[store.owns_chunk(chunks, index, role.count)] = rows
    return probabilities


def evaluate_split(
    model_path: str,
    split_for: SplitFor,
    *,
    strategy: tf.distribute.Strategy,
    batch_size: int = 32,
    num_mistakes: int = 20,
    collective_timeout: float | None = None,
) -> Report:
    """Evaluates a saved model on a split made by `split_for(class_names, image_size)`.

    The split comes from the model's own label map and input size, decoded into the pixel
    store by its decode check. The model may be in any format `servable.load_servable`
    takes; the report is the same for each. Under several workers each predicts its share
    (`predict_sharded`) and every worker computes the whole report.
    """
    # Under several workers each runs the model on its own device: outside the cluster's scope.
    several = distribute.worker_role(strategy).count > 1
    with contextlib.nullcontext() if several else strategy.scope():
        classifier = servable.load_servable(model_path)
    folder, examples = split_for(classifier.class_names, classifier.image_size)
    probabilities = predict_sharded(
        classifier,
        examples,
        count=len(folder),
        strategy=strategy,
        batch_size=batch_size,
        timeout=collective_timeout,
    )
    return compute_report(
        folder.labels,
        probabilities,
        class_names=classifier.class_names,
        file_paths=folder.file_paths,
        num_mistakes=num_mistakes,
    )


def evaluate_folder(
    model_path: str,
    directory: str,
    *,
    strategy: tf.distribute.Strategy,
    batch_size: int = 32,
    num_mistakes: int = 20,
    skip_bad_images: bool = False,
    exclude_files: frozenset[str] = frozenset(),
    collective_timeout: float | None = None,
) -> Report:
    """Evaluates a saved model on a labelled folder (`<class>/<images>`) in file order.

    The decode check's one pass decodes the folder into a pixel store of this process
    (removed when it exits), which the prediction reads.

    Args:
      model_path: A model_dir, .keras file, SavedModel folder or .tflite file (labels.txt
        beside it; see servable.load_servable).
      directory: The folder to evaluate, e.g. `<data_dir>/Test`.
      strategy: Distribution strategy; the model is loaded in its scope.
      batch_size: Global batch size.
      num_mistakes: How many of the most confident mistakes to keep.
      skip_bad_images: Leave out undecodable files instead of raising.
      exclude_files: Files to leave out.
      collective_timeout: Under several workers, seconds to wait for the others' predictions.

    Returns:
      The Report.
    """

    def split_for(class_names, image_size):
        stores = store.SourceStores(store.temporary_directory(), image_size)
        folder, _ = loading.load_labeled_folder(
            directory,
            class_names=class_names,
            image_size=image_size,
            name="evaluation",
            skip_bad_images=skip_bad_images,
            exclude_files=exclude_files,
            check=stores.check,
        )
        return folder, stores.rows(folder)

    return evaluate_split(
        model_path,
        split_for,
        strategy=strategy,
        batch_size=batch_size,
        num_mistakes=num_mistakes,
        collective_timeout=collective_timeout,
    )


def evaluate(config: EvaluateConfig, *, strategy: tf.distribute.Strategy) -> Report:
    """The evaluation job: evaluates `config.model` on its split and writes the report.

    The split is a labelled folder (`<data_dir>/<split>`, checked against the model's label
    map) or a split of the fruits360 TFDS source. Under several workers (TF_CONFIG) each
    predicts its shard and only the chief writes the report; the others write nothing.
    """
    with distribute.clear_worker_errors(strategy, hint="Start every worker again."):
        return _evaluate(config, strategy=strategy)


def _evaluate(config: EvaluateConfig, *, strategy: tf.distribute.Strategy) -> Report:
    data_config = config.data
    if data_config.data_source == "tfds":
        split = TFDS_SPLIT_NAMES[config.split.lower()]

        def split_for(class_names, image_size):
            splits = loading.load_splits(dataclasses.replace(data_config, image_size=image_size))
            loading.check_same_classes(
                splits.class_names,
                class_names,
                where="the fruits360 TFDS dataset",
                expected_as="the model's labels.txt",
                noun="model class",
            )
            folder = getattr(splits, split)
            stores = store.SourceStores(store.temporary_directory(), image_size)
            return folder, stores.rows_or_stored(folder)

        report = evaluate_split(
            config.model,
            split_for,
            strategy=strategy,
            batch_size=config.batch_size,
            num_mistakes=config.num_mistakes,
            collective_timeout=config.collective_timeout,
        )
    else:
        report = evaluate_folder(
            config.model,
            os.path.join(data_config.data_dir, config.split),
            strategy=strategy,
            batch_size=config.batch_size,
            num_mistakes=config.num_mistakes,
            skip_bad_images=data_config.skip_bad_images,
            exclude_files=loading.load_exclude_list(data_config.exclude_list),
            collective_timeout=config.collective_timeout,
        )
    if distribute.worker_role(strategy).is_chief:  # Under several workers, only the chief writes.
        save_report(config.resolved_output_dir(), report)
    return report


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Top-k classes of one file, or why it could not be classified."""

    path: str
    top: tuple[tuple[str, float], ...] = ()
    error: str = ""


def predict_paths(
    model_path: str,
    inputs: list[str],
    *,
    strategy: tf.distribute.Strategy,
    top_k: int = 5,
    batch_size: int = 32,
    exclude_files: frozenset[str] = frozenset(),
) -> list[Prediction]:
    """Classifies image files (and the images inside folders); unreadable files get an error.

    Returns:
      One Prediction per file, in input order.
    """
    with strategy.scope():
        classifier = servable.load_servable(model_path)
    class_names = classifier.class_names
    listed = {os.path.abspath(p) for p in exclude_files}
    paths = [p for p in collect_image_paths(inputs) if os.path.abspath(p) not in listed]
    missing = {p: "no such file" for p in paths if not os.path.isfile(p)}
    candidates = sorted({p for p in paths if p not in missing})
    if classifier.predict_encoded is not None:
        # A SavedModel decodes inside (serve_jpeg): the files' bytes go straight in.
        bad = {b.path: b.reason for b in decode.find_bad_images(candidates)}
        errors = {**missing, **bad}
        good = [p for p in paths if p not in errors]
        return _predict_encoded(classifier, paths, good, errors, top_k=top_k, batch_size=batch_size)
    # The decode check's one pass decodes each file into a pixel store of this process; the
    # one input pipeline reads it in file order (the last batch padded).
    stores = store.SourceStores(store.temporary_directory(), classifier.image_size)
    bad = {b.path: b.reason for b in stores.check("predict", candidates)}
    errors = {**missing, **bad}
    good = [p for p in candidates if p not in errors]
    probabilities = np.zeros((0, len(class_names)))
    if good:
        folder = loading.folder_of_files(good, image_size=classifier.image_size, name="predict")
        probabilities = predict_stored(
            classifier, stores.rows(folder), count=len(good), batch_size=batch_size
        )
    by_path = dict(zip(good, probabilities, strict=True))
    k = min(top_k, len(class_names))
    results = []
    for path in paths:
        if path in errors:
            results.append(Prediction(path=path, error=errors[path]))
            continue
        row = by_path[path]
        order = np.argsort(-row, kind="stable")[:k]
        results.append(
            Prediction(path=path, top=tuple((class_names[i], float(row[i])) for i in order))
        )
    return results


def _predict_encoded(
    classifier: servable.Servable,
    paths: list[str],
    good: list[str],
    errors: dict,
    *,
    top_k: int,
    batch_size: int,
) -> list[Prediction]:
    """Predictions from a SavedModel's serve_jpeg signature (its top-k, at most `top_k`)."""
    top: dict[str, tuple[tuple[str, float], ...]] = {}
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        contents = []
        for path in chunk:
            with open(path, "rb") as stream:
                contents.append(stream.read())
        names, probabilities, _ = classifier.predict_encoded(contents)
        for path, row_names, row_probabilities in zip(chunk, names, probabilities, strict=True):
            top[path] = tuple(
                (name.decode("utf-8"), float(p))
                for name, p in zip(row_names, row_probabilities, strict=True)
            )[:top_k]
    return [
        Prediction(path=p, error=errors[p]) if p in errors else Prediction(path=p, top=top[p])
        for p in paths
    ]


# The pictures of an evaluation (matplotlib optional, as for the training curves).

# Mistakes shown at most, and tiles per row of their grid.
MAX_MISTAKES = 25
TILE_COLUMNS = 5
TILE_INCHES = 2.0


def confusion_matrix(matrix: np.ndarray, class_names, path: str, *, pairs: int = 10) -> bool:
    """The confusion matrix (rows: true class, columns: predicted), on a log colour scale so
    that single mistakes show beside the diagonal; the `pairs` most confused (true, predicted)
    pairs circled and named in a list beside it, as ~100 class names cannot label the axes."""
    if not reporting.available():
        return False
    plt = reporting.pyplot()
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
    reporting.save_picture(figure, path)
    return True


def _grid(tiles: int) -> tuple[int, int]:
    """(columns, rows) of the mistakes grid for this many tiles (one tile at least)."""
    columns = max(1, min(TILE_COLUMNS, tiles))
    return columns, max(1, math.ceil(tiles / columns))


def mistakes(images, true_names, predicted_names, probabilities, path: str) -> bool:
    """A grid of the most confident mistakes (fastai's plot_top_losses): each tile the image,
    its true class, the predicted class and the predicted probability. One tile per mistake
    given (at most MAX_MISTAKES: pass them most confident first)."""
    if not reporting.available():
        return False
    plt = reporting.pyplot()
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
    reporting.save_picture(figure, path)
    return True


def collect_image_paths(inputs: list[str]) -> list[str]:
    """Expands folders (recursively, image extensions only) and keeps files as given."""
    paths = []
    for item in inputs:
        paths += loading.walk_images(item) if os.path.isdir(item) else [item]
    return paths
