"""The training job, as a story: load the checked splits (their decode check fills the pixel
store), build the classifier, run the phases (the head on features or on the stored images, the
underfit guard, fine-tuning where asked; each one `loop.fit` through `training.phase`), and
write the outputs (`training.reporting`).

Every check on the input runs before the model is built; every output file is written
atomically at the end, so an interrupted run leaves `model_dir` as it was.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import tensorflow as tf
from absl import logging

from fruits_tl.core import distribute, stopping
from fruits_tl.core.config import TrainConfig
from fruits_tl.data import loading, store
from fruits_tl.models import backbone_features, model
from fruits_tl.training import loop, phase, reporting


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
    metrics: reporting.TrainMetrics
    history: dict
    model: keras.Model


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

    Returns the TrainResult; raises UserInputError, before training starts, for bad data,
    weights or settings.
    """
    job_start = time.perf_counter()
    # Inputs that need no decoding are refused before the decode check decodes.
    model.check_weights_file(config.model.weights)
    distribute.per_replica_batch_size(strategy, config.batch_size)
    with (
        stopping.GracefulStop() as stop,
        distribute.clear_worker_errors(strategy, hint=phase.RESTART_HINT),
    ):
        splits, stores, decode_seconds = _load_splits(config, strategy, stop=stop)
        classifier, parameters = _build_classifier(config, splits, strategy, weights_cache_dir)
        mode, reason = config.resolved_mode()
        logging.info("Mode %s (%s).", mode, reason)
        trained = _train_phases(
            config, splits, classifier, mode=mode, strategy=strategy, stop=stop, stores=stores
        )
    history = {key: [float(v) for v in values] for key, values in trained.history.items()}
    metrics = reporting.train_metrics(
        config,
        splits,
        trained,
        strategy,
        mode=(mode, reason),
        parameters=parameters,
        decode_seconds=decode_seconds,
        total_seconds=time.perf_counter() - job_start,
    )
    role = distribute.worker_role(strategy)
    reporting.write_outputs(
        config, role, classifier, splits, trained, metrics, history, extra_text_files
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


def _load_splits(
    config: TrainConfig, strategy: tf.distribute.Strategy, *, stop=None
) -> tuple[loading.Splits, store.SourceStores, float]:
    """The checked splits (and, for an image folder, the pixel store its decode check filled)
    and the check's seconds, with their warnings and the data and strategy lines logged."""
    # The decode check's one pass decodes into the pixel store, shared among the workers by
    # the store's rule.
    stores = store.SourceStores.for_job(
        config.data,
        directory=os.path.join(config.resolved_features_dir(), backbone_features.PIXELS_DIR),
        chunk_images=config.extract_chunk_images,
        role=distribute.worker_role(strategy),
        wait_for_workers=lambda: distribute.barrier(strategy, timeout=config.collective_timeout),
        stop=stop,
    )
    splits, seconds = stores.load_splits(config.data)
    splits.log()
    logging.info(
        "Strategy %s: %d replica(s), global batch %d = %d per replica",
        distribute.describe(strategy),
        strategy.num_replicas_in_sync,
        config.batch_size,
        distribute.per_replica_batch_size(strategy, config.batch_size),
    )
    return splits, stores, seconds


def _build_classifier(config, splits, strategy, weights_cache_dir):
    """The classifier in the strategy's scope (compiled later, by each phase), and its
    parameter counts."""
    loop.seed_everything(config.data.seed, deterministic=config.deterministic)
    with strategy.scope():
        classifier = model.build_classifier(
            len(splits.class_names),
            image_size=config.data.image_size,
            alpha=config.model.alpha,
            weights=config.model.weights,
            dropout=config.model.dropout,
            cache_dir=weights_cache_dir,
            seed=config.data.seed,
        )
    parameters = model.count_parameters(classifier)
    logging.info(
        "Model: %d trainable (head), %d frozen (backbone) parameters",
        parameters["trainable"],
        parameters["frozen"],
    )
    return classifier, parameters


def _train_phases(
    config: TrainConfig,
    splits: loading.Splits,
    classifier: keras.Model,
    *,
    mode: str,
    strategy: tf.distribute.Strategy,
    stop: stopping.GracefulStop,
    stores: store.SourceStores,
) -> phase.Trained:
    """The head (features or images mode), the underfit guard, then fine-tuning if asked."""
    start = time.perf_counter()
    pixel_arrays = None
    if mode == "images" or config.fine_tune_layers or config.data.data_source == "folder":
        # Decoded once into the store (for a folder, by the decode check): the extraction of
        # features mode reads it too.
        pixel_arrays = _stored_pixels(splits, stores)
    run = dict(config=config, splits=splits, strategy=strategy, stop=stop)
    backbone_digest = backbone_features.weights_digest(classifier.get_layer(model.BACKBONE_NAME))
    if mode == "images":  # Its head time includes filling the store; the features head's not.
        head = phase.fit(
            trainable=classifier,
            phase=phase.head_phase(config, mode),
            arrays=pixel_arrays,
            start_digest=backbone_digest,
            **run,
        )
        extract_seconds, reused, trainable, arrays = 0.0, False, classifier, pixel_arrays
    else:
        start_head = time.perf_counter()
        head, extract_seconds, reused, trainable, arrays = _train_on_features(
            classifier, start_digest=backbone_digest, pixel_arrays=pixel_arrays, **run
        )
    head_seconds = time.perf_counter() - (start if mode == "images" else start_head)
    finding, warning = phase.underfit_guard(
        config, splits, trainable, head, arrays=arrays, strategy=strategy
    )
    trained = phase.Trained.of_head(
        head,
        extract_seconds=extract_seconds,
        head_train_seconds=head_seconds - extract_seconds,
        features_reused=reused,
        finding=finding,
        underfit_warning=warning,
    )
    if config.fine_tune_layers:  # Phase 2, on the stored images, from the trained head.
        tune_start = time.perf_counter()
        tune, layers = phase.fine_tune_phase(config, classifier)
        second = phase.fit(
            trainable=classifier,
            phase=tune,
            arrays=pixel_arrays,
            start_digest=loop.weights_digest(classifier),
            **run,
        )
        trained = trained.then(second, phase.FineTuned(layers, time.perf_counter() - tune_start))
    return dataclasses.replace(trained, train_seconds=time.perf_counter() - start)


def _train_on_features(
    classifier, *, config, splits, strategy, stop, start_digest, pixel_arrays=None
):
    """Features mode: the backbone once over every split (or its stored features, or from the
    stored pixels), then the head on the features, put back into the classifier."""
    data_config = config.data
    start = time.perf_counter()
    backbone = classifier.get_layer(model.BACKBONE_NAME)
    extracted = backbone_features.extract_or_reuse(
        splits.named(),
        images={name: pair[0] for name, pair in (pixel_arrays or {}).items()},
        backbone=backbone,
        alpha=config.model.alpha,
        image_size=data_config.image_size,
        strategy=strategy,
        settings=backbone_features.ExtractionSettings(
            features_dir=config.resolved_features_dir(),
            batch_size=config.extract_batch_size,
            feature_dtype=config.feature_dtype,
            verbose=config.verbose == 1,
            chunk_images=config.extract_chunk_images,
            barrier_timeout=config.collective_timeout,
            data_service_address=data_config.data_service_address,
            data_service_timeout=data_config.data_service_timeout,
        ),
        stop=stop,
    )
    extract_seconds = time.perf_counter() - start
    with strategy.scope():
        head = model.build_head(
            model.feature_dim(classifier),
            len(splits.class_names),
            dropout=config.model.dropout,
            seed=data_config.seed,
        )
    # The stored features, read natively through the same input pipeline.
    arrays = {name: (s.rows, s.labels) for name, s in extracted.feature_sets.items()}
    trained = phase.fit(
        config,
        splits,
        head,
        phase=phase.head_phase(config, "features"),
        arrays=arrays,
        strategy=strategy,
        stop=stop,
        start_digest=start_digest,
    )
    model.assemble_classifier(classifier, head)
    return trained, extract_seconds, extracted.reused, head, arrays


def _stored_pixels(splits: loading.Splits, stores: store.SourceStores) -> dict:
    """Every split's decoded pixels: rows of its source folder's store, which the decode check
    filled; for TFDS records, each split decoded into the store here."""
    return {
        name: (stores.rows_or_stored(folder), folder.labels)
        for name, folder in splits.named().items()
    }
