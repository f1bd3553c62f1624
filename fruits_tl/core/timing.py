"""Timing arithmetic for throughput measurements, testable with a fake clock.

`time_epochs` counts the images of every batch it pulls and reports the time to the first
batch, the first (cold) epoch apart from the steady-state epochs, images/s per epoch, and the
process's CPU time per epoch (so a figure says how much work an image took and on how many
cores, not only how fast it came);
`summarize` aggregates repeats; `median_ratio` compares two variants repeat by repeat (side
by side on a noisy machine). `PeakMemory` samples resident memory while a block runs. The
vision_transformer benchmark once timed the wrong number of steps and no test noticed: here
every figure's arithmetic is tested with a fake clock (tests/timing_test.py).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable

from fruits_tl.core.config import UserInputError


@dataclasses.dataclass(frozen=True)
class EpochTimes:
    """What `time_epochs` measured for one repeat of one variant.

    Attributes:
      time_to_first_batch: Seconds from starting the first epoch to its first batch.
      epoch_seconds: Seconds of each epoch (the first is the cold one).
      epoch_images: Images delivered in each epoch.
      epoch_cpu_seconds: The process's CPU seconds (user and system, all its threads) during
        each epoch; empty where the variant was not timed by `time_epochs`.
    """

    time_to_first_batch: float
    epoch_seconds: tuple[float, ...]
    epoch_images: tuple[int, ...]
    epoch_cpu_seconds: tuple[float, ...] = ()

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
    cpu_clock: Callable[[], float] = time.process_time,
) -> EpochTimes:
    """Times `epochs` full passes of `make_epoch()` and counts the images each delivers.

    The clock starts before the epoch's iterator is created (creating it may start work), and
    stops after its last batch; every batch is counted, none is skipped or timed twice. The
    CPU clock is read at the same two points.

    Args:
      make_epoch: Returns an iterable of `(images, labels)` batches for one epoch.
      epochs: Number of epochs (>= 1).
      clock: Seconds, monotonic.
      cpu_clock: The process's CPU seconds (`time.process_time`: every thread, user and system).

    Returns:
      The EpochTimes.
    """
    if epochs < 1:
        raise UserInputError(f"epochs must be >= 1, got {epochs}.")
    seconds, counts, cpu_seconds = [], [], []
    first_batch = None
    for _epoch in range(epochs):
        start, cpu_start = clock(), cpu_clock()
        count = 0
        for batch in make_epoch():
            if first_batch is None:
                first_batch = clock() - start
            count += _batch_size_of(batch)
        seconds.append(clock() - start)
        cpu_seconds.append(cpu_clock() - cpu_start)
        counts.append(count)
    return EpochTimes(
        time_to_first_batch=first_batch or 0.0,
        epoch_seconds=tuple(seconds),
        epoch_images=tuple(counts),
        epoch_cpu_seconds=tuple(cpu_seconds),
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
      cold_cpu_us_per_image: Median over repeats of the cold epoch's process CPU time per
        image, in microseconds: the work one image costs, whatever the parallelism. None
        where no repeat measured CPU time.
      cold_cores: Median over repeats of the cold epoch's CPU time over its wall time: how
        many cores the cold pass kept busy. In each repeat images/s = cores / CPU time per
        image, so a ratio of two variants' cold rates is (up to taking medians) the ratio of
        their work per image times the ratio of their cores.
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
    cold_cpu_us_per_image: float | None = None
    cold_cores: float | None = None


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
    cpu = [
        (r.epoch_cpu_seconds[0], r.epoch_seconds[0], r.epoch_images[0])
        for r in runs
        if r.epoch_cpu_seconds
    ]
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
        cold_cpu_us_per_image=(
            statistics.median(1e6 * c / max(n, 1) for c, _, n in cpu) if cpu else None
        ),
        cold_cores=statistics.median(c / max(s, 1e-12) for c, s, _ in cpu) if cpu else None,
    )


def median_ratio(numerator: Throughput, denominator: Throughput) -> float:
    """Median over repeats of the side-by-side ratio of steady images/s."""
    ratios = [a / b for a, b in zip(numerator.repeats, denominator.repeats, strict=True) if b > 0]
    return statistics.median(ratios) if ratios else float("nan")


def resident_bytes() -> int:
    """Current resident set size of this process; where there is no /proc (macOS), the peak so
    far (getrusage's ru_maxrss: bytes on macOS, KiB elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


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
