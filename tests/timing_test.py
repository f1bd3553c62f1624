"""Timing arithmetic with a fake clock: epochs, cold and steady figures, side-by-side ratios."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FakeClock

from fruits_tl import timing


def test_time_epochs_counts_every_batch_and_times_whole_epochs():
    clock = FakeClock()
    created = []

    def make_epoch():
        created.append(clock.now)
        clock.now += 0.5  # creating the iterator costs time and is counted

        def batches():
            for size, cost in ((4, 1.0), (4, 1.0), (2, 0.5)):
                clock.now += cost
                yield np.zeros((size, 2, 2, 3)), np.zeros(size)

        return batches()

    times = timing.time_epochs(make_epoch, epochs=3, clock=clock)
    assert len(created) == 3
    assert times.epoch_images == (10, 10, 10)
    assert times.epoch_seconds == pytest.approx((3.0, 3.0, 3.0))
    assert times.time_to_first_batch == pytest.approx(1.5)
    assert times.images_per_second == pytest.approx((10 / 3,) * 3)


def test_summarize_separates_the_cold_epoch_and_ratios_are_side_by_side():
    run_a = timing.EpochTimes(0.1, (10.0, 1.0, 2.0, 1.0), (100, 100, 100, 100))
    run_b = timing.EpochTimes(0.1, (20.0, 2.0, 2.0, 4.0), (100, 100, 100, 100))
    result = timing.summarize("x", [run_a, run_b])
    assert result.first_epoch_images_per_second == pytest.approx(7.5)  # median of 10 and 5
    assert result.steady_min == pytest.approx(25.0) and result.steady_max == pytest.approx(100.0)
    assert result.steady_median == pytest.approx(50.0)
    assert result.repeats == pytest.approx((100.0, 50.0))
    legacy = timing.summarize(
        "legacy",
        [
            timing.EpochTimes(0, (1, 2, 2), (10, 10, 10)),
            timing.EpochTimes(0, (1, 1, 1), (10, 10, 10)),
        ],
    )
    # Per repeat: 100/5 = 20 and 50/10 = 5; the median of side-by-side ratios is 12.5.
    assert timing.median_ratio(result, legacy) == pytest.approx(12.5)
