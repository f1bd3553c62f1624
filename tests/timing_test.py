"""Timing arithmetic with a fake clock: epochs, cold and steady figures, side-by-side ratios."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FakeClock

from fruits_tl.core import timing


def test_time_epochs_counts_every_batch_and_times_whole_epochs():
    clock, cpu = FakeClock(), FakeClock(100.0)
    created = []

    def make_epoch():
        created.append(clock.now)
        clock.now += 0.5  # creating the iterator costs time and is counted
        cpu.now += 0.25 * len(created)  # ... and so does its CPU time

        def batches():
            for size, cost in ((4, 1.0), (4, 1.0), (2, 0.5)):
                clock.now += cost
                cpu.now += 2 * cost  # two cores busy
                yield np.zeros((size, 2, 2, 3)), np.zeros(size)

        return batches()

    times = timing.time_epochs(make_epoch, epochs=3, clock=clock, cpu_clock=cpu)
    assert len(created) == 3
    assert times.epoch_images == (10, 10, 10)
    assert times.epoch_seconds == pytest.approx((3.0, 3.0, 3.0))
    assert times.epoch_cpu_seconds == pytest.approx((5.25, 5.5, 5.75))
    assert times.time_to_first_batch == pytest.approx(1.5)
    assert times.images_per_second == pytest.approx((10 / 3,) * 3)
    cold = timing.summarize("x", [times])
    assert cold.cold_cpu_us_per_image == pytest.approx(525_000.0)  # 5.25 s over 10 images
    assert cold.cold_cores == pytest.approx(1.75)  # 5.25 CPU seconds in 3 wall seconds


def test_summarize_separates_the_cold_epoch_and_ratios_are_side_by_side():
    run_a = timing.EpochTimes(0.1, (10.0, 1.0, 2.0, 1.0), (100, 100, 100, 100))
    run_b = timing.EpochTimes(0.1, (20.0, 2.0, 2.0, 4.0), (100, 100, 100, 100))
    result = timing.summarize("x", [run_a, run_b])
    assert result.first_epoch_images_per_second == pytest.approx(7.5)  # median of 10 and 5
    assert result.steady_min == pytest.approx(25.0) and result.steady_max == pytest.approx(100.0)
    assert result.steady_median == pytest.approx(50.0)
    assert result.repeats == pytest.approx((100.0, 50.0))
    # EpochTimes built without CPU times (the model-step variants) leave the CPU figures out.
    assert result.cold_cpu_us_per_image is None and result.cold_cores is None
    with_cpu = [
        timing.EpochTimes(0, (10.0, 1.0), (100, 100), (10.0, 1.0)),
        timing.EpochTimes(0, (10.0, 1.0), (100, 100), (20.0, 1.0)),
        timing.EpochTimes(0, (5.0, 1.0), (100, 100), (20.0, 1.0)),
    ]
    summary = timing.summarize("y", with_cpu)
    assert summary.cold_cpu_us_per_image == pytest.approx(200_000.0)  # median of 0.1, 0.2, 0.2 s
    assert summary.cold_cores == pytest.approx(2.0)  # median of 1, 2, 4
    legacy = timing.summarize(
        "legacy",
        [
            timing.EpochTimes(0, (1, 2, 2), (10, 10, 10)),
            timing.EpochTimes(0, (1, 1, 1), (10, 10, 10)),
        ],
    )
    # Per repeat: 100/5 = 20 and 50/10 = 5; the median of side-by-side ratios is 12.5.
    assert timing.median_ratio(result, legacy) == pytest.approx(12.5)
