"""Strategy factory: names, devices, replicas, batch arithmetic."""

from __future__ import annotations

import pytest
import tensorflow as tf

from fruits_tl.core import distribute
from fruits_tl.core.config import UserInputError


def test_auto_on_cpu_is_the_default_strategy():
    strategy = distribute.get_strategy("auto")
    assert distribute.describe(strategy) == "default" and strategy.num_replicas_in_sync == 1


def test_mirrored_without_gpus_uses_the_logical_cpus():
    strategy = distribute.get_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    assert distribute.per_replica_batch_size(strategy, 32) == 16
    with pytest.raises(UserInputError, match="--batch_size=33.*2 replicas"):
        distribute.per_replica_batch_size(strategy, 33)


def test_explicit_devices_and_one_device():
    assert distribute.get_strategy("mirrored", devices=["/cpu:0"]).num_replicas_in_sync == 1
    one = distribute.get_strategy("one_device")
    assert distribute.describe(one) == "one_device" and one.num_replicas_in_sync == 1


def test_unknown_strategy_is_named():
    with pytest.raises(UserInputError, match="'tpu'"):
        distribute.get_strategy("tpu")
