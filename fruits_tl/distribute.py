"""tf.distribute strategies, chosen by name in one factory.

The strategy is always a parameter of the library functions, never a global: binaries call
`get_strategy(FLAGS.strategy)` and pass the result down. `devices` is the seam tests use to run
MirroredStrategy over logical CPU devices.
"""

from __future__ import annotations

import tensorflow as tf

from fruits_tl.errors import UserInputError

STRATEGY_NAMES = ("auto", "default", "one_device", "mirrored")


def get_strategy(name: str = "auto", *, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """Returns a distribution strategy by name.

    Args:
      name: "auto": mirrored over all GPUs when there are several, one_device on the only GPU,
        default on CPU. "default": no distribution (the default strategy). "one_device": the
        first GPU, else the CPU. "mirrored": all GPUs, or where there are none all logical CPU
        devices (tests split the CPU into two).
      devices: Explicit device names for "mirrored" or "one_device" (first one), overriding the
        discovery above.

    Returns:
      A tf.distribute.Strategy.

    Raises:
      UserInputError: An unknown name.
    """
    if name not in STRATEGY_NAMES:
        raise UserInputError(f"strategy must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}.")
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = devices[0] if devices else (gpus[0] if gpus else "/cpu:0")
        return tf.distribute.OneDeviceStrategy(device)
    if devices is None:
        devices = gpus or [device.name for device in tf.config.list_logical_devices("CPU")]
    if any("GPU" in device.upper() for device in devices):
        return tf.distribute.MirroredStrategy(devices=devices)
    # CPU replicas only (tests, CPU machines): reduce through one device, not collective ops.
    # Collective instance keys restart with every MirroredStrategy, and TensorFlow's runtime
    # keeps the first use of a key for the process, so a second strategy in one process whose
    # first collective differs fails ("Collective instance 100 expected type 2 and data_type
    # 3 but got type 0 and data_type 1"). Reducing through one device uses no collectives.
    return tf.distribute.MirroredStrategy(
        devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def describe(strategy: tf.distribute.Strategy) -> str:
    """A short name for logs and metrics: "default", "one_device", "mirrored"."""
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if isinstance(strategy, tf.distribute.OneDeviceStrategy):
        return "one_device"
    return "default"


def per_replica_batch_size(strategy: tf.distribute.Strategy, global_batch_size: int) -> int:
    """The per-replica batch, requiring the global batch to split evenly across replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UserInputError(
            f"--batch_size={global_batch_size} is the global batch and must be divisible by the "
            f"{replicas} replicas of the {describe(strategy)} strategy."
        )
    return global_batch_size // replicas
