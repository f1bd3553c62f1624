"""Orchestration of one training job: data -> route -> model under a strategy -> outputs.

Every check on the input runs before the model is built; every output file is written
atomically at the end, so an interrupted run leaves `model_dir` as it was.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import time

import keras
import tensorflow as tf
from absl import logging

from fruits_tl import callbacks, data, distribute, extraction, files, model, pipeline, sources
from fruits_tl import head as head_module
from fruits_tl.config import TrainConfig

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
SKIPPED_FILE = "skipped_images.txt"
H5_FILE = "MobileNet_TransferLearning.h5"


@dataclasses.dataclass(frozen=True)
class TrainMetrics:
    """metrics.json of a training job (`to_json` gives the file's contents).

    Attributes:
      mode, mode_reason: "images" or "features", and why.
      extract_seconds: Backbone pass over every split (features mode; 0 when reused or images).
      head_train_seconds: Training of the head (features mode) or the whole fit (images mode).
      features_reused: Features came from an earlier run's files.
      test_accuracy, test_top5_accuracy, test_loss: On the test split.
      test_source: "test folder" or "validation_split" (no test folder: the held-out part).
      num_classes, num_train_images, num_validation_images, num_test_images,
      num_skipped_images: The data.
      epochs, train_seconds, train_images_per_second: Training (extraction included).
      strategy, num_replicas, global_batch_size, per_replica_batch_size: Distribution.
      image_size, alpha, weights, optimizer, learning_rate: The recipe.
      trainable_parameters, frozen_parameters: Head and backbone sizes.
      total_seconds: From the data checks to the end of the test evaluation (saving
        excluded): the job's end-to-end time, the figure fruits-tl-bench --compare_modes uses.
    """

    mode: str
    mode_reason: str
    extract_seconds: float
    head_train_seconds: float
    features_reused: bool
    test_accuracy: float
    test_top5_accuracy: float
    test_loss: float
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
    trainable_parameters: int
    frozen_parameters: int
    total_seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training job produced.

    Attributes:
      model_dir: Where the files were written.
      metrics: What metrics.json holds.
      history: Per-epoch values (loss, accuracy, val_*, images_per_second).
      model: The trained Keras model.
    """

    model_dir: str
    metrics: TrainMetrics
    history: dict
    model: keras.Model


@dataclasses.dataclass(frozen=True)
class _Trained:
    """What one mode's training returns to the job."""

    history: dict
    test: dict
    extract_seconds: float
    head_train_seconds: float
    train_seconds: float
    features_reused: bool


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
    os.makedirs(model_dir, exist_ok=True)
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


def train(
    config: TrainConfig,
    *,
    strategy: tf.distribute.Strategy,
    extra_text_files: dict[str, str] | None = None,
    weights_cache_dir: str | None = None,
) -> TrainResult:
    """Trains the frozen-MobileNet classifier on a data folder and writes it to model_dir.

    Args:
      config: The job.
      strategy: Distribution strategy; the model and optimizer are built in its scope and
        `config.batch_size` is the global batch.
      extra_text_files: More files for model_dir (name -> text), e.g. the binary's flags.txt.
      weights_cache_dir: Keras cache folder for `weights="imagenet"` (default: Keras's own).

    Returns:
      The TrainResult.

    Raises:
      UserInputError: Bad data, weights or settings, before training starts.
    """
    job_start = time.perf_counter()
    data_config = config.data
    replicas = strategy.num_replicas_in_sync
    per_replica = distribute.per_replica_batch_size(strategy, config.batch_size)
    splits = sources.load_splits(data_config)
    for warning in splits.warnings:
        logging.warning("%s", warning)
    if splits.bad_images:
        logging.warning(
            "Leaving out %d undecodable file(s): %s",
            len(splits.bad_images),
            ", ".join(b.path for b in splits.bad_images),
        )
    num_classes = len(splits.class_names)
    logging.info(
        "Data: %d classes, %d training, %d validation (%s), %d test images",
        num_classes,
        len(splits.train),
        len(splits.validation),
        splits.validation_source,
        len(splits.test),
    )
    logging.info(
        "Strategy %s: %d replica(s), global batch %d = %d per replica",
        distribute.describe(strategy),
        replicas,
        config.batch_size,
        per_replica,
    )

    keras.utils.set_random_seed(data_config.seed)
    with strategy.scope():
        classifier = model.build_classifier(
            num_classes,
            image_size=data_config.image_size,
            alpha=config.model.alpha,
            weights=config.model.weights,
            dropout=config.model.dropout,
            cache_dir=weights_cache_dir,
            seed=data_config.seed,
        )
        model.compile_classifier(
            classifier,
            optimizer=config.optimizer,
            learning_rate=config.learning_rate,
            num_classes=num_classes,
        )
    parameters = model.count_parameters(classifier)
    logging.info(
        "Model: %d trainable (head), %d frozen (backbone) parameters",
        parameters["trainable"],
        parameters["frozen"],
    )

    mode, reason = config.resolved_mode()
    logging.info("Mode %s (%s).", mode, reason)
    throughput = callbacks.ThroughputCallback(
        len(splits.train),
        log_name="train" if mode == "images" else "head on features of",
        tensorboard_dir=config.tensorboard_dir,
    )
    train_mode = _train_on_images if mode == "images" else _train_on_features
    trained = train_mode(config, splits, classifier, strategy=strategy, throughput=throughput)
    history = {key: [float(v) for v in values] for key, values in trained.history.items()}
    history["images_per_second"] = list(throughput.images_per_second)
    history["epoch_seconds"] = list(throughput.epoch_seconds)
    metrics = TrainMetrics(
        mode=mode,
        mode_reason=reason,
        extract_seconds=trained.extract_seconds,
        head_train_seconds=trained.head_train_seconds,
        features_reused=trained.features_reused,
        test_accuracy=float(trained.test["accuracy"]),
        test_top5_accuracy=float(trained.test["top5_accuracy"]),
        test_loss=float(trained.test["loss"]),
        test_source=(
            "validation_split"
            if splits.validation_is_test and splits.validation_source == "validation_split"
            else "test folder"
        ),
        num_classes=num_classes,
        num_train_images=len(splits.train),
        num_validation_images=len(splits.validation),
        num_test_images=len(splits.test),
        num_skipped_images=len(splits.bad_images),
        epochs=config.epochs,
        train_seconds=trained.train_seconds,
        train_images_per_second=len(splits.train)
        * config.epochs
        / max(trained.train_seconds, 1e-9),
        strategy=distribute.describe(strategy),
        num_replicas=replicas,
        global_batch_size=config.batch_size,
        per_replica_batch_size=per_replica,
        image_size=data_config.image_size,
        alpha=config.model.alpha,
        weights=config.model.weights,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        trainable_parameters=parameters["trainable"],
        frozen_parameters=parameters["frozen"],
        total_seconds=time.perf_counter() - job_start,
    )
    extra = dict(extra_text_files or {})
    if splits.bad_images:
        extra[SKIPPED_FILE] = "".join(f"{item}\n" for item in splits.bad_images)
    save_model_files(
        config.model_dir,
        trained=classifier,
        class_names=splits.class_names,
        metrics=metrics,
        history=history,
        save_h5=config.save_h5,
        extra_text_files=extra,
    )
    logging.info(
        "Test accuracy %.4f, top-5 %.4f, loss %.4f; %.1f training images/s; wrote %s",
        metrics.test_accuracy,
        metrics.test_top5_accuracy,
        metrics.test_loss,
        metrics.train_images_per_second,
        config.model_dir,
    )
    return TrainResult(
        model_dir=config.model_dir, metrics=metrics, history=history, model=classifier
    )


def _train_on_images(
    config: TrainConfig,
    splits: data.Splits,
    classifier: keras.Model,
    *,
    strategy: tf.distribute.Strategy,
    throughput: callbacks.ThroughputCallback,
) -> _Trained:
    """Images mode: Keras fit on the image route, the backbone running on every image."""
    data_config = config.data

    def batches(folder, training):
        return pipeline.make_batches(
            folder,
            batch_size=config.batch_size,
            training=training,
            cache=data_config.cache,
            shuffle_buffer_size=data_config.shuffle_buffer_size,
            seed=data_config.seed,
            output="uint8",
            min_batch_size=strategy.num_replicas_in_sync,
        )

    start = time.perf_counter()
    validation_batches = batches(splits.validation, False)
    fit = classifier.fit(
        batches(splits.train, True),
        validation_data=validation_batches,
        epochs=config.epochs,
        callbacks=[throughput],
        # The route already shuffles (reshuffled every epoch); Keras cannot shuffle a Dataset.
        shuffle=False,
        verbose=config.verbose,
    )
    seconds = time.perf_counter() - start
    test_batches = validation_batches if splits.validation_is_test else batches(splits.test, False)
    test = classifier.evaluate(test_batches, return_dict=True, verbose=0)
    history = {key: values for key, values in fit.history.items() if key != "images_per_second"}
    return _Trained(
        history=history,
        test=test,
        extract_seconds=0.0,
        head_train_seconds=seconds,
        train_seconds=seconds,
        features_reused=False,
    )


def _train_on_features(
    config: TrainConfig,
    splits: data.Splits,
    classifier: keras.Model,
    *,
    strategy: tf.distribute.Strategy,
    throughput: callbacks.ThroughputCallback,
) -> _Trained:
    """Features mode: the backbone once over every split (or its stored features), then the
    head in `head.fit_head`, and the trained head put back into the classifier."""
    data_config = config.data
    start = time.perf_counter()
    # One pass over each split: a memory cache would only hold images never read again, so
    # only a file cache (filled here for later image-mode runs) is passed on.
    cache = "none" if data_config.cache == "memory" else data_config.cache
    extracted = extraction.extract_or_reuse(
        splits.named(),
        backbone=classifier.get_layer(model.BACKBONE_NAME),
        alpha=config.model.alpha,
        image_size=data_config.image_size,
        features_dir=config.resolved_features_dir(),
        strategy=strategy,
        batch_size=config.batch_size,
        feature_dtype=config.feature_dtype,
        cache=cache,
        verbose=config.verbose == 1,
    )
    extract_seconds = time.perf_counter() - start
    sets = extracted.feature_sets
    num_classes = len(splits.class_names)
    with strategy.scope():
        head = model.build_head(
            model.feature_dim(classifier),
            num_classes,
            dropout=config.model.dropout,
            seed=data_config.seed,
        )
        model.compile_classifier(
            head,
            optimizer=config.optimizer,
            learning_rate=config.learning_rate,
            num_classes=num_classes,
        )
    head_start = time.perf_counter()
    validation_set = sets.get("validation", sets["test"])
    fit = head_module.fit_head(
        head,
        features=sets["train"].features,
        labels=sets["train"].labels,
        validation=(validation_set.features, validation_set.labels),
        epochs=config.epochs,
        batch_size=config.batch_size,
        strategy=strategy,
        shuffle_buffer_size=data_config.shuffle_buffer_size,
        seed=data_config.seed,
        callbacks=[throughput],
        verbose=config.verbose != 0,
    )
    head_train_seconds = time.perf_counter() - head_start
    train_seconds = time.perf_counter() - start
    test = head_module.evaluate_head(
        head, features=sets["test"].features, labels=sets["test"].labels, strategy=strategy
    )
    model.assemble_classifier(classifier, head)
    return _Trained(
        history=fit.history,
        test=test,
        extract_seconds=extract_seconds,
        head_train_seconds=head_train_seconds,
        train_seconds=train_seconds,
        features_reused=extracted.reused,
    )
