"""Throughput benchmark: input variants, the model alone, and the two together, in one run.

Each variant is timed by `timing.time_epochs` (fake-clock-tested arithmetic). Variants run
interleaved, repeat by repeat, so ratios are measured side by side on the same noisy machine.
`VARIANTS` maps each name to the function that measures it once.

Variants (each delivers what a model consumes: batches of size x size x 3 images with labels):
  legacy         the tutorial's ImageDataGenerator.flow_from_directory (float32, preprocessed)
  idfd           image_dataset_from_directory as tutorials use it, no cache (float32, preprocessed)
  pipeline-memory-<output>    the reference: tf.data's own in-memory pipeline (decode, cache(),
                 shuffle, batch, prefetch; `reference_pipeline`), output uint8|float32
  train-input    the training input pipeline itself (`train_input.training_rows`, what training
                 iterates): the cold epoch decodes the split into the pixel store, later epochs
                 read the store (memory-mapped) in a new order each, distributed by the strategy
  tfds-memory-<output>       the same reference reading the prepared fruits360 TFDS records
  decode         TensorFlow's decoder alone over every file, in parallel: the decode check's pass
                 (the decode ceiling)
  audit          fruits-tl-audit's one-pass inspection of every file
  model-infer    the classifier alone on in-memory uint8 tensors, inference
  model-train    the training job's compiled step on random in-memory uint8 images
  train          the same step on the split's first images, from the pixel store
  extract        the job's feature extraction, decoding as it goes (every epoch decodes)
  extract-stored the job's feature extraction from the pixel store (nothing decoded)
  service-<n>    the decode pass through a tf.data service with n local workers (asked for
                 by name; the workers share this machine's cores)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import platform
import statistics
import tempfile
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from fruits_tl.core import distribute, stopping
from fruits_tl.core.config import (
    BENCH_DECODE_VARIANTS,
    BENCH_INPUT_VARIANTS,
    BENCH_MODEL_VARIANTS,
    BENCH_SERVICE_VARIANTS,
    BENCH_TFDS_VARIANTS,
    BENCH_VARIANTS,
    DataConfig,
    ModelConfig,
    UserInputError,
    require,
)
from fruits_tl.core.timing import (
    EpochTimes,
    PeakMemory,
    Throughput,
    median_ratio,
    resident_bytes,
    summarize,
    time_epochs,
)
from fruits_tl.data import data_service, decode, inspection, loading, store, train_input
from fruits_tl.models import backbone_features, model
from fruits_tl.training import loop


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One fruits-tl-bench run.

    Attributes:
      data: The images (the training folder is measured) and the input pipeline's settings.
      model: The backbone of the model variants (weights do not change throughput).
      variants: What to measure, from BENCH_VARIANTS and BENCH_TFDS_VARIANTS.
      epochs: Epochs per repeat: the first is the cold one.
      repeats: Repeats of every variant, interleaved.
      batch_size: Images per batch.
      model_steps: Batches per "epoch" of the model variants.
      cache_dir: The folder in which the run's temporary cache folder is made (removed at
        the end of the run); "" for the system's temporary folder.
    """

    data: DataConfig
    model: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(weights="none"))
    variants: tuple[str, ...] = BENCH_VARIANTS
    epochs: int = 5
    repeats: int = 3
    batch_size: int = 32
    model_steps: int = 20
    cache_dir: str = ""

    def __post_init__(self) -> None:
        known = BENCH_VARIANTS + BENCH_TFDS_VARIANTS + BENCH_SERVICE_VARIANTS
        unknown = [v for v in self.variants if v not in known]
        require(not unknown, f"unknown --variants {', '.join(unknown)}; known: {', '.join(known)}.")
        require(
            self.epochs >= 2,
            f"epochs must be >= 2 (one cold, at least one steady), got {self.epochs}.",
        )
        require(
            self.repeats >= 1 and self.batch_size >= 1 and self.model_steps >= 1,
            "repeats, batch_size and model_steps must be >= 1.",
        )


# The input training reads (the verdict and --assert_min_speedup measure it).
DEFAULT_TRAINING_FORM = "train-input"


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """What every variant of one run measures against.

    Attributes:
      config: The run's settings.
      folder: The training split of the folder.
      tfds_folder: The training split of the TFDS records (None unless a tfds variant runs).
      strategy: The distribution strategy of the model variants.
      classifier: The compiled classifier (None unless a model variant runs).
      extractor: Its feature extractor.
      cache_root: Where file caches go.
    """

    config: BenchConfig
    folder: loading.ImageFolder
    tfds_folder: loading.ImageFolder | None
    strategy: tf.distribute.Strategy
    classifier: keras.Model | None
    extractor: keras.Model | None
    cache_root: str

    @property
    def train_dir(self) -> str:
        return os.path.join(self.config.data.data_dir, self.config.data.train_subdir)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One repeat of one variant: its epochs, the peak resident memory and its cache's bytes."""

    times: EpochTimes
    peak_rss_bytes: int
    cache_bytes: int = 0


def _legacy_epochs(context: Context):
    config = context.config
    # Keras 3 keeps the tutorial's loader (keras.src.legacy) reachable as tf.keras's
    # preprocessing.image.ImageDataGenerator, the spelling tutorials use.
    try:
        ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator
    except AttributeError as error:
        raise UserInputError(
            f"this TensorFlow/Keras has no ImageDataGenerator ({error}); drop 'legacy' from "
            "--variants."
        ) from None
    generator = ImageDataGenerator(
        preprocessing_function=keras.applications.mobilenet.preprocess_input
    )
    iterator = generator.flow_from_directory(
        context.train_dir,
        target_size=(config.data.image_size, config.data.image_size),
        batch_size=config.batch_size,
        class_mode="sparse",
        shuffle=True,
        seed=config.data.seed,
    )

    def epoch():
        return (iterator[i] for i in range(len(iterator)))

    return epoch


def _idfd_epochs(context: Context):
    config = context.config
    dataset = keras.utils.image_dataset_from_directory(
        context.train_dir,
        batch_size=config.batch_size,
        image_size=(config.data.image_size, config.data.image_size),
        shuffle=True,
        seed=config.data.seed,
        verbose=False,
    )
    dataset = dataset.map(
        lambda x, y: (decode.mobilenet_inputs(x), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return lambda: dataset


def _decode_epochs(paths: list[str]):
    # The decode check's own pass (the input pipeline's options): the ceiling the input pipeline
    # is compared with.
    dataset = decode.decode_pass(paths)
    return lambda: dataset


def _audit_epochs(folder: loading.ImageFolder):
    entries = [
        (p, "train", folder.class_names[label])
        for p, label in zip(folder.file_paths, folder.labels, strict=True)
    ]

    def epoch():
        facts, _ = inspection.inspect_files(entries)
        return [(np.zeros(len(facts)), None)]

    return epoch


def _epochs_variant(
    make_epochs: Callable[[Context], Callable], context: Context, repeat: int
) -> Measurement:
    """A variant whose every epoch is `make_epochs(context)()`, timed for config.epochs."""
    with PeakMemory() as memory:
        times = time_epochs(make_epochs(context), epochs=context.config.epochs)
    return Measurement(times=times, peak_rss_bytes=memory.peak)


def reference_pipeline(
    folder: loading.ImageFolder, *, batch_size: int, seed: int, output: str
) -> tf.data.Dataset:
    """tf.data's own in-memory pipeline, the reference the package's is measured against:
    decode (in parallel) -> `cache()` of the uint8 elements in memory -> shuffle of the whole
    split (reshuffled each epoch) -> batch -> (MobileNet preprocessing) -> prefetch."""
    dataset = folder.make_elements().cache()
    dataset = dataset.shuffle(max(len(folder), 1), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if output == "float32":
        dataset = dataset.map(
            tf.autograph.experimental.do_not_convert(
                lambda images, labels: (decode.mobilenet_inputs(images), labels)
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return decode.with_pass_options(dataset.prefetch(tf.data.AUTOTUNE))


def _reference_variant(context: Context, repeat: int, *, source: str, output: str) -> Measurement:
    """tf.data's own in-memory pipeline (`reference_pipeline`) over the folder or the TFDS
    records; the cold epoch decodes and fills the memory cache."""
    config = context.config
    folder = context.tfds_folder if source == "tfds" else context.folder
    holder = {}

    def epoch():
        # The first call builds the pipeline, inside the cold epoch's timing.
        if "dataset" not in holder:
            holder["dataset"] = reference_pipeline(
                folder, batch_size=config.batch_size, seed=config.data.seed, output=output
            )
        return holder["dataset"]

    with PeakMemory() as memory:
        before = resident_bytes()
        cold = time_epochs(epoch, epochs=1)
        grown = resident_bytes() - before
        steady = time_epochs(epoch, epochs=config.epochs - 1)
        holder.clear()
    times = EpochTimes(
        time_to_first_batch=cold.time_to_first_batch,
        epoch_seconds=cold.epoch_seconds + steady.epoch_seconds,
        epoch_images=cold.epoch_images + steady.epoch_images,
        epoch_cpu_seconds=cold.epoch_cpu_seconds + steady.epoch_cpu_seconds,
    )
    return Measurement(times=times, peak_rss_bytes=memory.peak, cache_bytes=max(grown, 0))


def _train_input_variant(context: Context, repeat: int) -> Measurement:
    """The training input pipeline, exactly as `loop.fit` iterates it (`train_input.distribute`
    of `train_input.training_rows`, under the run's strategy), over the split's pixel store;
    the cold epoch fills the store. An epoch's batches after its first are taken in one
    compiled call (as features mode trains its head and `--recommend` reads the store): the
    pipeline's own rate, without a Python round trip every few steps (BENCHMARKS 18a)."""
    config, folder, strategy = context.config, context.folder, context.strategy
    directory = os.path.join(context.cache_root, f"pixels-r{repeat}")
    batching = train_input.Batching(
        count=len(folder), batch_size=config.batch_size, replicas=strategy.num_replicas_in_sync
    )
    holder, count_real = {}, train_input.real_row_counter(strategy)

    def epoch():
        if "iterator" not in holder:
            # The cold epoch fills the store and builds the one pipeline of the whole run, as
            # `loop.fit` builds it: every epoch's order, computed when the pipeline gets there.
            examples = store.store_pixels(folder, directory=directory).examples
            distributed = train_input.distribute(
                strategy,
                examples,
                folder.labels,
                train_input.training_rows(
                    batching, seed=config.data.seed, first_epoch=0, epochs=config.epochs
                ),
                batching=batching,
            )
            holder["iterator"] = iter(distributed)
        # The first batch alone (the bench reports when it arrives), then the rest at once.
        for steps in (1, batching.num_batches - 1):
            real = int(count_real(holder["iterator"], tf.constant(steps)))
            yield np.empty((real, 0)), None

    # The consuming function is traced before the timing, on stand-in rows of the same shapes
    # (the same iterator spec, so no second trace): its trace is the consumer's cost, which
    # the other input variants, consumed by a Python loop, do not pay either.
    size, one_batch = folder.image_size, dataclasses.replace(batching, count=batching.batch_size)
    stand_in = train_input.distribute(
        strategy,
        np.zeros((one_batch.count, size, size, 3), np.uint8),
        np.zeros(one_batch.count, np.int32),
        train_input.training_rows(one_batch, seed=0, first_epoch=0, epochs=1),
        batching=one_batch,
    )
    count_real(iter(stand_in), tf.constant(1))
    with PeakMemory() as memory:
        times = time_epochs(epoch, epochs=config.epochs)
        holder.clear()
    stored = sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))
    return Measurement(times=times, peak_rss_bytes=memory.peak, cache_bytes=stored)


def _in_memory_batch(config: BenchConfig, num_classes: int):
    rng = np.random.default_rng(config.data.seed)
    size = config.data.image_size
    images = rng.integers(0, 256, size=(config.batch_size, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(config.batch_size,)).astype(np.int32)
    return tf.constant(images), tf.constant(labels)


def stored_images(
    folder: loading.ImageFolder, count: int, *, directory: str
) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of a split (decoded into the pixel store, untimed) and their
    labels, so model variants measure the model fed from memory-mapped pixels."""
    count = min(count, len(folder))
    subset = loading.select(
        folder, np.arange(len(folder)) < count, name=f"{folder.name}-first{count}"
    )
    return store.store_pixels(subset, directory=directory).examples.numpy(), subset.labels


def _loop_epochs(
    classifier, inputs: np.ndarray, labels: np.ndarray, context: Context
) -> EpochTimes:
    """The training job's compiled step (`loop.fit`, one step per call as images mode runs it)
    for `epochs` epochs of `model_steps` batches, timed per epoch by ThroughputCallback."""
    from fruits_tl.training.loop import ThroughputCallback

    config = context.config
    callback = ThroughputCallback(len(labels))
    loop.fit(
        classifier,
        examples=inputs,
        labels=labels,
        epochs=config.epochs,
        batch_size=config.batch_size,
        strategy=context.strategy,
        seed=config.data.seed,
        callbacks=[callback],
        steps_per_call=1,
        evaluation_batch_size=config.batch_size,
    )
    return EpochTimes(
        time_to_first_batch=0.0,
        epoch_seconds=tuple(callback.epoch_seconds),
        epoch_images=(len(labels),) * config.epochs,
    )


def _model_infer(context: Context, repeat: int) -> Measurement:
    config, extractor = context.config, context.extractor
    with PeakMemory() as memory:
        images, labels = _in_memory_batch(config, context.folder.num_classes)
        synthetic = tf.data.Dataset.from_tensors((images, labels)).repeat(config.model_steps)
        infer = tf.function(lambda x: extractor(x, training=False))
        infer(images)  # Trace outside the timing.

        def epoch():
            for batch in synthetic:
                infer(batch[0]).numpy()
                yield batch

        times = time_epochs(epoch, epochs=config.epochs)
    return Measurement(times=times, peak_rss_bytes=memory.peak)


def _train_step(context: Context, repeat: int, *, real_images: bool) -> Measurement:
    """The train step (`loop.fit`, through the training input pipeline) on `model_steps`
    batches of examples in memory:
    random pixels (`model-train`) or the split's first images decoded through the input pipeline
    (`train`)."""
    config = context.config
    count = config.model_steps * config.batch_size
    with PeakMemory() as memory:
        if real_images:
            directory = os.path.join(context.cache_root, f"train-r{repeat}")
            inputs, labels = stored_images(context.folder, count, directory=directory)
        else:
            rng = np.random.default_rng(config.data.seed)
            size = config.data.image_size
            inputs = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
            labels = rng.integers(0, context.folder.num_classes, size=(count,)).astype(np.int32)
        times = _loop_epochs(context.classifier, inputs, labels, context)
    return Measurement(times=times, peak_rss_bytes=memory.peak)


def _extract(context: Context, repeat: int, *, stored: bool) -> Measurement:
    """The job's extraction over the split's first `model_steps` batches: the pixel store
    filled, then the backbone over it (`backbone_features.extract_stored`), every epoch
    (`extract`, as a first features-mode run does), or only the backbone over a store filled
    before the timing (`extract-stored`, as after an images-mode run)."""
    config, strategy = context.config, context.strategy
    count = min(config.model_steps * config.batch_size, len(context.folder))
    positions = np.arange(len(context.folder))
    subset = loading.select(context.folder, positions < count, name="train")
    filled = itertools.count()

    def fill():
        directory = os.path.join(context.cache_root, f"extract-r{repeat}-{next(filled)}")
        return store.store_pixels(subset, directory=directory).examples

    with PeakMemory() as memory:
        images = fill() if stored else None

        def epoch():
            features = backbone_features.extract_stored(
                images if stored else fill(),
                context.extractor,
                strategy=strategy,
                batch_size=config.batch_size,
            )
            return [(features, None)]

        times = time_epochs(epoch, epochs=config.epochs)
    return Measurement(times=times, peak_rss_bytes=memory.peak)


def _service_variant(context: Context, repeat: int, *, workers: int) -> Measurement:
    """The decode pass through a tf.data service with `workers` local workers (in this process,
    sharing its cores): every epoch decodes the split once on the service (distributed_epoch),
    as train and extract do with --data_service_address."""
    dispatcher = data_service.start_dispatcher(0)
    servers = [
        data_service.start_worker(dispatcher.target, port=data_service.free_port())
        for _ in range(workers)
    ]
    try:
        with PeakMemory() as memory:
            times = time_epochs(
                lambda: [
                    (data_service.decode_through_service(context.folder, dispatcher.target), None)
                ],
                epochs=context.config.epochs,
            )
    finally:
        for server in [*servers, dispatcher]:
            server.stop()
    return Measurement(times=times, peak_rss_bytes=memory.peak)


def _reference_variants(source: str) -> dict[str, Callable[[Context, int], Measurement]]:
    return {
        f"{source}-memory-{output}": functools.partial(
            _reference_variant, source=source, output=output
        )
        for output in ("uint8", "float32")
    }


# Name -> the function that measures the variant once (one repeat). The model variants time
# `model_steps` batches per "epoch": the model runs at a few hundred images/s on a CPU, so full
# epochs would take minutes; `train` and `extract` read the first batches of the split from a
# warm memory cache, so they measure the input pipeline's steady state feeding the model.
VARIANTS: dict[str, Callable[[Context, int], Measurement]] = {
    "legacy": functools.partial(_epochs_variant, _legacy_epochs),
    "idfd": functools.partial(_epochs_variant, _idfd_epochs),
    **_reference_variants("pipeline"),
    "train-input": _train_input_variant,
    "decode": functools.partial(
        _epochs_variant, lambda context: _decode_epochs(list(context.folder.file_paths))
    ),
    "audit": functools.partial(_epochs_variant, lambda context: _audit_epochs(context.folder)),
    "model-infer": _model_infer,
    "model-train": functools.partial(_train_step, real_images=False),
    "train": functools.partial(_train_step, real_images=True),
    "extract": functools.partial(_extract, stored=False),
    "extract-stored": functools.partial(_extract, stored=True),
    **_reference_variants("tfds"),
    "service-1": functools.partial(_service_variant, workers=1),
    "service-2": functools.partial(_service_variant, workers=2),
}
assert set(VARIANTS) == set(BENCH_VARIANTS + BENCH_TFDS_VARIANTS + BENCH_SERVICE_VARIANTS), (
    "config's names"
)


@dataclasses.dataclass(frozen=True)
class Ratio:
    """A variant's images/s over legacy's: steady (median of side-by-side ratios) and cold."""

    steady: float
    cold: float


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Everything a benchmark run measured.

    Attributes:
      results: Variant name -> Throughput.
      ratios_to_legacy: Input and decode variant name -> Ratio (with legacy measured).
      verdict: Input-bound or model-bound, and why.
      environment: Versions, devices, strategy and the run's settings.
      uint8_image_bytes: What the decoded training images take as uint8.
    """

    results: dict[str, Throughput]
    ratios_to_legacy: dict[str, Ratio]
    verdict: str
    environment: dict
    uint8_image_bytes: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def environment(strategy: tf.distribute.Strategy, config: BenchConfig) -> dict:
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cores_available": decode.available_cores(),
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "strategy": distribute.describe(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "config": dataclasses.asdict(config),
    }


def _context(
    config: BenchConfig,
    *,
    strategy: tf.distribute.Strategy,
    log: Callable[[str], None],
    cache_root: str,
) -> Context:
    data_config = config.data
    train_dir = os.path.join(data_config.data_dir, data_config.train_subdir)
    # One check-and-list pass (one decode of every file, as training does): undecodable files
    # not on the exclude list stop the benchmark. Only the training folder is measured, so a
    # data folder needs no Test folder here (loading.load_splits would ask for one).
    folder, _ = loading.load_labeled_folder(
        train_dir,
        class_names=loading.list_classes(train_dir, role="training"),
        image_size=data_config.image_size,
        name="train",
        exclude_files=loading.load_exclude_list(data_config.exclude_list),
    )
    tfds_folder = None
    if any(v in BENCH_TFDS_VARIANTS for v in config.variants):
        from fruits_tl.data import tfds_fruits360

        tfds_folder = tfds_fruits360.load_tfds_splits(
            tfds_data_dir=data_config.tfds_data_dir,
            manual_dir=data_config.manual_dir,
            image_size=data_config.image_size,
            seed=data_config.seed,
        ).train
        if tfds_folder.class_names != folder.class_names or len(tfds_folder) != len(folder):
            log(
                f"note: the TFDS train split ({len(tfds_folder)} images) is not the folder's "
                f"({len(folder)}); compare their rates, not their totals"
            )
    classifier = extractor = None
    if any(v in BENCH_MODEL_VARIANTS for v in config.variants):
        with strategy.scope():
            classifier = model.build_classifier(
                folder.num_classes,
                image_size=data_config.image_size,
                alpha=config.model.alpha,
                weights=config.model.weights,
                seed=data_config.seed,
            )
            model.compile_classifier(
                classifier, optimizer="rmsprop", learning_rate=1e-4, num_classes=folder.num_classes
            )
            extractor = model.build_feature_extractor(
                classifier.get_layer(model.BACKBONE_NAME), image_size=data_config.image_size
            )
    return Context(
        config=config,
        folder=folder,
        tfds_folder=tfds_folder,
        strategy=strategy,
        classifier=classifier,
        extractor=extractor,
        cache_root=cache_root,
    )


def run_benchmark(
    config: BenchConfig,
    *,
    strategy: tf.distribute.Strategy,
    log: Callable[[str], None] = print,
    stop: stopping.GracefulStop | None = None,
) -> BenchResult:
    """Runs every requested variant `repeats` times, interleaved, and aggregates.

    A stop request (SIGINT, SIGTERM) is answered after the variant being measured: a
    benchmark keeps no checkpoint, since its ratios are only side by side within one run.

    The file caches go to a fresh temporary folder (inside `config.cache_dir` when set),
    removed when the run ends however it ends: a cache left from an earlier run would make a
    "cold" pass warm, and each run's caches are the size of the decoded split.
    """
    if config.cache_dir:
        os.makedirs(config.cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix="fruits-tl-bench-", dir=config.cache_dir or None
    ) as cache_root:
        return _run_benchmark(config, strategy=strategy, log=log, stop=stop, cache_root=cache_root)


def _run_benchmark(
    config: BenchConfig,
    *,
    strategy: tf.distribute.Strategy,
    log: Callable[[str], None],
    stop: stopping.GracefulStop | None,
    cache_root: str,
) -> BenchResult:
    context = _context(config, strategy=strategy, log=log, cache_root=cache_root)
    measured: dict[str, list[Measurement]] = {v: [] for v in config.variants}
    for repeat in range(config.repeats):
        for variant in config.variants:
            measurement = VARIANTS[variant](context, repeat)
            measured[variant].append(measurement)
            stopping.point(f"bench:measured:{variant}:{repeat + 1}")
            if stop is not None:
                stop.check(
                    f"after {variant} in repeat {repeat + 1} of {config.repeats}; a benchmark "
                    "is not resumed (its figures compare only within one run): rerun it"
                )
            rates = measurement.times.images_per_second
            log(
                f"repeat {repeat + 1}/{config.repeats} {variant}: cold {rates[0]:.0f} images/s, "
                f"steady median {statistics.median(rates[1:]):.0f} images/s"
            )
    results = {
        v: summarize(
            v,
            [m.times for m in runs],
            peak_rss_bytes=max(m.peak_rss_bytes for m in runs),
            cache_bytes=max(m.cache_bytes for m in runs),
        )
        for v, runs in measured.items()
    }
    ratios = {}
    if "legacy" in results:
        legacy = results["legacy"]
        for name, result in results.items():
            if (
                name
                in BENCH_INPUT_VARIANTS
                + BENCH_DECODE_VARIANTS
                + BENCH_TFDS_VARIANTS
                + BENCH_SERVICE_VARIANTS
            ):
                ratios[name] = Ratio(
                    steady=median_ratio(result, legacy),
                    cold=result.first_epoch_images_per_second
                    / legacy.first_epoch_images_per_second,
                )
    size = config.data.image_size
    return BenchResult(
        results=results,
        ratios_to_legacy=ratios,
        verdict=make_verdict(results),
        environment=environment(strategy, config),
        uint8_image_bytes=len(context.folder) * size * size * 3,
    )


def make_verdict(results: dict) -> str:
    """Says whether training is input-bound or model-bound, from the measured figures."""
    pipeline_result = results.get(DEFAULT_TRAINING_FORM)
    model_train = results.get("model-train")
    train = results.get("train")
    if not (pipeline_result and model_train):
        return f"verdict needs both {DEFAULT_TRAINING_FORM} and model-train"
    headroom = pipeline_result.steady_median / model_train.steady_median
    bound = "model-bound" if headroom >= 1.0 else "input-bound"
    text = (
        f"{bound}: the input pipeline delivers {pipeline_result.steady_median:.0f} images/s, "
        f"{headroom:.1f}x what the train step consumes ({model_train.steady_median:.0f} "
        "images/s on in-memory tensors)"
    )
    if train:
        text += (
            "; the real training step reaches "
            f"{train.steady_median / model_train.steady_median:.0%} of "
            "model-only throughput"
        )
    infer = results.get("model-infer")
    for name, how in (("extract", "decoding as it goes"), ("extract-stored", "from stored pixels")):
        if results.get(name) and infer:
            text += (
                f"; feature extraction {how} reaches "
                f"{results[name].steady_median / infer.steady_median:.0%} of the compiled "
                "forward rate (model-infer)"
            )
    return text


def _optional(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def format_table(result: BenchResult) -> str:
    """The human table: one row per variant."""
    header = (
        f"{'variant':24} {'img/epoch':>9} {'cold img/s':>10} {'steady med':>10} {'min':>8} "
        f"{'max':>8} "
        f"{'1st batch s':>11} {'x legacy':>8} {'cold x':>6} {'cold CPU us/img':>15} "
        f"{'cold cores':>10} {'peak RSS MB':>11} {'cache MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, r in result.results.items():
        ratio = getattr(result.ratios_to_legacy.get(name), "steady", None)
        cold = getattr(result.ratios_to_legacy.get(name), "cold", None)
        # Model variants time whole steps (fit, or one extraction call), not batch arrival.
        first = "-" if name in BENCH_MODEL_VARIANTS else f"{r.time_to_first_batch:.3f}"
        lines.append(
            f"{name:24} {r.images_per_epoch:9d} {r.first_epoch_images_per_second:10.0f} "
            f"{r.steady_median:10.0f} "
            f"{r.steady_min:8.0f} {r.steady_max:8.0f} {first:>11} "
            f"{_optional(ratio, '.1f', 'x'):>8} {_optional(cold, '.2f', 'x'):>6} "
            f"{_optional(r.cold_cpu_us_per_image, '.0f'):>15} {_optional(r.cold_cores, '.2f'):>10} "
            f"{r.peak_rss_bytes / 2**20:11.0f} {r.cache_bytes / 2**20:8.1f}"
        )
    if result.ratios_to_legacy:
        lines.append(
            "x legacy: steady images/s over legacy's, the median of the repeats' side-by-side "
            "ratios; cold x: the cold medians' ratio (the first epoch, decode included)"
        )
    lines.append(
        "cold CPU us/img: the process's CPU time (all threads, user and system) per image in "
        "the cold epoch; cold cores: that CPU time over the epoch's wall time (medians over "
        "repeats). In each repeat, cold images/s = cores / CPU time per image."
    )
    lines.append(f"uint8 size of the decoded images: {result.uint8_image_bytes / 2**20:.1f} MB")
    lines.append(result.verdict)
    return "\n".join(lines)
