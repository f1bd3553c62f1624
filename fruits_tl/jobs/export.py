"""Export of a trained classifier for serving: SavedModel on JPEG bytes, TFLite, and a report.

`export_model` writes into `output_dir`:
- `saved_model/`, via `keras.export.ExportArchive`, with two signatures:
  `serve_jpeg` (a batch of encoded images as tf.string, decoded inside with the package's one
  decode function; returns the top-k `classes` as strings, their `probabilities` and
  `indices`) and `serve_pixels` (uint8 [N, S, S, 3]; returns all `probabilities`). The class
  names are a constant inside it, and `labels.txt` is written inside it and beside it.
- `model_<quantize>.tflite` for each `quantize` choice: float32 ("none"), dynamic-range,
  float16, and full-integer int8 (int8 input and output, calibrated on a seeded choice of
  training images taken through the input pipeline). For int8 the head is first fine-tuned on the
  features the int8 backbone computes (`refit_head_for_int8`): post-training quantization of
  the small MobileNet moves the pooled features by about a fifth, and the trained head alone
  then loses several points of accuracy; with the backbone frozen this is what
  quantization-aware training of the model would train. The TFLite graph takes pixels as float32 in
  [0, 255] (int8: quantized pixels); JPEG decoding needs Select TF ops, which TF 2.21's
  Python interpreter cannot run, so decoding stays outside.
- `export_report.json`: per format, file size, test accuracy, top-1 agreement with the Keras
  model on the test split, and mean latency per image at batch 1 on this machine.

Every artifact is written to a temporary name and renamed into place, so a failed conversion
leaves no partial artifact; the error names the format that failed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core import files
from fruits_tl.core.config import DataConfig, UserInputError, require
from fruits_tl.data import decode, loading, store, train_input
from fruits_tl.models import model, servable
from fruits_tl.training import loop

EXPORT_FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "dynamic", "float16", "int8")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """One export of a trained classifier (see fruits-tl-export).

    Attributes:
      model: The trained model: a model_dir or a .keras file (labels.txt beside it).
      output_dir: Where the artifacts, labels.txt and export_report.json are written.
      formats: Subset of EXPORT_FORMATS.
      quantize: TFLite variants to write, a subset of QUANTIZATIONS ("none" is float32).
      top_k: Classes the SavedModel's serve_jpeg signature returns per image.
      representative_images: Training images (seeded choice) that calibrate int8.
      data: The data whose test split the report is measured on, and whose training split
        calibrates int8; None for no report and no int8.
      latency_images: Test images timed one at a time for the report's latency.
      int8_head_epochs: Epochs of fine-tuning the head on the int8 backbone's features of the
        training split before the int8 conversion; 0 keeps the trained head (plain
        post-training quantization).
      int8_head_learning_rate: RMSprop learning rate of that fine-tuning.
    """

    model: str
    output_dir: str
    formats: tuple[str, ...] = EXPORT_FORMATS
    quantize: tuple[str, ...] = QUANTIZATIONS
    top_k: int = 5
    representative_images: int = 300
    data: DataConfig | None = None
    latency_images: int = 100
    int8_head_epochs: int = 25
    int8_head_learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        require(
            bool(self.model), "model is required: the trained model_dir or .keras file to export."
        )
        require(bool(self.output_dir), "output_dir is required: where the exported files go.")
        unknown = [f for f in self.formats if f not in EXPORT_FORMATS]
        require(
            not unknown and bool(self.formats),
            f"formats must be a non-empty subset of {', '.join(EXPORT_FORMATS)}, got "
            f"{', '.join(self.formats) or '(none)'}.",
        )
        unknown = [q for q in self.quantize if q not in QUANTIZATIONS]
        require(
            not unknown,
            f"quantize takes {', '.join(QUANTIZATIONS)}; unknown: {', '.join(unknown)}.",
        )
        require(
            "tflite" not in self.formats or bool(self.quantize),
            "quantize must name at least one of none, dynamic, float16, int8 when formats has "
            "tflite.",
        )
        require(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}.")
        require(
            self.int8_head_epochs >= 0,
            f"int8_head_epochs must be >= 0, got {self.int8_head_epochs}.",
        )
        require(
            self.int8_head_learning_rate > 0,
            f"int8_head_learning_rate must be > 0, got {self.int8_head_learning_rate}.",
        )
        require(
            self.representative_images >= 1,
            f"representative_images must be >= 1, got {self.representative_images}.",
        )
        require(
            self.latency_images >= 1, f"latency_images must be >= 1, got {self.latency_images}."
        )
        require(
            self.data is not None or not ("tflite" in self.formats and "int8" in self.quantize),
            "quantize=int8 needs --data_dir: its training images calibrate the integer ranges.",
        )


# fruits-tl-bench's variants (fruits_tl.jobs.benchmark.VARIANTS implements exactly these names).

REPORT_FILE = "export_report.json"
SAVED_MODEL_DIR = "saved_model"


def tflite_file_name(quantize: str) -> str:
    """`model_float32.tflite` for "none", else `model_<quantize>.tflite`."""
    return f"model_{'float32' if quantize == 'none' else quantize}.tflite"


@dataclasses.dataclass(frozen=True)
class FormatReport:
    """One exported artifact, measured on the test split.

    Attributes:
      format: "keras", "saved_model" or "tflite-<quantize>".
      path: The artifact.
      size_bytes: Its size on disk (a folder: all its files).
      test_accuracy: Top-1 accuracy on the test split (None without data).
      agreement_with_keras: Fraction of test images whose top-1 class equals the Keras
        model's (None without data).
      latency_ms_per_image: Mean wall time of one batch-1 prediction, in milliseconds.
      head: "trained" (the model's head), or how it was refit for int8.
    """

    format: str
    path: str
    size_bytes: int
    test_accuracy: float | None
    agreement_with_keras: float | None
    latency_ms_per_image: float | None
    head: str = "trained"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote and measured.

    Attributes:
      output_dir: Where everything is.
      class_names: The label map.
      image_size: Input height and width.
      num_test_images: Images the report was measured on (0 without data).
      formats: One FormatReport per artifact, the Keras model first.
    """

    output_dir: str
    class_names: tuple[str, ...]
    image_size: int
    num_test_images: int
    formats: tuple[FormatReport, ...]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _disk_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _float_forward(classifier: keras.Model, *, features_only: bool = False):
    """The classifier's layers after its uint8 input, applied to float32 pixels in [0, 255].

    The TFLite graph starts from float pixels (int8 quantization needs a float input to
    quantize), so the uint8 input layer is left out; the layers after it are the model's own.
    `features_only` stops before the head's Dense layer: the pooled features.
    """
    layers = [
        layer for layer in classifier.layers if not isinstance(layer, keras.layers.InputLayer)
    ]
    if features_only:
        layers = layers[: [layer.name for layer in layers].index(model.HEAD_DENSE)]

    def forward(images):
        x = images
        for layer in layers:
            x = layer(x, training=False) if isinstance(layer, keras.Model) else layer(x)
        return x

    return forward


def write_saved_model(
    classifier: keras.Model, path: str, *, class_names: tuple[str, ...], image_size: int, top_k: int
) -> None:
    """Writes the serving SavedModel (serve_jpeg, serve_pixels) atomically, labels.txt inside."""
    k = min(top_k, len(class_names))
    names = tf.constant(list(class_names), tf.string)
    archive = keras.export.ExportArchive()
    archive.track(classifier)

    def serve_pixels(images):
        return {"probabilities": classifier(images, training=False)}

    def serve_jpeg(images):
        # add_endpoint traces with autograph off: tf.map_fn, not a Python loop.
        pixels = tf.map_fn(
            lambda contents: decode.decode_image(contents, image_size),
            images,
            fn_output_signature=tf.TensorSpec((image_size, image_size, 3), tf.uint8),
        )
        top = tf.math.top_k(classifier(pixels, training=False), k=k)
        return {
            "classes": tf.gather(names, top.indices),
            "probabilities": top.values,
            "indices": top.indices,
        }

    archive.add_endpoint(
        servable.SERVE_PIXELS,
        serve_pixels,
        input_signature=[tf.TensorSpec((None, image_size, image_size, 3), tf.uint8, name="images")],
    )
    archive.add_endpoint(
        servable.SERVE_JPEG,
        serve_jpeg,
        input_signature=[tf.TensorSpec((None,), tf.string, name="images")],
    )
    with files.atomic_directory(path) as temporary:
        archive.write_out(temporary, verbose=False)
        files.write_lines(os.path.join(temporary, servable.LABELS_FILE), list(class_names))


def representative_batches(examples, *, count: int, seed: int) -> tf.data.Dataset:
    """A seeded choice of `count` stored images of a split (`store.StoredRows`), one per
    batch, through the input pipeline."""
    count = min(count, len(examples))
    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=count, replace=False))
    subset = store.StoredRows(examples.array, examples.rows[chosen])
    return train_input.file_order_batches(subset, np.zeros(count, np.int32), batch_size=1)


def convert_tflite(
    classifier: keras.Model,
    *,
    quantize: str,
    image_size: int,
    representative: tf.data.Dataset | None,
    features_only: bool = False,
) -> bytes:
    """Converts the classifier (or, `features_only`, its pooled features) to a TFLite
    flatbuffer with one quantization choice."""
    forward = _float_forward(classifier, features_only=features_only)
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    archive.add_endpoint(
        "serving_default",
        lambda images: {"features" if features_only else "probabilities": forward(images)},
        input_signature=[tf.TensorSpec((1, image_size, image_size, 3), tf.float32, name="images")],
    )
    with tempfile.TemporaryDirectory(prefix="fruits-tl-tflite-") as directory:
        archive.write_out(directory, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            directory, signature_keys=["serving_default"]
        )
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":

            def calibration():
                for images, _ in representative:
                    yield [tf.cast(images, tf.float32)]

            converter.representative_dataset = calibration
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()


def int8_features(
    classifier: keras.Model,
    examples: store.StoredRows,
    *,
    image_size: int,
    representative: tf.data.Dataset,
) -> np.ndarray:
    """The pooled features of a split as the full-integer int8 backbone computes them.

    The backbone and pooling are converted exactly as the int8 model converts them (same
    calibration images), and the split's stored images go through the input pipeline in file
    order.
    """
    flatbuffer = convert_tflite(
        classifier,
        quantize="int8",
        image_size=image_size,
        representative=representative,
        features_only=True,
    )
    with tempfile.TemporaryDirectory(prefix="fruits-tl-int8-features-") as directory:
        path = os.path.join(directory, "features.tflite")
        files.write_bytes(path, flatbuffer)
        runner = servable.TFLiteRunner(path)
        count = len(examples)
        batches = train_input.file_order_batches(examples, np.zeros(count, np.int32), batch_size=64)
        parts = [runner(images) for images, _ in batches.as_numpy_iterator()]
    return np.concatenate(parts)[:count]


def refit_head_for_int8(
    classifier: keras.Model,
    folder: loading.ImageFolder,
    examples: store.StoredRows,
    *,
    image_size: int,
    representative: tf.data.Dataset,
    epochs: int,
    learning_rate: float,
    seed: int,
    batch_size: int = 32,
) -> keras.Model:
    """A copy of the classifier whose head is fine-tuned on the int8 backbone's features.

    Post-training int8 quantization of MobileNet alpha 0.25 moves the pooled features by about
    a fifth of their size (measured on Fruits-360, BENCHMARKS.md section 6), and the head,
    trained on float features, loses several points of accuracy on them. The backbone is
    frozen in this package, so training the head against the quantized backbone is what
    quantization-aware training would do: starting from the trained head, `epochs` passes of
    the package's training loop (RMSprop at `learning_rate`, shuffled with `seed`) over the
    training split's int8 features. The
    classifier itself is not changed; the copy is only converted to int8.
    """
    features = int8_features(
        classifier, examples, image_size=image_size, representative=representative
    )
    strategy = tf.distribute.get_strategy()
    head = model.build_head(features.shape[1], len(folder.class_names), seed=seed)
    head.get_layer(model.HEAD_DENSE).set_weights(
        classifier.get_layer(model.HEAD_DENSE).get_weights()
    )
    model.compile_classifier(
        head,
        optimizer="rmsprop",
        learning_rate=learning_rate,
        num_classes=len(folder.class_names),
    )
    loop.fit(
        head,
        examples=features.astype(np.float32),
        labels=folder.labels,
        epochs=epochs,
        batch_size=batch_size,
        strategy=strategy,
        seed=seed,
    )
    refit = keras.models.clone_model(classifier)
    refit.set_weights(classifier.get_weights())
    return model.assemble_classifier(refit, head)


@dataclasses.dataclass(frozen=True)
class _Measuring:
    """What export measures and calibrates with: None everywhere without --data_dir."""

    test_batches: tf.data.Dataset | None = None
    test_labels: np.ndarray | None = None
    latency_images: np.ndarray | None = None
    representative: tf.data.Dataset | None = None
    train_split: loading.ImageFolder | None = None
    train_images: store.StoredRows | None = None


def _measure(
    name: str,
    path: str,
    predict,
    measuring: _Measuring,
    *,
    reference: np.ndarray | None,
    head: str = "trained",
) -> tuple[FormatReport, np.ndarray | None]:
    """One artifact's FormatReport, and its top-1 predictions on the test split (or None)."""
    accuracy = agreement = latency = None
    predicted = None
    if measuring.test_batches is not None:
        outputs = [predict(images) for images, _ in measuring.test_batches.as_numpy_iterator()]
        # The last batch is padded: its padding rows' outputs are dropped.
        predicted = np.concatenate(outputs)[: len(measuring.test_labels)].argmax(axis=1)
        accuracy = float(np.mean(predicted == measuring.test_labels))
        if reference is not None:
            agreement = float(np.mean(predicted == reference))
    latency_images = measuring.latency_images
    if latency_images is not None and len(latency_images):
        predict(latency_images[:1])  # Warm-up (tracing, allocation) outside the timing.
        start = time.perf_counter()
        for image in latency_images:
            predict(image[None])
        latency = (time.perf_counter() - start) / len(latency_images) * 1000.0
    report = FormatReport(
        format=name,
        path=path,
        size_bytes=_disk_size(path),
        test_accuracy=accuracy,
        agreement_with_keras=agreement,
        latency_ms_per_image=latency,
        head=head,
    )
    logging.info("%s: %s", name, report)
    return report, predicted


def _load_measuring(
    config: ExportConfig, class_names: tuple[str, ...], image_size: int
) -> _Measuring:
    """The test batches, latency images and calibration images of --data_dir."""
    if config.data is None:
        return _Measuring()
    # The decode check's one pass decodes the images into a pixel store of this process.
    stores = store.SourceStores(store.temporary_directory(), image_size)
    splits = loading.load_splits(
        dataclasses.replace(config.data, image_size=image_size),
        check=stores.check if config.data.data_source == "folder" else None,
    )
    if splits.class_names != tuple(class_names):
        raise UserInputError(
            "The training classes of the data (--data_dir) differ from the labels.txt of "
            f"'{config.model}': export measures and calibrates on the data the model was "
            "trained for."
        )
    train, test = (stores.rows_or_stored(folder) for folder in (splits.train, splits.test))
    test_batches = train_input.file_order_batches(test, splits.test.labels, batch_size=32)
    latency_count = min(config.latency_images, len(splits.test))
    images = np.concatenate([images for images, _ in test_batches.as_numpy_iterator()])
    return _Measuring(
        test_batches=test_batches,
        test_labels=splits.test.labels,
        latency_images=images[:latency_count],
        representative=representative_batches(
            train, count=config.representative_images, seed=config.data.seed
        ),
        train_split=splits.train,
        train_images=train,
    )


def _export_saved_model(
    classifier: keras.Model, config: ExportConfig, class_names, image_size: int
) -> servable.Servable:
    path = os.path.join(config.output_dir, SAVED_MODEL_DIR)
    try:
        write_saved_model(
            classifier,
            path,
            class_names=tuple(class_names),
            image_size=image_size,
            top_k=config.top_k,
        )
    except OSError as error:
        raise UserInputError(
            f"The SavedModel cannot be written to '{path}' ({error.strerror or error})."
        ) from None
    return servable.load_servable(path)


def _export_tflite(
    classifier: keras.Model,
    config: ExportConfig,
    quantize: str,
    image_size: int,
    measuring: _Measuring,
) -> tuple[str, str]:
    """Converts (an int8 file after refitting the head, if configured) and writes one TFLite
    file: (its path, how its head was made)."""
    path = os.path.join(config.output_dir, tflite_file_name(quantize))
    logging.info("Converting to tflite-%s", quantize)
    head = "trained"
    converted = classifier
    if quantize == "int8" and config.int8_head_epochs:
        head = (
            f"refit on int8 features ({config.int8_head_epochs} epochs, "
            f"lr {config.int8_head_learning_rate:g})"
        )
        logging.info("Fine-tuning the head on int8 features: %s", head)
        converted = refit_head_for_int8(
            classifier,
            measuring.train_split,
            measuring.train_images,
            image_size=image_size,
            representative=measuring.representative,
            epochs=config.int8_head_epochs,
            learning_rate=config.int8_head_learning_rate,
            seed=config.data.seed,
        )
    flatbuffer = convert_tflite(
        converted,
        quantize=quantize,
        image_size=image_size,
        representative=measuring.representative,
    )
    files.write_bytes(path, flatbuffer)
    return path, head


# Bytes per float32 weight byte of each TFLite quantization, and a format's own overhead.
_TFLITE_SHARE = {"none": 1.0, "dynamic": 0.25, "float16": 0.5, "int8": 0.25}
_FORMAT_OVERHEAD = 4 << 20


def _export_bytes(classifier: keras.Model, config: ExportConfig) -> int:
    """About what the export writes: the weights once per format (SavedModel, and each TFLite
    file at its quantization's width), plus each format's graph."""
    weights = model.variable_bytes(classifier)
    shares = [1.0] if "saved_model" in config.formats else []
    if "tflite" in config.formats:
        shares += [_TFLITE_SHARE[q] for q in config.quantize]
    return int(weights * sum(shares)) + _FORMAT_OVERHEAD * len(shares)


def export_model(config: ExportConfig) -> ExportResult:
    """Exports a trained classifier to the configured formats and measures each.

    Raises:
      UserInputError: The model or data cannot be used, or a file cannot be written; nothing
        partial is left in output_dir. A failing conversion is a bug and keeps its traceback.
    """
    classifier, class_names, image_size = servable.load_trained(config.model)
    files.check_free_space(config.output_dir, _export_bytes(classifier, config), "the export")
    measuring = _load_measuring(config, tuple(class_names), image_size)
    os.makedirs(config.output_dir, exist_ok=True)
    files.write_lines(os.path.join(config.output_dir, servable.LABELS_FILE), list(class_names))
    keras_path = (
        os.path.join(config.model, "model.keras") if os.path.isdir(config.model) else config.model
    )
    keras_report, reference = _measure(
        "keras", keras_path, classifier.predict_on_batch, measuring, reference=None
    )
    reports = [keras_report]
    if "saved_model" in config.formats:
        loaded = _export_saved_model(classifier, config, class_names, image_size)
        report, _ = _measure(
            "saved_model", loaded.path, loaded.predict_pixels, measuring, reference=reference
        )
        reports.append(report)
    for quantize in config.quantize if "tflite" in config.formats else ():
        path, head = _export_tflite(classifier, config, quantize, image_size, measuring)
        report, _ = _measure(
            f"tflite-{quantize}",
            path,
            servable.TFLiteRunner(path),
            measuring,
            reference=reference,
            head=head,
        )
        reports.append(report)
    result = ExportResult(
        output_dir=config.output_dir,
        class_names=tuple(class_names),
        image_size=image_size,
        num_test_images=0 if measuring.test_labels is None else len(measuring.test_labels),
        formats=tuple(reports),
    )
    files.write_json(os.path.join(config.output_dir, REPORT_FILE), result.to_json())
    return result


def format_table(result: ExportResult) -> str:
    """The report as an aligned table."""

    def shown(value, pattern):
        return "-" if value is None else pattern.format(value)

    lines = [f"{'format':16} {'size MB':>8} {'test acc':>8} {'agrees':>7} {'ms/image':>8}  path"]
    for r in result.formats:
        lines.append(
            f"{r.format:16} {r.size_bytes / 2**20:8.2f} {shown(r.test_accuracy, '{:.4f}'):>8} "
            f"{shown(r.agreement_with_keras, '{:.4f}'):>7} "
            f"{shown(r.latency_ms_per_image, '{:.2f}'):>8}  {r.path}"
        )
    if result.num_test_images:
        lines.append(
            f"measured on {result.num_test_images} test images; latency at batch 1 on this machine"
        )
    for r in result.formats:
        if r.head != "trained":
            lines.append(f"{r.format}: head {r.head}")
    return "\n".join(lines)
