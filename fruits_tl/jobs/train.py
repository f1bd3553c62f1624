"""Orchestration of one training job: data -> input pipeline -> model under a strategy -> outputs.

Every check on the input runs before the model is built; every output file is written
atomically at the end, so an interrupted run leaves `model_dir` as it was.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf
from absl import logging

from fruits_tl.core import distribute, files, stopping
from fruits_tl.core.config import NO_AUGMENTATION, Augmentation, TrainConfig
from fruits_tl.data import decode, loading, pixels, train_input
from fruits_tl.models import backbone_features, model
from fruits_tl.training import callbacks, loop, lr_finder, plots
from fruits_tl.training import checkpoints as checkpoints_module

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
# In the features folder: the record of the decode check, and the store of decoded pixels.
# What a worker that lost the others says to do next.
RESTART_HINT = "Start every worker again: the job resumes from the chief's last checkpoint."


@dataclasses.dataclass(frozen=True)
class TrainMetrics:
    """metrics.json of a training job (`to_json` gives the file's contents).

    Attributes:
      mode, mode_reason: "images" or "features", and why.
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
    role = distribute.worker_role(strategy)
    # Inputs that need no decoding are refused before the decode check decodes.
    model.check_weights_file(config.model.weights)
    distribute.per_replica_batch_size(strategy, config.batch_size)
    with (
        stopping.GracefulStop() as stop,
        distribute.clear_worker_errors(strategy, hint=RESTART_HINT),
    ):
        splits, stores = _load_splits(config, strategy, stop=stop)
        classifier, parameters = _build_classifier(config, splits, strategy, weights_cache_dir)
        mode, reason = config.resolved_mode()
        logging.info("Mode %s (%s).", mode, reason)
        trained = _train_phases(
            config, splits, classifier, mode=mode, strategy=strategy, stop=stop, stores=stores
        )
    history = {key: [float(v) for v in values] for key, values in trained.history.items()}
    metrics = _metrics(
        config,
        splits,
        trained,
        strategy,
        mode=(mode, reason),
        parameters=parameters,
        total_seconds=time.perf_counter() - job_start,
    )
    _write_outputs(config, role, classifier, splits, trained, metrics, history, extra_text_files)
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


def _build_classifier(config, splits, strategy, weights_cache_dir):
    """The classifier in the strategy's scope (compiled later, by each phase), and its
    parameter counts."""
    _seed(config)
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


def _load_splits(
    config: TrainConfig, strategy: tf.distribute.Strategy, *, stop=None
) -> tuple[loading.Splits, pixels.SourceStores]:
    """The checked splits (and, for an image folder, the pixel store its decode check filled),
    with their warnings and the data and strategy lines logged."""
    # The decode check's one pass decodes into the pixel store, shared among the workers by
    # the store's rule: a cold run decodes each file once, a warm one none.
    stores = pixels.SourceStores.for_job(
        config.data,
        directory=os.path.join(config.resolved_features_dir(), backbone_features.PIXELS_DIR),
        chunk_images=config.extract_chunk_images,
        role=distribute.worker_role(strategy),
        wait_for_workers=lambda: distribute.barrier(strategy, timeout=config.collective_timeout),
        stop=stop,
    )
    folder = config.data.data_source == "folder"
    splits = loading.load_splits(config.data, check=stores.check if folder else None)
    for warning in splits.warnings:
        logging.warning("%s", warning)
    if splits.bad_images:
        logging.warning(
            "Leaving out %d undecodable file(s): %s",
            len(splits.bad_images),
            ", ".join(b.path for b in splits.bad_images),
        )
    logging.info(
        "Data: %d classes, %d training, %d validation (%s), %d test images",
        len(splits.class_names),
        len(splits.train),
        len(splits.validation),
        splits.validation_source,
        len(splits.test),
    )
    logging.info(
        "Strategy %s: %d replica(s), global batch %d = %d per replica",
        distribute.describe(strategy),
        strategy.num_replicas_in_sync,
        config.batch_size,
        distribute.per_replica_batch_size(strategy, config.batch_size),
    )
    return splits, stores


def _seed(config: TrainConfig) -> None:
    keras.utils.set_random_seed(config.data.seed)
    if config.deterministic:
        # Seeds Python, NumPy and TensorFlow (tf.random.set_seed alone does not seed Keras 3:
        # keras-team/keras#22620) and makes every op deterministic. Results can still depend on
        # the thread counts, so they are logged.
        tf.config.experimental.enable_op_determinism()
        logging.info(
            "Deterministic: seed %d; %d cores, inter-op threads %d, intra-op threads %d (0: "
            "TF's default)",
            config.data.seed,
            decode.available_cores(),
            tf.config.threading.get_inter_op_parallelism_threads(),
            tf.config.threading.get_intra_op_parallelism_threads(),
        )


def _metrics(
    config, splits, trained, strategy, *, mode: tuple[str, str], parameters, total_seconds
) -> TrainMetrics:
    """The run's TrainMetrics: `mode` is (mode, the reason it was chosen)."""
    tune = trained.fine_tune
    return TrainMetrics(
        mode=mode[0],
        mode_reason=mode[1],
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
        fine_tune_layers=config.fine_tune_layers,
        fine_tuned_layers=list(tune.layers) if tune else [],
        fine_tune_epochs=config.fine_tune_epochs if tune else 0,
        fine_tune_learning_rate=config.fine_tune_learning_rate if tune else 0.0,
        fine_tune_optimizer=config.fine_tune_optimizer if tune else "",
        fine_tune_seconds=tune.seconds if tune else 0.0,
        trainable_parameters=parameters["trainable"],
        frozen_parameters=parameters["frozen"],
        total_seconds=total_seconds,
    )


def _write_outputs(config, role, classifier, splits, trained, metrics, history, extra_text_files):
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
    _write_pictures(output_dir, history, trained.finding)
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


def _watch_workers(strategy: tf.distribute.Strategy, timeout: float):
    """Under several workers, a watchdog that stops this process when the cluster stalls."""
    role = distribute.worker_role(strategy)
    if role.count <= 1:
        return contextlib.nullcontext(None)

    def stalled():
        # Blocked in a collective: no exception will come, so stop here. Every file is written
        # atomically, so nothing is left half-written.
        logging.error(
            "%s",
            distribute.lost_worker_message(
                role,
                f"no step finished for {timeout:.0f} s, --collective_timeout",
                hint=RESTART_HINT,
            ),
        )
        stopping.exit_now(2)

    return distribute.Watchdog(timeout, stalled)


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


def run_fingerprint(
    config: TrainConfig,
    splits: loading.Splits,
    *,
    phase: _Phase,
    strategy: tf.distribute.Strategy,
    start_digest: str,
) -> dict:
    """What a phase's checkpoint must have been made with to be resumed: flags (by flag name),
    the weights it started from, and the data."""
    fingerprint = {
        "mode": phase.name,
        "image_size": config.data.image_size,
        "alpha": config.model.alpha,
        "weights": f"{config.model.weights} (start digest {start_digest})",
        "dropout": config.model.dropout,
        "batch_size": config.batch_size,
        "epochs": phase.epochs,
        "learning_rate": phase.given_rate,
        "optimizer": phase.optimizer,
        "augment": phase.augmentation.spec(),
        "fine_tune_layers": config.fine_tune_layers if phase.name == FINE_TUNE else 0,
        "seed": config.data.seed,
        "shuffle_buffer": config.data.shuffle_buffer_size,
        "feature_dtype": config.feature_dtype if phase.name == "features" else "",
        "deterministic": config.deterministic,
        "strategy": f"{distribute.describe(strategy)}, {strategy.num_replicas_in_sync} replica(s)",
    }
    for name, folder in splits.named().items():
        fingerprint[f"data {name}"] = folder.fingerprint
    return fingerprint


# The fine-tuning phase's name (its checkpoint folder, its rows' phase in history.csv: 2).
FINE_TUNE = "fine_tune"


@dataclasses.dataclass(frozen=True)
class _Phase:
    """One training phase: the head ("features" or "images" mode), or fine-tuning.

    Attributes:
      name: "features", "images" or FINE_TUNE: the checkpoint folder and the fingerprint.
      epochs, optimizer: The phase's recipe.
      given_rate: Its learning rate as asked for: a number, or "auto" (the finder's).
      augmentation: Transforms of the training images (images only).
      epoch_offset: Epochs of earlier phases (TensorBoard steps and log lines continue).
    """

    name: str
    epochs: int
    optimizer: str
    given_rate: float | str
    augmentation: Augmentation = NO_AUGMENTATION
    epoch_offset: int = 0


@dataclasses.dataclass(frozen=True)
class _FineTuned:
    """What fine-tuning did: the layers it trained and its seconds."""

    layers: tuple[str, ...]
    seconds: float


@dataclasses.dataclass(frozen=True, eq=False)
class _Trained:
    """What the job's phases return to it."""

    history: dict
    digests: tuple
    test: dict
    head_test: dict
    extract_seconds: float
    head_train_seconds: float
    train_seconds: float
    features_reused: bool
    checkpoints: tuple
    learning_rate: float
    finding: lr_finder.Finding | None
    underfit_warning: str
    fine_tune: _FineTuned | None


@dataclasses.dataclass(frozen=True, eq=False)
class _PhaseResult:
    """One phase's training, its checkpoints, its learning rate and the finder's curve."""

    training: loop.Training
    store: checkpoints_module.Checkpoints
    learning_rate: float
    finding: lr_finder.Finding | None


def _find_rate(config, trainable, *, arrays, strategy) -> lr_finder.Finding:
    """The range test on the training examples, from `trainable`'s current weights."""
    start = time.perf_counter()
    finding = lr_finder.find(
        trainable,
        examples=arrays["train"][0],
        labels=arrays["train"][1],
        strategy=strategy,
        batch_size=config.batch_size,
        seed=config.data.seed,
    )
    logging.info(
        "Learning-rate finder: %d steps from %.1g to %.3g in %.1f s; the valley rule suggests %.3g",
        len(finding.learning_rates),
        finding.learning_rates[0],
        finding.learning_rates[-1],
        time.perf_counter() - start,
        finding.suggested,
    )
    return finding


def _fit(
    config: TrainConfig,
    splits: loading.Splits,
    trainable: keras.Model,
    *,
    phase: _Phase,
    arrays: dict,
    strategy: tf.distribute.Strategy,
    stop: stopping.GracefulStop,
    start_digest: str,
) -> _PhaseResult:
    """Trains `trainable` (compiled) for one phase on stored examples, choosing its learning
    rate first where it is "auto", resuming from and writing the phase's checkpoints."""
    finding = None
    rate = phase.given_rate
    if rate == "auto":
        with strategy.scope():  # The finder's own optimizer; it sets the rate of every step.
            model.compile_classifier(
                trainable,
                optimizer=phase.optimizer,
                learning_rate=lr_finder.START,
                num_classes=len(splits.class_names),
            )
        finding = _find_rate(config, trainable, arrays=arrays, strategy=strategy)
        rate = finding.suggested
    with strategy.scope():  # A fresh optimizer: the finder's state is not carried over.
        model.compile_classifier(
            trainable,
            optimizer=phase.optimizer,
            learning_rate=_schedule(config, phase, float(rate), arrays, strategy),
            num_classes=len(splits.class_names),
        )
        trainable.optimizer.build(trainable.trainable_variables)
    store = checkpoints_module.Checkpoints(
        os.path.join(config.resolved_checkpoint_dir(), phase.name),
        objects={"model": trainable, "optimizer": trainable.optimizer},
        run_fingerprint=run_fingerprint(
            config, splits, phase=phase, strategy=strategy, start_digest=start_digest
        ),
        keep=config.keep_checkpoints,
    )
    # Under several workers only the chief writes checkpoints (in model_dir's folder, which
    # they all must reach); every worker resumes from the chief's latest.
    chief = distribute.worker_role(strategy).is_chief
    if config.restart and chief:
        store.remove()
    # No worker restores before the chief has removed them.
    distribute.barrier(strategy, timeout=config.collective_timeout)
    resume = store.restore_latest()
    if resume is not None:
        logging.warning(
            "Resuming from the checkpoint in %s (%s): %d of %d epochs done, step %d of the next",
            store.directory,
            "fine-tuning" if phase.name == FINE_TUNE else "the head",
            resume["epoch"],
            phase.epochs,
            resume["step"],
        )
    throughput = callbacks.ThroughputCallback(
        len(splits.train),
        tensorboard_dir=config.tensorboard_dir if chief else "",
        epoch_offset=phase.epoch_offset,
    )
    with _watch_workers(strategy, config.collective_timeout) as watchdog:
        training = _fit_loop(
            config,
            trainable,
            arrays=arrays,
            phase=phase,
            strategy=strategy,
            throughput=throughput,
            resume=resume,
            store=store if chief else None,
            stop=stop,
            heartbeat=watchdog.beat if watchdog is not None else None,
        )
    return _PhaseResult(training, store, float(rate), finding)


def _schedule(config, phase: _Phase, rate: float, arrays: dict, strategy):
    """The phase's learning rate: constant for the head; for fine-tuning, a cosine decay to 0
    over the phase's steps, so the last epochs move the weights least and the result does not
    hang on one epoch's noise (the optimizer's step count is in its checkpoint, so a resumed
    run continues the schedule where it stopped)."""
    if phase.name != FINE_TUNE:
        return rate
    batching = train_input.Batching(
        count=len(arrays["train"][1]),
        batch_size=config.batch_size,
        replicas=strategy.num_replicas_in_sync,
    )
    return keras.optimizers.schedules.CosineDecay(
        rate, decay_steps=phase.epochs * batching.num_batches
    )


def _fit_loop(
    config, trainable, *, arrays, phase, strategy, throughput, resume, store, stop, heartbeat
):
    """`loop.fit` with the job's settings."""
    validation = "validation" if "validation" in arrays else "test"
    on_images = phase.name != "features"
    return loop.fit(
        trainable,
        examples=arrays["train"][0],
        labels=arrays["train"][1],
        validation=arrays[validation],
        test=arrays["test"],
        epochs=phase.epochs,
        batch_size=config.batch_size,
        strategy=strategy,
        shuffle_buffer_size=config.data.shuffle_buffer_size,
        seed=config.data.seed,
        callbacks=[throughput],
        verbose=config.verbose != 0,
        # Images: one step per call, so a stop request is answered after the current step.
        steps_per_call=1 if on_images else 0,
        # Images are evaluated in training-size batches; features in large ones (tiny rows).
        evaluation_batch_size=config.batch_size if on_images else loop.EVALUATION_SLICE,
        checkpointing=loop.Checkpointing(
            resume=resume,
            save=store.save if store is not None else None,
            every_steps=config.checkpoint_every_steps,
            stop=stop,
            heartbeat=heartbeat,
        ),
        augmentation=phase.augmentation,
        fault_name="fine_tune" if phase.name == FINE_TUNE else "train",
    )


def _stored_pixels(splits: loading.Splits, stores: pixels.SourceStores) -> dict:
    """Every split's decoded pixels: rows of its source folder's store, which the decode check
    filled; for TFDS records, each split decoded into the store here."""
    return {
        name: (stores.rows_or_stored(folder), folder.labels)
        for name, folder in splits.named().items()
    }


def _head_phase(config: TrainConfig, mode: str) -> _Phase:
    return _Phase(
        name=mode,
        epochs=config.epochs,
        optimizer=config.optimizer,
        given_rate=config.learning_rate,
        augmentation=config.augment if mode == "images" else NO_AUGMENTATION,
    )


def _train_phases(
    config: TrainConfig,
    splits: loading.Splits,
    classifier: keras.Model,
    *,
    mode: str,
    strategy: tf.distribute.Strategy,
    stop: stopping.GracefulStop,
    stores: pixels.SourceStores,
) -> _Trained:
    """The head (features or images mode), the underfit guard, then fine-tuning if asked."""
    start = time.perf_counter()
    pixel_arrays = None
    if mode == "images" or config.fine_tune_layers or config.data.data_source == "folder":
        # Decoded once into the store (for a folder, by the decode check): the extraction of
        # features mode reads it too.
        pixel_arrays = _stored_pixels(splits, stores)
    # Images mode's head time includes filling the store, as before fine-tuning existed; the
    # features head's does not (the store is there for phase 2).
    head_start = start if mode == "images" else time.perf_counter()
    backbone_digest = backbone_features.weights_digest(classifier.get_layer(model.BACKBONE_NAME))
    if mode == "images":
        head = _fit(
            config,
            splits,
            classifier,
            phase=_head_phase(config, mode),
            arrays=pixel_arrays,
            strategy=strategy,
            stop=stop,
            start_digest=backbone_digest,
        )
        extract_seconds, reused, trainable, arrays = 0.0, False, classifier, pixel_arrays
    else:
        head, extract_seconds, reused, trainable, arrays = _train_on_features(
            config,
            splits,
            classifier,
            strategy=strategy,
            stop=stop,
            start_digest=backbone_digest,
            pixel_arrays=pixel_arrays,
        )
    head_seconds = time.perf_counter() - head_start - extract_seconds
    finding, warning = _guard(config, splits, trainable, head, arrays=arrays, strategy=strategy)
    result = dict(
        history={**head.training.history, "phase": [1.0] * config.epochs},
        digests=head.training.digests,
        test=head.training.test,
        head_test=head.training.test,
        extract_seconds=extract_seconds,
        head_train_seconds=head_seconds,
        features_reused=reused,
        checkpoints=(head.store,),
        learning_rate=head.learning_rate,
        finding=finding,
        underfit_warning=warning,
        fine_tune=None,
    )
    if config.fine_tune_layers:
        result.update(_fine_tune(config, splits, classifier, head, pixel_arrays, strategy, stop))
    return _Trained(train_seconds=time.perf_counter() - start, **result)


def _guard(config, splits, trainable, head: _PhaseResult, *, arrays, strategy):
    """The underfit guard after the head: a warning naming the figures and the finder's rate
    (the finder runs now, from the trained head, when it has not run already)."""
    history = head.training.history
    num_classes = len(splits.class_names)
    finding = head.finding
    if not lr_finder.underfit_warning(
        history, num_classes=num_classes, learning_rate=head.learning_rate, suggested=None
    ):
        return finding, ""
    if finding is None:
        finding = _find_rate(config, trainable, arrays=arrays, strategy=strategy)
    warning = lr_finder.underfit_warning(
        history,
        num_classes=num_classes,
        learning_rate=head.learning_rate,
        suggested=finding.suggested,
    )
    logging.warning("%s", warning)
    return finding, warning


def _fine_tune(config, splits, classifier, head: _PhaseResult, pixel_arrays, strategy, stop):
    """Phase 2: the backbone's last blocks unfrozen (BatchNorm frozen) and trained with the
    head on the stored images, augmented if asked; the last epoch is the result."""
    start = time.perf_counter()
    layers = model.unfreeze_top(classifier, config.fine_tune_layers)
    parameters = model.count_parameters(classifier)
    logging.info(
        "Fine-tuning: --fine_tune_layers=%d rounded to whole MobileNet blocks: %s trained with "
        "the head (%d trainable parameters; BatchNorm frozen), %s %.3g, %d epochs%s.",
        config.fine_tune_layers,
        ", ".join(layers),
        parameters["trainable"],
        config.fine_tune_optimizer,
        config.fine_tune_learning_rate,
        config.fine_tune_epochs,
        f", --augment={config.augment.spec()}" if config.augment else "",
    )
    phase = _Phase(
        name=FINE_TUNE,
        epochs=config.fine_tune_epochs,
        optimizer=config.fine_tune_optimizer,
        given_rate=config.fine_tune_learning_rate,
        augmentation=config.augment,
        epoch_offset=config.epochs,
    )
    tuned = _fit(
        config,
        splits,
        classifier,
        phase=phase,
        arrays=pixel_arrays,
        strategy=strategy,
        stop=stop,
        start_digest=loop.weights_digest(classifier),
    )
    history = dict(head.training.history)
    for key, values in tuned.training.history.items():
        history[key] = list(history.get(key, [])) + list(values)
    history["phase"] = [1.0] * config.epochs + [2.0] * config.fine_tune_epochs
    digests = tuple(
        {**row, "epoch": row["epoch"] + config.epochs} for row in tuned.training.digests
    )
    return dict(
        history=history,
        digests=head.training.digests + digests,
        test=tuned.training.test,
        checkpoints=(head.store, tuned.store),
        fine_tune=_FineTuned(layers, time.perf_counter() - start),
    )


def _train_on_features(
    config, splits, classifier, *, strategy, stop, start_digest, pixel_arrays=None
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
    trained = _fit(
        config,
        splits,
        head,
        phase=_head_phase(config, "features"),
        arrays=arrays,
        strategy=strategy,
        stop=stop,
        start_digest=start_digest,
    )
    model.assemble_classifier(classifier, head)
    return trained, extract_seconds, extracted.reused, head, arrays


def _write_pictures(output_dir: str, history: dict, finding: lr_finder.Finding | None) -> None:
    """training_curves.png, and lr_find.png where the finder ran (or one line without
    matplotlib)."""
    if not plots.available():
        logging.info("%s", plots.MISSING)
        return
    os.makedirs(output_dir, exist_ok=True)
    plots.training_curves(history, os.path.join(output_dir, CURVES_PICTURE))
    if finding is not None:
        plots.lr_find(
            finding.learning_rates,
            finding.losses,
            finding.suggested_step,
            os.path.join(output_dir, LR_FIND_PICTURE),
        )
