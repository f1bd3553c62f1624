"""fruits-tl-bench --recommend: what each stage of the training job costs on this machine, the
configuration those costs recommend, and (with --verify) the prediction checked by running it.

The stages are the job's own, measured on a sample of the training folder with the package's
own code: the decode pass that fills the pixel store (at several decode parallelisms), the
store read through the training input pipeline, the backbone pass over the store (at several
extraction batch sizes), the head's training on features and the classifier's on stored
images (each at two sample sizes, so that per-image and per-epoch costs come apart), the
model's build and save, and the interpreter's start. A linear model (docs/benchmarking.md,
"The recommendation's model") turns them into each stage's predicted time on the whole folder
for every candidate configuration; the fastest is recommended, a flag leaving its default only
for a predicted gain above the noise. `predict`, `recommend`, `capacity` and `storage` are pure
functions of the measured costs (tested on made-up costs); the timing takes a clock (tested
with a fake one).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from fruits_tl.core import files
from fruits_tl.core.config import DataConfig, ModelConfig, UserInputError
from fruits_tl.data import decode, loading

EXTRACT_BATCHES = (8, 16, 32, 64, 128, 256)
# Epochs timed after the first (traced) one, per sample size; timed calls of a backbone pass.
STEADY_EPOCHS = 5
REPEATS = 3
MODES = ("features", "images")
# A prediction is checked stage by stage: within this fraction of the measured rate.
TOLERANCE = 0.25
# A flag moves from its default only for a predicted gain above this: smaller ones are within
# the measurements' noise on this machine (the same run varied by 10-30% within minutes:
# BENCHMARKS.md 17).
NOISE = 0.10
# The defaults: features mode, 64 images per replica, twice the cores.
DEFAULT_EXTRACT_BATCH = 64


@dataclasses.dataclass(frozen=True)
class StageCosts:
    """What each stage costs on this machine (`measure`).

    Attributes:
      cores: The cores this process may run on.
      fill_images_per_second, fill_fixed_seconds: The decode pass into the store, by decode
        parallelism, and its fixed part (building the pass and the store's file).
      fill_cpu_us_per_image, fill_cores_busy: At the fastest parallelism: CPU time per image
        and the cores it kept busy (images/s = cores busy / CPU time per image).
      read_images_per_second, read_cpu_us_per_image: The store read through the training
        input pipeline, consumed as training consumes it.
      list_seconds_per_image: Listing the folder as Keras lists it (part of the decode check).
      extract_images_per_second: The backbone pass over the store, by extraction batch.
      extract_fixed_seconds: Its fixed part (the extractor's build and trace: the median over
        the batches of what a first call took beyond the others), by batch.
      head_epoch_seconds, head_seconds_per_image: One epoch of the head on features: a fixed
        part (its checkpoint included) and a part per training image (its validation
        included, in the folder's ratio).
      head_trace_seconds: What the first epoch takes beyond a steady one (the trace).
      images_epoch_seconds, images_seconds_per_image, images_trace_seconds: The same for the
        classifier on stored images (images mode).
      start_seconds: The interpreter's start with TensorFlow and Keras imported, the
        classifier's build and its save, the pictures: what every run pays whatever the
        configuration.
      free_disk_bytes, available_memory_bytes: Free space where the store goes; memory the
        page cache can hold it in (a store larger than that is read from disk every epoch).
      sample_images: The training images the stages were measured on.
    """

    cores: int
    fill_images_per_second: dict[int, float]
    fill_fixed_seconds: float
    fill_cpu_us_per_image: float
    fill_cores_busy: float
    read_images_per_second: float
    read_cpu_us_per_image: float
    extract_images_per_second: dict[int, float]
    extract_fixed_seconds: dict[int, float]
    list_seconds_per_image: float
    head_epoch_seconds: float
    head_seconds_per_image: float
    head_trace_seconds: float
    images_epoch_seconds: float
    images_seconds_per_image: float
    images_trace_seconds: float
    start_seconds: float
    free_disk_bytes: int
    available_memory_bytes: int
    sample_images: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Counts:
    """The job the prediction is for: images per split, epochs, the store's bytes."""

    all_images: int
    train_images: int
    validation_images: int
    epochs: int
    store_bytes: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """A configuration: the flags of fruits-tl-train it sets."""

    mode: str
    extract_batch_size: int
    decode_parallelism: int

    def flags(self) -> list[str]:
        extract = [f"--extract_batch_size={self.extract_batch_size}"] * (self.mode == "features")
        return [f"--mode={self.mode}", f"--decode_parallelism={self.decode_parallelism}", *extract]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run: its images, its predicted (or measured) seconds and images/s."""

    name: str
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def fill_rate(costs: StageCosts, parallelism: int) -> float:
    """Images/s of the decode pass at `parallelism`: measured where it was; elsewhere each
    call keeps a core busy, up to the cores the fastest measured pass kept busy."""
    if parallelism in costs.fill_images_per_second:
        return costs.fill_images_per_second[parallelism]
    return 1e6 * min(parallelism, costs.fill_cores_busy) / costs.fill_cpu_us_per_image


def predict(costs: StageCosts, counts: Counts, plan: Plan) -> list[Stage]:
    """Each stage of the run `plan` would make, with its predicted seconds."""
    listing = counts.all_images * costs.list_seconds_per_image
    decoding = counts.all_images / fill_rate(costs, plan.decode_parallelism)
    stages = [
        Stage("start", 0, costs.start_seconds),
        Stage("fill", counts.all_images, costs.fill_fixed_seconds + listing + decoding),
    ]
    trained = counts.train_images * counts.epochs
    if plan.mode == "features":
        rate = costs.extract_images_per_second[plan.extract_batch_size]
        fixed = costs.extract_fixed_seconds[plan.extract_batch_size]
        stages.append(Stage("extract", counts.all_images, fixed + counts.all_images / rate))
        seconds = costs.head_trace_seconds + counts.epochs * costs.head_epoch_seconds
        seconds += trained * costs.head_seconds_per_image
    else:
        seconds = costs.images_trace_seconds + counts.epochs * costs.images_epoch_seconds
        seconds += trained * costs.images_seconds_per_image
    stages.append(Stage("train", trained, seconds))
    return stages


def total_seconds(stages: list[Stage]) -> float:
    return sum(stage.seconds for stage in stages)


def candidates(costs: StageCosts, modes=MODES) -> list[Plan]:
    """Every configuration the measured costs can predict."""
    plans = []
    for mode in modes:
        batches = sorted(costs.extract_images_per_second) if mode == "features" else [0]
        for batch in batches:
            for parallelism in sorted(costs.fill_images_per_second):
                plans.append(Plan(mode, batch, parallelism))
    return plans


def recommend(costs: StageCosts, counts: Counts, modes=MODES) -> tuple[Plan, list[Stage]]:
    """The candidate with the shortest predicted run, and its stages; among those within
    NOISE of it, the one that changes fewest defaults."""
    seconds = {p: total_seconds(predict(costs, counts, p)) for p in candidates(costs, modes)}
    shortest = min(seconds.values())
    close = [p for p in seconds if seconds[p] <= shortest * (1 + NOISE)]
    best = min(close, key=lambda p: (_changed_defaults(p, costs.cores), seconds[p]))
    return best, predict(costs, counts, best)


def _changed_defaults(plan: Plan, cores: int) -> int:
    """How many of the plan's flags differ from fruits-tl-train's defaults."""
    batch = plan.mode == "features" and plan.extract_batch_size != DEFAULT_EXTRACT_BATCH
    return (plan.mode != "features") + batch + (plan.decode_parallelism != 2 * cores)


def bottleneck(stages: list[Stage]) -> str:
    """The stage that takes longest, in words."""
    longest = max((s for s in stages if s.name != "start"), key=lambda s: s.seconds)
    share = longest.seconds / max(total_seconds(stages), 1e-9)
    return f"{longest.name} ({longest.seconds:.1f} s, {share:.0%} of the run)"


def capacity(costs: StageCosts, target: float) -> dict:
    """What feeding `target` images/s takes: the cores (at the measured CPU time per image),
    or how many machines like this one (tf.data service workers for the cold pass, input
    hosts for reading the store), for the cold pass and for training from the store."""
    fill = max(costs.fill_images_per_second.values())
    return {
        "target_images_per_second": target,
        "cold_pass": {
            "images_per_second_here": fill,
            "cores_needed": target * costs.fill_cpu_us_per_image / 1e6,
            "service_workers_like_this_machine": math.ceil(target / fill),
            "this_machine_can": fill >= target,
        },
        "training_from_the_store": {
            "images_per_second_here": costs.read_images_per_second,
            "cores_needed": target * costs.read_cpu_us_per_image / 1e6,
            "input_hosts_like_this_machine": math.ceil(target / costs.read_images_per_second),
            "this_machine_can": costs.read_images_per_second >= target,
        },
    }


def storage(costs: StageCosts, counts: Counts) -> dict:
    """Whether the pixel store fits on the disk it goes to, and in memory (the page cache)."""
    return {
        "store_bytes": counts.store_bytes,
        "fits_on_disk": counts.store_bytes < costs.free_disk_bytes,
        "fits_in_memory": counts.store_bytes < costs.available_memory_bytes,
    }


def count_job(data: DataConfig, epochs: int) -> Counts:
    """The images of the job on `data` (listed, not decoded) and the store's bytes."""
    train_dir = os.path.join(data.data_dir, data.train_subdir)
    test_dir = os.path.join(data.data_dir, data.test_subdir)
    classes = loading.list_classes(train_dir, role="training")
    train = sum(len(p) for p in loading.list_image_files(train_dir, classes).values())
    test = 0
    if os.path.isdir(test_dir):
        test_classes = loading.list_subfolders(test_dir)
        test = sum(len(p) for p in loading.list_image_files(test_dir, test_classes).values())
    validation = round(train * data.validation_split) if data.validation_split else test
    fit = train - validation if data.validation_split else train
    pixels = (train + test) * data.image_size**2 * 3
    return Counts(train + test, fit, validation, epochs, pixels)


def timed(work: Callable[[], object], clock: Callable[[], float] = time.perf_counter):
    """(seconds, CPU seconds) of one call of `work`."""
    start, cpu = clock(), time.process_time()
    work()
    return clock() - start, time.process_time() - cpu


def per_image_and_epoch(small: tuple[int, float], large: tuple[int, float]) -> tuple[float, float]:
    """(seconds per epoch, seconds per image) of a linear cost from two (images, seconds)
    measurements; neither part below 0."""
    (n1, s1), (n2, s2) = small, large
    per_image = max((s2 - s1) / max(n2 - n1, 1), 0.0)
    return max(s1 - n1 * per_image, 0.0), per_image


def report_json(costs, counts, plan, stages, *, target=None, verified=None) -> dict:
    """What --recommend writes to recommendation.json."""
    return {
        "costs": costs.to_json(),
        "counts": dataclasses.asdict(counts),
        "recommended": {"flags": plan.flags(), **dataclasses.asdict(plan)},
        "stages": [
            {
                "stage": s.name,
                "images": s.images,
                "predicted_seconds": s.seconds,
                "predicted_images_per_second": s.images_per_second if s.images else None,
            }
            for s in stages
        ],
        "predicted_seconds": total_seconds(stages),
        "bottleneck": bottleneck(stages),
        "storage": storage(costs, counts),
        "capacity": capacity(costs, target) if target else None,
        "verified": verified,
    }


def measured_stages(metrics: dict, counts: Counts, wall_seconds: float) -> list[Stage]:
    """The stages of a finished fruits-tl-train run, from its metrics.json."""
    stages = [Stage("fill", counts.all_images, metrics["decode_seconds"])]
    if metrics["mode"] == "features":
        stages.append(Stage("extract", counts.all_images, metrics["extract_seconds"]))
    trained = counts.train_images * counts.epochs
    stages.append(Stage("train", trained, metrics["head_train_seconds"]))
    start = wall_seconds - total_seconds(stages)
    return [Stage("start", 0, start), *stages]


def compare(predicted: list[Stage], measured: list[Stage]) -> list[dict]:
    """Stage by stage: predicted and measured seconds and rates, and whether the predicted
    rate is within TOLERANCE of the measured one."""
    by_name = {s.name: s for s in measured}
    rows = []
    for stage in predicted:
        seen = by_name[stage.name]
        error = stage.seconds / max(seen.seconds, 1e-9) - 1
        rows.append(
            {
                "stage": stage.name,
                "predicted_seconds": stage.seconds,
                "measured_seconds": seen.seconds,
                "predicted_images_per_second": stage.images_per_second if stage.images else None,
                "measured_images_per_second": seen.images_per_second if seen.images else None,
                "error": error,
                "within_tolerance": abs(error) <= TOLERANCE,
            }
        )
    return rows


def run_train(data: DataConfig, model: ModelConfig, plan: Plan, *, epochs: int, extra=()):
    """Runs fruits-tl-train with `plan`'s flags, cold (a new model and features folder):
    (its metrics.json, its wall seconds)."""
    work = tempfile.mkdtemp(prefix="fruits-tl-recommend-")
    try:
        command = [
            sys.executable,
            "-m",
            "fruits_tl.cli.train_main",
            f"--data_dir={data.data_dir}",
            f"--model_dir={work}/model",
            f"--image_size={data.image_size}",
            f"--validation_split={data.validation_split}",
            f"--alpha={model.alpha}",
            f"--weights={model.weights}",
            f"--epochs={epochs}",
            "--verbose=0",
            *plan.flags(),
            *extra,
        ]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise UserInputError(
                f"fruits-tl-train with {' '.join(plan.flags())} failed: {result.stderr[-1500:]}"
            )
        with open(os.path.join(work, "model", "metrics.json"), encoding="utf-8") as f:
            return json.load(f), seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_report(output_dir: str, report: dict) -> str:
    path = os.path.join(output_dir, "recommendation.json")
    files.write_json(path, report)
    return path


def render(report: dict) -> str:
    """The console's account: the costs, the recommendation, its stages, the capacity and the
    verification."""
    costs, rec = report["costs"], report["recommended"]
    fill = ", ".join(f"{p}: {r:,.0f}" for p, r in costs["fill_images_per_second"].items())
    extract = ", ".join(f"{b}: {r:,.0f}" for b, r in costs["extract_images_per_second"].items())
    lines = [
        f"Measured on {costs['sample_images']} training images, {costs['cores']} cores:",
        f"  fill (decode into the store) images/s by --decode_parallelism: {fill}; "
        f"{costs['fill_cpu_us_per_image']:.0f} us CPU/image, {costs['fill_cores_busy']:.2f} cores",
        f"  store read (training pipeline): {costs['read_images_per_second']:,.0f} images/s",
        f"  backbone over the store, images/s by --extract_batch_size: {extract}",
        f"  head: trace {costs['head_trace_seconds']:.2f} s, epoch "
        f"{costs['head_epoch_seconds']:.3f} s + {1e6 * costs['head_seconds_per_image']:.1f} "
        "us/image (its checkpoint included)",
        f"  images mode: trace {costs['images_trace_seconds']:.2f} s, epoch "
        f"{costs['images_epoch_seconds']:.3f} s + {1e3 * costs['images_seconds_per_image']:.2f} "
        "ms/image",
        f"  start (interpreter, build, save, pictures): {costs['start_seconds']:.1f} s",
        f"Recommended: {' '.join(rec['flags'])}",
    ]
    for stage in report["stages"]:
        rate = stage["predicted_images_per_second"]
        shown = f", {rate:,.0f} images/s" if rate else ""
        lines.append(f"  {stage['stage']:8s} {stage['predicted_seconds']:8.1f} s{shown}")
    lines.append(
        f"  predicted end to end {report['predicted_seconds']:.1f} s; the bound that remains: "
        f"{report['bottleneck']}"
    )
    lines.append(_render_storage(report["storage"], costs))
    lines += _render_capacity(report["capacity"]) + _render_verified(report["verified"])
    return "\n".join(lines)


def _render_storage(storage: dict, costs: dict) -> str:
    gib = 2**30
    disk = "fits" if storage["fits_on_disk"] else "DOES NOT FIT: choose --features_dir elsewhere"
    memory = (
        "stays in the page cache"
        if storage["fits_in_memory"]
        else "is larger than available memory: epochs of images mode read it from disk"
    )
    return (
        f"  the pixel store, {storage['store_bytes'] / gib:.2f} GiB: {disk} "
        f"({costs['free_disk_bytes'] / gib:.1f} GiB free); {memory} "
        f"({costs['available_memory_bytes'] / gib:.1f} GiB available)"
    )


def _render_capacity(capacity: dict | None) -> list[str]:
    if not capacity:
        return []
    cold, warm = capacity["cold_pass"], capacity["training_from_the_store"]
    target = capacity["target_images_per_second"]
    return [
        f"To feed {target:,.0f} images/s:",
        f"  cold pass: {cold['cores_needed']:.1f} cores, or "
        f"{cold['service_workers_like_this_machine']} tf.data service worker(s) like this "
        f"machine ({cold['images_per_second_here']:,.0f} images/s here: "
        f"{'enough' if cold['this_machine_can'] else 'not enough'})",
        f"  training from the store: {warm['cores_needed']:.1f} cores, or "
        f"{warm['input_hosts_like_this_machine']} input host(s) like this machine "
        f"({warm['images_per_second_here']:,.0f} images/s here: "
        f"{'enough' if warm['this_machine_can'] else 'not enough'})",
    ]


def _render_verified(verified: dict | None) -> list[str]:
    if not verified:
        return []
    lines = [f"Verified by running it ({verified['wall_seconds']:.1f} s end to end):"]
    for row in verified["stages"]:
        mark = "ok" if row["within_tolerance"] else f"OFF by more than {TOLERANCE:.0%}"
        lines.append(
            f"  {row['stage']:8s} predicted {row['predicted_seconds']:7.1f} s, measured "
            f"{row['measured_seconds']:7.1f} s ({row['error']:+.0%}) {mark}"
        )
    return lines


def sample_folder(data: DataConfig, count: int) -> loading.ImageFolder:
    """Up to `count` training images spread evenly over the listing (every class)."""
    train_dir = os.path.join(data.data_dir, data.train_subdir)
    classes = loading.list_classes(train_dir, role="training")
    folder = loading.load_split(
        train_dir, class_names=classes, image_size=data.image_size, name="sample"
    )
    keep = np.zeros(len(folder), bool)
    keep[np.linspace(0, len(folder) - 1, min(count, len(folder))).round().astype(int)] = True
    return loading.select(folder, keep, name="sample")


def default_parallelisms() -> tuple[int, ...]:
    cores = decode.available_cores()
    return tuple(sorted({1, cores, 2 * cores}))


# Measuring. Every stage runs the package's own code on the sample, timed by `clock`.


def measure(
    data: DataConfig,
    model_config: ModelConfig,
    *,
    counts: Counts,
    strategy,
    batch_size: int,
    sample: int,
    work_dir: str,
    parallelisms: tuple[int, ...] = (),
    batches: tuple[int, ...] = EXTRACT_BATCHES,
    clock: Callable[[], float] = time.perf_counter,
) -> StageCosts:
    """Measures every stage on up to `sample` training images of `data` (see the module)."""
    from fruits_tl.data import store

    listed = []  # The sample's own listing is the one timed: the folder is listed once.
    listing_seconds, _ = timed(lambda: listed.append(sample_folder(data, sample)), clock)
    (folder,) = listed
    fills, best, fill_fixed, fill_rates = _fills(
        folder, parallelisms or default_parallelisms(), work_dir, clock
    )
    images = store.store_pixels(folder, directory=os.path.join(work_dir, f"fill-{best}")).examples
    read = _read_rate(images, folder.labels, strategy, batch_size, clock)
    classifier, extractor, start_seconds = _build(
        model_config, data, len(folder.class_names), strategy, work_dir, clock
    )
    timings = _extract_rates(images, extractor, strategy, batches, clock)
    extract = {b: rate for b, (rate, _) in timings.items()}
    # The trace does not depend on the batch: one figure, the median, for all of them.
    trace = float(np.median([fixed for _, fixed in timings.values()]))
    ratio = counts.validation_images / max(counts.train_images, 1)
    run = dict(strategy=strategy, batch_size=batch_size, work_dir=work_dir, clock=clock)
    best_batch = max(extract, key=extract.get)
    head_costs, images_costs = _training_costs(
        classifier, extractor, images, folder.labels, ratio, best_batch, **run
    )
    return StageCosts(
        cores=decode.available_cores(),
        fill_images_per_second=fill_rates,
        fill_fixed_seconds=fill_fixed,
        fill_cpu_us_per_image=fills[best][1],
        fill_cores_busy=fills[best][2],
        read_images_per_second=read[0],
        read_cpu_us_per_image=read[1],
        extract_images_per_second=extract,
        extract_fixed_seconds={b: trace for b in timings},
        list_seconds_per_image=listing_seconds / max(counts.train_images, 1),
        head_epoch_seconds=head_costs[0],
        head_seconds_per_image=head_costs[1],
        head_trace_seconds=head_costs[2],
        images_epoch_seconds=images_costs[0],
        images_seconds_per_image=images_costs[1],
        images_trace_seconds=images_costs[2],
        start_seconds=start_seconds,
        free_disk_bytes=shutil.disk_usage(work_dir).free,
        available_memory_bytes=os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
        sample_images=len(folder),
    )


def _fills(folder, parallelisms, work_dir: str, clock):
    """The decode pass into a new store at each parallelism: (parallelism -> (images/s, CPU us
    per image, cores busy), the fastest, its fixed seconds, images/s without them)."""
    fills = {p: _fill(folder, os.path.join(work_dir, f"fill-{p}"), p, clock) for p in parallelisms}
    best = max(fills, key=lambda p: fills[p][0])
    return (fills, best, *_fill_parts(folder, fills, best, work_dir, clock))


def _fill_parts(folder, fills: dict, best: int, work_dir: str, clock) -> tuple[float, dict]:
    """(the decode pass's fixed seconds, its images/s by parallelism without them), from the
    sample's passes and one more over a quarter of it at the fastest parallelism."""
    count = len(folder)
    quarter = loading.select(folder, np.arange(count) < count // 4, name="sample")
    rate, _, _ = _fill(quarter, os.path.join(work_dir, "fill-quarter"), best, clock)
    fixed, _ = per_image_and_epoch(
        (len(quarter), len(quarter) / rate), (count, count / fills[best][0])
    )
    rates = {p: count / max(count / r - fixed, 1e-9) for p, (r, _, _) in fills.items()}
    return fixed, rates


def _fill(folder, directory: str, parallelism: int, clock) -> tuple[float, float, float]:
    """(images/s, CPU us per image, cores busy) of the cold decode pass into a new store."""
    from fruits_tl.data import store

    seconds, cpu = timed(
        lambda: store.store_pixels(folder, directory=directory, decode_parallelism=parallelism),
        clock,
    )
    return len(folder) / max(seconds, 1e-9), 1e6 * cpu / len(folder), cpu / max(seconds, 1e-9)


def _read_rate(images, labels, strategy, batch_size: int, clock) -> tuple[float, float]:
    """(images/s, CPU us per image) of the store read through the training input pipeline,
    consumed in compiled calls under the strategy as training consumes it (after one epoch
    that builds and traces it)."""
    import tensorflow as tf

    from fruits_tl.data import train_input

    batching = train_input.Batching(
        count=len(labels), batch_size=batch_size, replicas=strategy.num_replicas_in_sync
    )
    epochs = 4
    rows = train_input.training_rows(batching, seed=0, first_epoch=0, epochs=epochs)
    iterator = iter(train_input.distribute(strategy, images, labels, rows, batching=batching))

    take = train_input.real_row_counter(strategy)
    take(iterator, tf.constant(batching.num_batches))  # The first epoch: build and trace.
    steps = tf.constant(batching.num_batches * (epochs - 1))
    seconds, cpu = timed(lambda: take(iterator, steps), clock)
    count = len(labels) * (epochs - 1)
    return count / max(seconds, 1e-9), 1e6 * cpu / count


def _build(model_config: ModelConfig, data: DataConfig, classes: int, strategy, work_dir, clock):
    """(classifier, extractor, start seconds): the interpreter's start with TensorFlow and
    Keras (a new process), the classifier's build and the model file's save."""
    from fruits_tl.models import model
    from fruits_tl.training import reporting

    started = clock()
    subprocess.run(
        [sys.executable, "-c", "import tensorflow, keras"], check=True, capture_output=True
    )
    start = clock() - started
    built = clock()
    with strategy.scope():
        classifier = model.build_classifier(
            classes,
            image_size=data.image_size,
            alpha=model_config.alpha,
            weights=model_config.weights,
            seed=data.seed,
        )
        extractor = model.build_feature_extractor(
            classifier.get_layer(model.BACKBONE_NAME), image_size=data.image_size
        )
    classifier.save(os.path.join(work_dir, "model.keras"))
    history = {key: [1.0, 0.5] for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
    reporting.write_pictures(work_dir, history, None)
    return classifier, extractor, start + clock() - built


def _extract_rates(images, extractor, strategy, batches, clock) -> dict:
    """Batch -> (images/s, fixed seconds) of the backbone pass over the store: the median of
    REPEATS calls, taken in turn over the batches (a slow minute slows every batch alike), and
    what the first (traced) call took beyond it."""
    from fruits_tl.models import backbone_features

    def run(batch):
        return lambda: backbone_features.extract_stored(
            images, extractor, strategy=strategy, batch_size=batch
        )

    first = {b: timed(run(b), clock)[0] for b in batches}
    calls = {b: [] for b in batches}
    for _ in range(REPEATS):
        for b in batches:
            calls[b].append(timed(run(b), clock)[0])
    seconds = {b: float(np.median(calls[b])) for b in batches}
    return {
        b: (len(images) / max(seconds[b], 1e-9), max(first[b] - seconds[b], 0.0)) for b in batches
    }


def _training_costs(
    classifier,
    extractor,
    images,
    labels,
    ratio,
    extract_batch,
    *,
    strategy,
    batch_size,
    work_dir,
    clock,
):
    """((epoch s, s per image, trace s) of the head on features, the same of the classifier
    on stored images), each from steady epochs at two sample sizes."""
    from fruits_tl.models import backbone_features, model

    features = backbone_features.extract_stored(
        images, extractor, strategy=strategy, batch_size=extract_batch
    )
    with strategy.scope():
        head = model.build_head(features.shape[1], int(labels.max()) + 1)
    head_costs = _epoch_costs(
        head, features, labels, ratio, strategy, batch_size, work_dir, clock, on_images=False
    )
    images_costs = _epoch_costs(
        classifier,
        images.numpy(),
        labels,
        ratio,
        strategy,
        batch_size,
        work_dir,
        clock,
        on_images=True,
    )
    return head_costs, images_costs


def _epoch_costs(
    trainable, examples, labels, ratio, strategy, batch_size, work_dir, clock, *, on_images
):
    """(seconds per epoch, seconds per training image, trace seconds) of `loop.fit` as the job
    runs it, from its steady epochs (validation included; the first, traced, apart) at the
    whole sample and at a quarter of it."""
    from fruits_tl.models import model
    from fruits_tl.training import loop, phase

    with strategy.scope():
        model.compile_classifier(
            trainable, optimizer="rmsprop", learning_rate=1e-4, num_classes=int(labels.max()) + 1
        )
        trainable.optimizer.build(trainable.trainable_variables)
    # A checkpoint after every epoch, as the job writes it.
    checkpoints = phase.Checkpoints(
        os.path.join(work_dir, f"checkpoints-{trainable.name}"),
        objects={"model": trainable, "optimizer": trainable.optimizer},
        run_fingerprint={"measuring": trainable.name},
    )
    points, traces = [], []
    for count in (max(len(labels) // 4, batch_size), len(labels)):
        validation_count = max(1, min(round(count * ratio), len(labels)))
        epochs = _EpochClock(clock)
        loop.fit(
            trainable,
            examples=examples[:count],
            labels=labels[:count],
            epochs=STEADY_EPOCHS + 1,
            batch_size=batch_size,
            strategy=strategy,
            validation=(examples[:validation_count], labels[:validation_count]),
            callbacks=[epochs],
            checkpointing=loop.Checkpointing(save=checkpoints.save),
            steps_per_call=1 if on_images else 0,
            evaluation_batch_size=batch_size if on_images else loop.EVALUATION_SLICE,
        )
        steady = float(np.median(epochs.seconds[1:]))
        points.append((count, steady))
        # The first fit's first epoch pays the trace, as the job's does.
        traces.append(max(epochs.seconds[0] - steady, 0.0))
    return (*per_image_and_epoch(points[0], points[1]), traces[0])


class _EpochClock:
    """A callback that times each epoch from its start to the next one's (or the end of
    training): its training steps, its validation and its bookkeeping."""

    def __init__(self, clock):
        self.clock, self.starts, self.seconds = clock, [], []

    def set_model(self, model) -> None:
        del model

    def _mark(self) -> None:
        now = self.clock()
        if self.starts:
            self.seconds.append(now - self.starts[-1])
        self.starts.append(now)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._mark()

    def on_train_end(self, logs=None) -> None:
        self._mark()

    def on_train_begin(self, *args) -> None:
        """Nothing to time here (nor in the other hooks)."""

    on_epoch_end = on_test_begin = on_test_end = on_train_begin


def run(
    data: DataConfig,
    model_config: ModelConfig,
    *,
    strategy,
    batch_size: int,
    epochs: int,
    sample: int,
    output_dir: str,
    target: float | None = None,
    verify: bool = False,
    train_flags: tuple[str, ...] = (),
) -> dict:
    """Measures, recommends, verifies where asked; prints the account and writes
    `<output_dir>/recommendation.json`. Returns the report."""
    counts = count_job(data, epochs)
    os.makedirs(output_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".recommend-", dir=output_dir)  # The disk the store goes on.
    try:
        costs = measure(
            data,
            model_config,
            counts=counts,
            strategy=strategy,
            batch_size=batch_size,
            sample=sample,
            work_dir=work,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plan, stages = recommend(costs, counts)
    verified = None
    if verify:
        metrics, wall = run_train(data, model_config, plan, epochs=epochs, extra=train_flags)
        verified = {
            "wall_seconds": wall,
            "test_accuracy": metrics["test_accuracy"],
            "stages": compare(stages, measured_stages(metrics, counts, wall)),
        }
    report = report_json(costs, counts, plan, stages, target=target, verified=verified)
    report["path"] = write_report(output_dir, report)
    print(render(report))
    return report
