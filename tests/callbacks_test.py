"""Throughput arithmetic with a fake clock."""

from __future__ import annotations

import pytest
from conftest import FakeClock

from fruits_tl.training.loop import ThroughputCallback


def test_images_per_second_excludes_validation():
    clock = FakeClock()
    callback = ThroughputCallback(600, clock=clock)
    callback.on_epoch_begin(0)
    clock.now += 2.0  # training phase
    callback.on_test_begin()
    clock.now += 5.0  # validation must not count
    logs = {}
    callback.on_epoch_end(0, logs)
    assert callback.epoch_seconds == [pytest.approx(2.0)]
    assert logs["images_per_second"] == pytest.approx(300.0)


def test_epoch_without_validation_and_standalone_evaluate():
    clock = FakeClock()
    callback = ThroughputCallback(100, clock=clock)
    callback.on_test_begin()  # an evaluate() outside fit: ignored
    callback.on_epoch_begin(0)
    clock.now += 4.0
    callback.on_epoch_end(0, {})
    callback.on_epoch_begin(1)
    clock.now += 1.0
    callback.on_epoch_end(1, {})
    assert callback.images_per_second == [pytest.approx(25.0), pytest.approx(100.0)]
