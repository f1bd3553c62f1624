"""Throughput benchmark: input variants, the model alone, and the two together, in one run.

Each variant is timed by `time_epochs`, whose arithmetic is tested with a fake clock: it
counts the images of every batch it pulls, reports the time to the first batch, the first
(cold) epoch apart from the steady-state epochs, and images/s per epoch. Variants are run
interleaved, repeat by repeat, so ratios are measured side by side on the same noisy machine.

Variants (each delivers what a model consumes: batches of size x size x 3 images with labels):
  legacy         the tutorial's ImageDataGenerator.flow_from_directory (float32, preprocessed)
  idfd           image_dataset_from_directory as tutorials use it, no cache (float32, preprocessed)
  pipeline-<cache>-<output>   our route, cache memory|file, output uint8|float32
  tfds-<cache>-<output>      our route reading the prepared fruits360 TFDS records
  decode         TensorFlow's decoder alone over every file, in parallel (the decode ceiling)
  audit          fruits-tl-audit's one-pass inspection of every file
  model-infer    the classifier alone on in-memory uint8 tensors, inference
  model-train    the classifier alone on in-memory uint8 tensors, train step
  train          our route (memory, uint8) feeding the real train step (Keras fit)
  extract        feature extraction through our route
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from fruits_tl import data, distribute, features, model, pipeline, preprocess
from fruits_tl.errors import UserInputError

INPUT_VARIANTS = (
    "legacy",
    "idfd",
    "pipeline-memory-uint8",
    "pipeline-memory-float32",
    "pipeline-file-uint8",
    "pipeline-file-float32",
)
# Decode-rate variants (every epoch reads and decodes every file; nothing is cached):
# `decode` is the ceiling, TensorFlow's JPEG decoder alone over all files in parallel;
# `audit` is fruits-tl-audit's inspection pass over the same files.
DECODE_VARIANTS = ("decode", "audit")
MODEL_VARIANTS = ("model-infer", "model-train", "train", "extract")
ALL_VARIANTS = INPUT_VARIANTS + DECODE_VARIANTS + MODEL_VARIANTS
# Our route reading the prepared fruits360 TFDS records instead of the folder; asked for by
# name (they need --tfds_data_dir, and --manual_dir to prepare the records the first time).
TFDS_VARIANTS = ("tfds-memory-uint8", "tfds-memory-float32", "tfds-file-uint8", "tfds-file-float32")
DEFAULT_TRAINING_FORM = "pipeline-memory-uint8"


@dataclasses.dataclass(frozen=True)
class EpochTimes:
    """What `time_epochs` measured for one repeat of one variant.

    Attributes:
      time_to_first_batch: Seconds from starting the first epoch to its first batch.
      epoch_seconds: Seconds of each epoch (the first is the cold one).
      epoch_images: Images delivered in each epoch.
    """

    time_to_first_batch: float
    epoch_seconds: tuple[float, ...]
    epoch_images: tuple[int, ...]

    @property
    def images_per_second(self) -> tuple[float, ...]:
        return tuple(
            n / max(s, 1e-12) for n, s in zip(self.epoch_images, self.epoch_seconds, strict=True)
        )


def _batch_size_of(batch) -> int:
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(images.shape[0])


def time_epochs(
    make_epoch: Callable[[], Iterable],
    *,
    epochs: int,
    clock: Callable[[], float] = time.perf_counter,
) -> EpochTimes:
    """Times `epochs` full passes of `make_epoch()` and counts the images each delivers.

    The clock starts before the epoch's iterator is created (creating it may start work), and
    stops after its last batch; every batch is counted, none is skipped or timed twice.

    Args:
      make_epoch: Returns an iterable of `(images, labels)` batches for one epoch.
      epochs: Number of epochs (>= 1).
      clock: Seconds, monotonic.

    Returns:
      The EpochTimes.
    """
    if epochs < 1:
        raise UserInputError(f"epochs must be >= 1, got {epochs}.")
    seconds, counts = [], []
    first_batch = None
    for _epoch in range(epochs):
        start = clock()
        count = 0
        for batch in make_epoch():
            if first_batch is None:
                first_batch = clock() - start
            count += _batch_size_of(batch)
        seconds.append(clock() - start)
        counts.append(count)
    return EpochTimes(
        time_to_first_batch=first_batch or 0.0,
        epoch_seconds=tuple(seconds),
        epoch_images=tuple(counts),
    )


@dataclasses.dataclass(frozen=True)
class Throughput:
    """A variant's figures over all repeats.

    Attributes:
      name: The variant.
      images_per_epoch: Images in one epoch.
      first_epoch_images_per_second: Median over repeats of the cold epoch.
      steady_median, steady_min, steady_max: images/s over every steady-state epoch.
      time_to_first_batch: Median seconds to the first batch.
      peak_rss_bytes: Peak resident memory of the process while the variant ran.
      cache_bytes: Memory (RSS growth over the cold epoch) or disk bytes of its cache; 0 if none.
      repeats: Per-repeat median steady images/s (for side-by-side ratios).
    """

    name: str
    images_per_epoch: int
    first_epoch_images_per_second: float
    steady_median: float
    steady_min: float
    steady_max: float
    time_to_first_batch: float
    peak_rss_bytes: int
    cache_bytes: int
    repeats: tuple[float, ...]


def summarize(
    name: str, runs: list[EpochTimes], *, peak_rss_bytes: int = 0, cache_bytes: int = 0
) -> Throughput:
    """Aggregates repeats: the first epoch of each repeat is cold, the rest steady state.

    With a single epoch per repeat there is no steady state; the steady figures are then those
    of the (cold) epochs.
    """
    cold = [r.images_per_second[0] for r in runs]
    steady = [v for r in runs for v in r.images_per_second[1:]] or cold
    per_repeat = [statistics.median(r.images_per_second[1:] or r.images_per_second) for r in runs]
    return Throughput(
        name=name,
        images_per_epoch=runs[0].epoch_images[0],
        first_epoch_images_per_second=statistics.median(cold),
        steady_median=statistics.median(steady),
        steady_min=min(steady),
        steady_max=max(steady),
        time_to_first_batch=statistics.median(r.time_to_first_batch for r in runs),
        peak_rss_bytes=peak_rss_bytes,
        cache_bytes=cache_bytes,
        repeats=tuple(per_repeat),
    )


def median_ratio(numerator: Throughput, denominator: Throughput) -> float:
    """Median over repeats of the side-by-side ratio of steady images/s."""
    ratios = [a / b for a, b in zip(numerator.repeats, denominator.repeats, strict=True) if b > 0]
    return statistics.median(ratios) if ratios else float("nan")


def resident_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm", encoding="ascii") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Samples resident memory in a thread while a block runs; `.peak` is the maximum seen."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = resident_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run (see fruits-tl-bench's flags)."""

    data_dir: str
    train_subdir: str = "Training"
    variants: tuple[str, ...] = ALL_VARIANTS
    epochs: int = 5
    repeats: int = 3
    batch_size: int = 32
    image_size: int = 128
    alpha: float = 1.0
    weights: str = "none"
    model_steps: int = 20
    cache_dir: str = ""
    seed: int = 42
    exclude_list: str = ""
    tfds_data_dir: str = ""
    manual_dir: str = ""

    def __post_init__(self):
        unknown = [v for v in self.variants if v not in ALL_VARIANTS + TFDS_VARIANTS]
        if unknown:
            raise UserInputError(
                f"unknown --variants {', '.join(unknown)}; known: {', '.join(ALL_VARIANTS + TFDS_VARIANTS)}."
            )
        if self.epochs < 2:
            raise UserInputError(
                f"epochs must be >= 2 (one cold, at least one steady), got {self.epochs}."
            )
        if self.repeats < 1 or self.batch_size < 1 or self.model_steps < 1:
            raise UserInputError("repeats, batch_size and model_steps must be >= 1.")


def _legacy_epochs(train_dir: str, config: BenchConfig):
    # Keras 3 keeps the tutorial's loader (keras.src.legacy) reachable as tf.keras's
    # preprocessing.image.ImageDataGenerator, the spelling tutorials use.
    try:
        ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator
    except AttributeError as error:
        raise UserInputError(
            f"this TensorFlow/Keras has no ImageDataGenerator ({error}); drop 'legacy' from --variants."
        ) from None
    generator = ImageDataGenerator(
        preprocessing_function=keras.applications.mobilenet.preprocess_input
    )
    iterator = generator.flow_from_directory(
        train_dir,
        target_size=(config.image_size, config.image_size),
        batch_size=config.batch_size,
        class_mode="sparse",
        shuffle=True,
        seed=config.seed,
    )

    def epoch():
        return (iterator[i] for i in range(len(iterator)))

    return epoch


def _idfd_epochs(train_dir: str, config: BenchConfig):
    dataset = keras.utils.image_dataset_from_directory(
        train_dir,
        batch_size=config.batch_size,
        image_size=(config.image_size, config.image_size),
        shuffle=True,
        seed=config.seed,
        verbose=False,
    )
    dataset = dataset.map(
        lambda x, y: (preprocess.mobilenet_inputs(x), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return lambda: dataset


def _decode_epochs(paths: list[str]):
    dataset = (
        tf.data.Dataset.from_tensor_slices(paths)
        .map(
            lambda p: tf.shape(
                tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
            ),
            num_parallel_calls=data.decode_parallelism(),
            deterministic=False,
        )
        .batch(256)
    )
    return lambda: dataset


def _audit_epochs(folder: data.ImageFolder):
    from fruits_tl import audit

    entries = [
        (p, "train", folder.class_names[label])
        for p, label in zip(folder.file_paths, folder.labels, strict=True)
    ]

    def epoch():
        facts, _ = audit.inspect_files(entries)
        return [(np.zeros(len(facts)), None)]

    return epoch


def _disk_bytes(prefix: str) -> int:
    directory = os.path.dirname(prefix) or "."
    base = os.path.basename(prefix)
    return sum(
        os.path.getsize(os.path.join(directory, n))
        for n in os.listdir(directory)
        if n.startswith(base)
    )


def run_input_variant(
    name: str, folder: data.ImageFolder, config: BenchConfig, *, cache_root: str, repeat: int
) -> tuple[EpochTimes, int, int]:
    """Measures one input variant once; returns (times, peak RSS, cache bytes)."""
    train_dir = os.path.join(config.data_dir, config.train_subdir)
    cache_bytes = 0
    with PeakMemory() as memory:
        before = resident_bytes()
        if name == "legacy":
            times = time_epochs(_legacy_epochs(train_dir, config), epochs=config.epochs)
        elif name == "idfd":
            times = time_epochs(_idfd_epochs(train_dir, config), epochs=config.epochs)
        elif name == "decode":
            times = time_epochs(_decode_epochs(list(folder.file_paths)), epochs=config.epochs)
        elif name == "audit":
            times = time_epochs(_audit_epochs(folder), epochs=config.epochs)
        else:
            _, cache, output = name.split("-")
            prefix = os.path.join(cache_root, f"r{repeat}-{output}") if cache == "file" else cache
            holder = {}

            def epoch():
                # The first call builds the route (a file cache is filled here), inside the
                # cold epoch's timing; later epochs reuse it.
                if "dataset" not in holder:
                    holder["dataset"] = pipeline.make_batches(
                        folder,
                        batch_size=config.batch_size,
                        training=True,
                        cache=prefix,
                        seed=config.seed,
                        output=output,
                    )
                return holder["dataset"]

            cold = time_epochs(epoch, epochs=1)
            grown = resident_bytes() - before
            steady = time_epochs(epoch, epochs=config.epochs - 1)
            times = EpochTimes(
                time_to_first_batch=cold.time_to_first_batch,
                epoch_seconds=cold.epoch_seconds + steady.epoch_seconds,
                epoch_images=cold.epoch_images + steady.epoch_images,
            )
            cache_bytes = (
                grown
                if cache == "memory"
                else _disk_bytes(pipeline.get_cache_prefix(prefix, folder))
            )
            holder.clear()
    return times, memory.peak, max(cache_bytes, 0)


def _in_memory_batch(config: BenchConfig, num_classes: int):
    rng = np.random.default_rng(config.seed)
    images = rng.integers(
        0, 256, size=(config.batch_size, config.image_size, config.image_size, 3), dtype=np.uint8
    )
    labels = rng.integers(0, num_classes, size=(config.batch_size,)).astype(np.int32)
    return tf.constant(images), tf.constant(labels)


def warm_batches(
    folder: data.ImageFolder,
    count: int,
    config: BenchConfig,
    *,
    training: bool,
    min_batch_size: int = 1,
) -> tf.data.Dataset:
    """The route's batches of the first `count` images of a split, decoded once into a memory
    cache (untimed), so model variants measure the route's steady state feeding the model."""
    count = min(count, len(folder))
    subset = data.select(folder, np.arange(len(folder)) < count, name=f"{folder.name}-first{count}")
    batches = pipeline.make_batches(
        subset,
        batch_size=config.batch_size,
        training=training,
        cache="memory",
        seed=config.seed,
        min_batch_size=min_batch_size,
    )
    for _ in batches:
        pass
    return batches


def _fit_epochs(classifier, batches: tf.data.Dataset, config: BenchConfig) -> EpochTimes:
    """Keras fit for `epochs` x `model_steps` steps, timed per epoch by ThroughputCallback."""
    from fruits_tl.callbacks import ThroughputCallback

    images = config.model_steps * config.batch_size
    callback = ThroughputCallback(images, log_name="bench")
    classifier.fit(
        batches,
        epochs=config.epochs,
        steps_per_epoch=config.model_steps,
        callbacks=[callback],
        verbose=0,
        shuffle=False,
    )
    return EpochTimes(
        time_to_first_batch=0.0,
        epoch_seconds=tuple(callback.epoch_seconds),
        epoch_images=(images,) * config.epochs,
    )


def run_model_variant(
    name: str,
    folder: data.ImageFolder,
    config: BenchConfig,
    *,
    strategy: tf.distribute.Strategy,
    classifier,
    extractor,
) -> tuple[EpochTimes, int]:
    """Measures one model variant once; an "epoch" is `model_steps` batches.

    The model runs at a few hundred images/s on a CPU, so full epochs would take minutes; the
    `train` and `extract` variants read the first `model_steps` batches of the split from a
    warm memory cache, so they measure the route's steady state feeding the model.
    """
    steps = config.model_steps
    with PeakMemory() as memory:
        if name == "model-infer":
            images, labels = _in_memory_batch(config, folder.num_classes)
            synthetic = tf.data.Dataset.from_tensors((images, labels)).repeat(steps)
            infer = tf.function(lambda x: extractor(x, training=False))
            infer(images)  # Trace outside the timing.

            def epoch():
                for batch in synthetic:
                    infer(batch[0]).numpy()
                    yield batch

            times = time_epochs(epoch, epochs=config.epochs)
        elif name in ("model-train", "train"):
            if name == "model-train":
                images, labels = _in_memory_batch(config, folder.num_classes)
                batches = tf.data.Dataset.from_tensors((images, labels)).repeat()
            else:
                batches = warm_batches(
                    folder, steps * config.batch_size, config, training=True
                ).repeat()
            times = _fit_epochs(classifier, batches, config)
        elif name == "extract":
            batches = warm_batches(
                folder,
                steps * config.batch_size,
                config,
                training=False,
                min_batch_size=strategy.num_replicas_in_sync,
            )

            def epoch():
                return [features.run_extractor(batches, extractor, strategy=strategy)]

            times = time_epochs(epoch, epochs=config.epochs)
        else:
            raise UserInputError(f"unknown model variant {name!r}")
    return times, memory.peak


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Everything a benchmark run measured."""

    results: dict
    ratios_to_legacy: dict
    verdict: str
    environment: dict
    uint8_image_bytes: int


def environment(strategy: tf.distribute.Strategy, config: BenchConfig) -> dict:
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "strategy": distribute.describe(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "config": dataclasses.asdict(config),
    }


def run_benchmark(
    config: BenchConfig, *, strategy: tf.distribute.Strategy, log: Callable[[str], None] = print
) -> BenchResult:
    """Runs every requested variant `repeats` times, interleaved, and aggregates."""
    import tempfile

    train_dir = os.path.join(config.data_dir, config.train_subdir)
    # One check-and-list pass (one decode of every file, as training does): undecodable files
    # not on the exclude list stop the benchmark.
    folder, _ = data.load_labeled_folder(
        train_dir,
        class_names=data.list_classes(train_dir, role="training"),
        image_size=config.image_size,
        name="train",
        exclude_files=data.load_exclude_list(config.exclude_list),
    )
    uint8_bytes = len(folder) * config.image_size * config.image_size * 3
    tfds_folder = None
    if any(v in TFDS_VARIANTS for v in config.variants):
        from fruits_tl import tfds_fruits360

        tfds_folder = tfds_fruits360.load_tfds_splits(
            tfds_data_dir=config.tfds_data_dir,
            manual_dir=config.manual_dir,
            image_size=config.image_size,
            seed=config.seed,
        ).train
        if tfds_folder.class_names != folder.class_names or len(tfds_folder) != len(folder):
            log(
                f"note: the TFDS train split ({len(tfds_folder)} images) is not the folder's ({len(folder)}); "
                "compare their rates, not their totals"
            )
    classifier = extractor = None
    if any(v in MODEL_VARIANTS for v in config.variants):
        with strategy.scope():
            classifier = model.build_classifier(
                folder.num_classes,
                image_size=config.image_size,
                alpha=config.alpha,
                weights=config.weights,
                seed=config.seed,
            )
            model.compile_classifier(
                classifier, optimizer="rmsprop", learning_rate=1e-4, num_classes=folder.num_classes
            )
            extractor = model.build_feature_extractor(
                classifier.get_layer(model.BACKBONE_NAME), image_size=config.image_size
            )
    runs: dict[str, list[EpochTimes]] = {v: [] for v in config.variants}
    peaks: dict[str, int] = {v: 0 for v in config.variants}
    caches: dict[str, int] = {v: 0 for v in config.variants}
    cache_root = config.cache_dir or tempfile.mkdtemp(prefix="fruits-tl-bench-")
    for repeat in range(config.repeats):
        for variant in config.variants:
            if variant in TFDS_VARIANTS:
                times, peak, cache = run_input_variant(
                    variant.replace("tfds-", "pipeline-"),
                    tfds_folder,
                    config,
                    cache_root=cache_root,
                    repeat=repeat,
                )
            elif variant in MODEL_VARIANTS:
                times, peak = run_model_variant(
                    variant,
                    folder,
                    config,
                    strategy=strategy,
                    classifier=classifier,
                    extractor=extractor,
                )
                cache = 0
            else:
                times, peak, cache = run_input_variant(
                    variant, folder, config, cache_root=cache_root, repeat=repeat
                )
            runs[variant].append(times)
            peaks[variant] = max(peaks[variant], peak)
            caches[variant] = max(caches[variant], cache)
            rates = times.images_per_second
            log(
                f"repeat {repeat + 1}/{config.repeats} {variant}: cold {rates[0]:.0f} images/s, steady median "
                f"{statistics.median(rates[1:]):.0f} images/s"
            )
    results = {
        v: summarize(v, runs[v], peak_rss_bytes=peaks[v], cache_bytes=caches[v])
        for v in config.variants
    }
    ratios = {}
    if "legacy" in results:
        for name, result in results.items():
            if name in INPUT_VARIANTS + DECODE_VARIANTS + TFDS_VARIANTS:
                ratios[name] = {
                    "steady": median_ratio(result, results["legacy"]),
                    "cold": result.first_epoch_images_per_second
                    / results["legacy"].first_epoch_images_per_second,
                }
    return BenchResult(
        results=results,
        ratios_to_legacy=ratios,
        verdict=make_verdict(results),
        environment=environment(strategy, config),
        uint8_image_bytes=uint8_bytes,
    )


def make_verdict(results: dict) -> str:
    """Says whether training is input-bound or model-bound, from the measured figures."""
    pipeline_result = results.get(DEFAULT_TRAINING_FORM)
    model_train = results.get("model-train")
    train = results.get("train")
    if not (pipeline_result and model_train):
        return "verdict needs both pipeline-memory-uint8 and model-train"
    headroom = pipeline_result.steady_median / model_train.steady_median
    bound = "model-bound" if headroom >= 1.0 else "input-bound"
    text = (
        f"{bound}: the input route delivers {pipeline_result.steady_median:.0f} images/s, "
        f"{headroom:.1f}x what the train step consumes ({model_train.steady_median:.0f} images/s on in-memory tensors)"
    )
    if train:
        text += (
            f"; the real training step reaches {train.steady_median / model_train.steady_median:.0%} of "
            "model-only throughput"
        )
    extract, infer = results.get("extract"), results.get("model-infer")
    if extract and infer:
        text += f"; feature extraction reaches {extract.steady_median / infer.steady_median:.0%} of model-only inference"
    return text


def format_table(result: BenchResult) -> str:
    """The human table: one row per variant."""
    header = (
        f"{'variant':24} {'img/epoch':>9} {'cold img/s':>10} {'steady med':>10} {'min':>8} {'max':>8} "
        f"{'1st batch s':>11} {'x legacy':>8} {'peak RSS MB':>11} {'cache MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, r in result.results.items():
        ratio = result.ratios_to_legacy.get(name, {}).get("steady")
        # Model variants time whole steps (fit, or one extraction call), not batch arrival.
        first = "-" if name in MODEL_VARIANTS else f"{r.time_to_first_batch:.3f}"
        lines.append(
            f"{name:24} {r.images_per_epoch:9d} {r.first_epoch_images_per_second:10.0f} {r.steady_median:10.0f} "
            f"{r.steady_min:8.0f} {r.steady_max:8.0f} {first:>11} "
            f"{(f'{ratio:.1f}x' if ratio is not None else '-'):>8} {r.peak_rss_bytes / 2**20:11.0f} {r.cache_bytes / 2**20:8.1f}"
        )
    lines.append(f"uint8 size of the decoded images: {result.uint8_image_bytes / 2**20:.1f} MB")
    lines.append(result.verdict)
    return "\n".join(lines)


def to_json(result: BenchResult) -> dict:
    return {
        "results": {name: dataclasses.asdict(r) for name, r in result.results.items()},
        "ratios_to_legacy": result.ratios_to_legacy,
        "verdict": result.verdict,
        "environment": result.environment,
        "uint8_image_bytes": result.uint8_image_bytes,
    }


@dataclasses.dataclass(frozen=True)
class ModeComparison:
    """fruits-tl-train end to end in images mode and in features mode, same recipe, one run.

    Attributes:
      images_metrics, features_metrics: metrics.json of each mode's last repeat, plus
        end_to_end_seconds.
      speedup: Median over repeats of images seconds / features seconds (side by side).
      speedups: Each repeat's ratio.
      accuracy_difference: features minus images test accuracy (last repeat).
    """

    images_metrics: dict
    features_metrics: dict
    speedup: float
    speedups: tuple[float, ...]
    accuracy_difference: float


def _train_in_child(config, strategy_name: str, queue) -> None:
    from fruits_tl import train

    try:
        result = train.train(config, strategy=distribute.get_strategy(strategy_name))
        queue.put(("ok", result.metrics))
    except Exception as error:  # Reported to the parent, which raises it.
        queue.put(("error", f"{type(error).__name__}: {error}"))


def _train_in_fresh_process(config, strategy_name: str) -> dict:
    """Runs train.train in a new (spawned) process and returns its metrics."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_train_in_child, args=(config, strategy_name, queue))
    process.start()
    status, value = queue.get()
    process.join()
    if status != "ok":
        raise UserInputError(f"training in mode {config.mode} failed: {value}")
    return value


def compare_train_modes(
    train_config,
    *,
    strategy_name: str = "auto",
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> ModeComparison:
    """Trains the same recipe with --mode=images and --mode=features and compares them.

    End to end means the job's `total_seconds`: data checks, (extraction,) training and test
    evaluation. Each run gets a fresh process, as separate fruits-tl-train invocations would:
    in one process, the images run's live caches and iterators slowed the features run's
    extraction from about 480 to about 300 images/s. The features directory is fresh each time,
    so features mode pays for its extraction. Modes alternate, repeat by repeat, so each ratio
    is side by side.
    """
    metrics: dict = {}
    ratios = []
    for repeat in range(repeats):
        seconds = {}
        for mode in ("images", "features"):
            model_dir = os.path.join(train_config.model_dir, mode)
            shutil.rmtree(os.path.join(model_dir, "features-fresh"), ignore_errors=True)
            config = dataclasses.replace(
                train_config,
                mode=mode,
                model_dir=model_dir,
                features_dir=os.path.join(model_dir, "features-fresh"),
            )
            result_metrics = _train_in_fresh_process(config, strategy_name)
            seconds[mode] = result_metrics["total_seconds"]
            metrics[mode] = dict(result_metrics, end_to_end_seconds=seconds[mode])
            log(
                f"repeat {repeat + 1}/{repeats} mode {mode}: {seconds[mode]:.1f} s end to end, "
                f"test accuracy {result_metrics['test_accuracy']:.4f}"
            )
        ratios.append(seconds["images"] / seconds["features"])
    return ModeComparison(
        images_metrics=metrics["images"],
        features_metrics=metrics["features"],
        speedup=statistics.median(ratios),
        speedups=tuple(ratios),
        accuracy_difference=metrics["features"]["test_accuracy"]
        - metrics["images"]["test_accuracy"],
    )
