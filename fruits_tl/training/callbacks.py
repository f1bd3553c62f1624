"""Keras callbacks: per-epoch training throughput in images per second.

The clock is a parameter so tests can check the arithmetic with a fake clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import keras


def write_scalar(tag: str, value: float, *, step: int) -> None:
    """Writes one TensorBoard scalar with core TensorFlow only.

    `tf.summary.scalar` lives in the tensorboard package, which TensorFlow 2.21 no longer
    installs; `tf.summary.write` with the scalars plugin's metadata (the public
    `tf.compat.v1.SummaryMetadata` proto) writes the same event.
    """
    import tensorflow as tf

    metadata = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    tf.summary.write(
        tag, tf.constant(float(value), tf.float32), step=step, metadata=metadata.SerializeToString()
    )


class ThroughputCallback(keras.callbacks.Callback):
    """Measures training images/s for every epoch and adds it to the epoch's logs (the training
    loop's one line per epoch shows it).

    The training phase of an epoch runs from `on_epoch_begin` to the start of validation
    (`on_test_begin`), or to `on_epoch_end` when there is no validation, so validation time
    does not dilute the figure.

    With `tensorboard_dir`, images/s and the epoch's other logs are also written there as
    TensorBoard scalars, one step per epoch, laid out as Keras's own TensorBoard callback lays
    them out so that the curves overlay: `<dir>/train` and `<dir>/validation` runs, tags
    `epoch_<metric>` (the `val_` prefix dropped in the validation run), plus
    `epoch_images_per_second` in the train run.

    `epoch_offset` (the epochs of an earlier phase) is added to the epoch of the TensorBoard
    steps, so that fine-tuning's curves continue the head's.

    Attributes:
      epoch_seconds: Training-phase seconds of each finished epoch.
      images_per_second: num_images / epoch_seconds of each finished epoch.
    """

    def __init__(
        self,
        num_images: int,
        *,
        clock: Callable[[], float] = time.perf_counter,
        tensorboard_dir: str = "",
        epoch_offset: int = 0,
    ):
        super().__init__()
        self.epoch_offset = epoch_offset
        self.num_images = num_images
        self.tensorboard_dir = tensorboard_dir
        self._writers: dict = {}
        self.clock = clock
        self.epoch_seconds: list[float] = []
        self.images_per_second: list[float] = []
        self._start: float | None = None
        self._training_end: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self.clock()
        self._training_end = None

    def on_test_begin(self, logs=None):
        # Validation inside fit; a standalone evaluate() call has no epoch in progress.
        if self._start is not None and self._training_end is None:
            self._training_end = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        epoch += self.epoch_offset
        end = self._training_end if self._training_end is not None else self.clock()
        seconds = max(end - self._start, 1e-9)
        rate = self.num_images / seconds
        self.epoch_seconds.append(seconds)
        self.images_per_second.append(rate)
        if logs is not None:
            logs["images_per_second"] = rate
            logs["epoch_seconds"] = seconds
        if self.tensorboard_dir:
            self._write_scalars(epoch, rate, logs or {})
        self._start = None

    def _write_scalars(self, epoch: int, rate: float, logs: dict) -> None:
        import tensorflow as tf

        runs: dict[str, dict[str, float]] = {"train": {"images_per_second": rate}, "validation": {}}
        for key, value in logs.items():
            if not isinstance(value, (int, float)) or key in ("images_per_second", "epoch_seconds"):
                continue
            if key.startswith("val_"):
                runs["validation"][key[len("val_") :]] = value
            else:
                runs["train"][key] = value
        for run, scalars in runs.items():
            if not scalars:
                continue
            if run not in self._writers:
                self._writers[run] = tf.summary.create_file_writer(
                    os.path.join(self.tensorboard_dir, run)
                )
            with self._writers[run].as_default():
                for key, value in scalars.items():
                    write_scalar(f"epoch_{key}", value, step=epoch)
            self._writers[run].flush()
