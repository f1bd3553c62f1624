"""The training input pipeline: examples stay on the host, only batches reach the devices.

Both training modes, and the evaluation between epochs, read their examples through this one
`tf.data` pipeline (after big_vision's input_pipeline: the order written once, with the reason
for each step):

1. the epoch's order: `epoch_order(count, seed=, epoch=)`, a pure function of the seed and the
   epoch (`np.random.default_rng([seed, epoch]).permutation(count)`), so a run resumed at
   (epoch, step) feeds exactly the batches an uninterrupted run would have fed. Training reads
   one stream of batches for the whole run (`training_rows`: each epoch's order is computed
   when the pipeline reaches it), so the host reads ahead across an epoch's end;
2. batches of example indices: `batch_size` (global) consecutive indices of the order, the
   last batch padded with -1 to a full batch, so every batch has one static shape and no
   replica ever gets an empty batch (the package's one rule: `pipeline.PADDING_LABEL`);
3. each replica's slice: the global batch is cut into one contiguous share per replica, and an
   input pipeline (one per worker) keeps only its own replicas' shares, so a worker reads only
   what its devices will train on;
4. the examples read on the host: `store.ChunkedArray.take` copies the rows out of the stored
   arrays (memory-mapped decoded pixels in images mode, backbone features in features mode),
   with their labels (-1 for padding); with `--augment`, the images are transformed there,
   each by draws keyed by (seed, epoch, example index) (`fruits_tl.augment`);
5. prefetch on the host, so the next batch is read while the devices compute;
6. distribution: `strategy.distribute_datasets_from_function`, which hands each replica its
   own slice and, where the devices are accelerators, copies the next slice to the device while
   the current step runs (`experimental_fetch_to_device`).

No tensor holding a whole split enters a replica's function: a replica receives a
[per-replica batch, ...] slice, its labels and the number of real examples in the global batch
(the loss is a sum over the replica's real examples divided by that number, so that the
replicas' gradients add up to the gradient of the global batch's mean loss).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from fruits_tl import augment, pipeline, store
from fruits_tl.config import NO_AUGMENTATION, Augmentation

# Batches read ahead on the host, per input pipeline. Two: one being copied to the devices,
# one being read.
HOST_PREFETCH = 2
# Replica slices read at once: each read is a Python call that copies rows out of the store
# (the copies release the GIL), so two overlap; more did not read faster (BENCHMARKS.md 11).
READ_PARALLELISM = 2
# Bytes read per call at most, where one replica slice is smaller (features): many slices per
# call. A slice of 32 images of 128x128 (1.5 MB) is read alone.
READ_BYTES = 1 << 20


def epoch_order(
    count: int, *, seed: int, epoch: int, shuffle: bool = True, shuffle_buffer_size: int = 0
) -> np.ndarray:
    """The order in which epoch `epoch` visits `count` examples: a pure function of its args.

    Args:
      count: Examples in the split.
      seed: The run's seed.
      epoch: The epoch (from 0).
      shuffle: False keeps file order (evaluation).
      shuffle_buffer_size: 0 (or >= count) for a uniform permutation,
        `np.random.default_rng([seed, epoch]).permutation(count)`; otherwise a shuffle through
        a buffer of that many examples, as `tf.data.Dataset.shuffle` does (1 keeps file order),
        drawn from the same generator.

    Returns:
      [count] int64 example indices.
    """
    if not shuffle or count == 0:
        return np.arange(count, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    if shuffle_buffer_size <= 0 or shuffle_buffer_size >= count:
        return rng.permutation(count).astype(np.int64)
    buffer = list(range(shuffle_buffer_size))
    draws = rng.random(count)
    order = np.empty(count, np.int64)
    upcoming = shuffle_buffer_size
    for position in range(count):
        slot = int(draws[position] * len(buffer))
        order[position] = buffer[slot]
        if upcoming < count:
            buffer[slot] = upcoming
            upcoming += 1
        else:
            buffer[slot] = buffer[-1]
            buffer.pop()
    return order


@dataclasses.dataclass(frozen=True)
class Batching:
    """How a pass over `count` examples is cut into global batches and replica slices.

    Attributes:
      count: Examples in the pass.
      batch_size: The global batch size.
      replicas: Replicas in sync.
    """

    count: int
    batch_size: int
    replicas: int

    @property
    def num_batches(self) -> int:
        return -(-self.count // self.batch_size)

    @property
    def per_replica(self) -> int:
        """Rows of each replica's slice (the global batch padded to a multiple of replicas)."""
        return -(-self.batch_size // self.replicas)

    def index_batches(self, order: np.ndarray) -> np.ndarray:
        """[num_batches, replicas * per_replica] example indices, -1 where padded."""
        if len(order) != self.count:
            raise ValueError(f"an order of {len(order)} examples for a pass of {self.count}")
        width = self.replicas * self.per_replica
        rows = np.full((self.num_batches, width), -1, np.int64)
        for batch in range(self.num_batches):
            chunk = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            rows[batch, : len(chunk)] = chunk
        return rows


# A function returning a dataset of (epoch, global batch of example indices) pairs.
IndexRows = Callable[[], tf.data.Dataset]


def epoch_index_batches(
    batching: Batching,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    shuffle_buffer_size: int = 0,
) -> np.ndarray:
    """Epoch `epoch`'s global batches of example indices (`Batching.index_batches` of
    `epoch_order`)."""
    order = epoch_order(
        batching.count,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        shuffle_buffer_size=shuffle_buffer_size,
    )
    return batching.index_batches(order)


def training_rows(
    batching: Batching,
    *,
    seed: int,
    first_epoch: int,
    epochs: int,
    shuffle_buffer_size: int = 0,
    start_step: int = 0,
) -> IndexRows:
    """The global batches of epochs [first_epoch, epochs), from step `start_step` of the first:
    one stream for the whole run, each epoch's order computed when the pipeline reaches it."""
    width = batching.replicas * batching.per_replica

    def of_epoch(epoch):
        return epoch_index_batches(
            batching, seed=seed, epoch=int(epoch), shuffle_buffer_size=shuffle_buffer_size
        )

    @tf.autograph.experimental.do_not_convert
    def epoch_rows(epoch):
        matrix = tf.numpy_function(of_epoch, [epoch], tf.int64, stateful=False)
        matrix.set_shape([batching.num_batches, width])
        return tf.data.Dataset.from_tensor_slices((tf.fill([batching.num_batches], epoch), matrix))

    def rows() -> tf.data.Dataset:
        return tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_rows).skip(start_step)

    return rows


def fixed_rows(index_batches: np.ndarray, *, repeat: bool = False) -> IndexRows:
    """Given global batches, once (or over and over: one evaluation pass per epoch); their
    epoch is 0."""

    def rows() -> tf.data.Dataset:
        batches = np.asarray(index_batches, np.int64)
        dataset = tf.data.Dataset.from_tensor_slices((np.zeros(len(batches), np.int64), batches))
        return dataset.repeat() if repeat else dataset

    return rows


def make_replica_dataset(
    examples: store.ChunkedArray,
    labels: np.ndarray,
    index_rows: IndexRows,
    *,
    batching: Batching,
    input_context: tf.distribute.InputContext,
    augmentation: Augmentation = NO_AUGMENTATION,
    seed: int = 0,
) -> tf.data.Dataset:
    """One input pipeline's dataset: its replicas' slices of the global batches, in turn.

    Element k * L + r (L replicas per pipeline) is replica r's slice of global batch k:
    `(examples [per_replica, ...], labels [per_replica] with -1 for padding, real examples in
    the global batch)`, read on the host, and transformed by `augmentation` (uint8 images
    only) with draws keyed by (`seed`, epoch, example index).
    """
    replicas, per_replica = batching.replicas, batching.per_replica
    pipelines = input_context.num_input_pipelines
    if replicas % pipelines:
        raise ValueError(f"{replicas} replicas do not divide among {pipelines} input pipelines")
    local = replicas // pipelines
    first = input_context.input_pipeline_id * local
    labels = np.asarray(labels, np.int32)
    row_shape, dtype = examples.row_shape, examples.dtype

    if augmentation and (dtype != np.uint8 or len(row_shape) != 3):
        raise ValueError(f"augmentation needs uint8 images, not {dtype} rows of {row_shape}")

    @tf.autograph.experimental.do_not_convert
    def own_slices(epoch, row):
        real = tf.reduce_sum(tf.cast(row >= 0, tf.int32))
        mine = tf.reshape(row, [replicas, per_replica])[first : first + local]
        return mine, tf.fill([local], real), tf.fill([local], epoch)

    def read(indices, epochs):
        valid = indices >= 0
        row_labels = np.where(valid, labels[np.where(valid, indices, 0)], pipeline.PADDING_LABEL)
        uniforms = augment.draws(seed, epochs, indices) if augmentation else np.zeros((0,), "f4")
        return examples.take(indices), row_labels, uniforms

    # Small rows (features) are read many slices per call, so the Python call is paid per
    # block, not per step; a slice of images is already a large read.
    slice_bytes = per_replica * int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    per_read = max(1, READ_BYTES // max(slice_bytes, 1))

    @tf.autograph.experimental.do_not_convert
    def read_slices(indices, counts, epochs):
        flat = tf.reshape(indices, [-1])
        row_epochs = tf.reshape(tf.broadcast_to(epochs[..., None], tf.shape(indices)), [-1])
        rows, row_labels, uniforms = tf.numpy_function(
            read, [flat, row_epochs], (tf.as_dtype(dtype), tf.int32, tf.float32), stateful=False
        )
        if augmentation:
            rows = augment.apply(
                tf.reshape(rows, [-1, *row_shape]),
                tf.reshape(uniforms, [-1, augment.DRAWS]),
                augmentation,
            )
        shape = [per_replica] if per_read == 1 else [-1, per_replica]
        return tf.reshape(rows, [*shape, *row_shape]), tf.reshape(row_labels, shape), counts

    dataset = index_rows().map(own_slices).unbatch()
    if per_read > 1:
        dataset = dataset.batch(per_read)
    dataset = dataset.map(read_slices, num_parallel_calls=READ_PARALLELISM, deterministic=True)
    if per_read > 1:
        dataset = dataset.unbatch()
    options = tf.data.Options()
    options.deterministic = True
    return dataset.prefetch(HOST_PREFETCH).with_options(options)


def distribute(
    strategy: tf.distribute.Strategy,
    examples: store.ChunkedArray,
    labels: np.ndarray,
    index_rows: IndexRows,
    *,
    batching: Batching,
    augmentation: Augmentation = NO_AUGMENTATION,
    seed: int = 0,
):
    """The distributed dataset of these global batches: each replica gets its own slice."""

    def input_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_replica_dataset(
            examples,
            labels,
            index_rows,
            batching=batching,
            input_context=input_context,
            augmentation=augmentation,
            seed=seed,
        )

    return strategy.distribute_datasets_from_function(
        input_fn, options=tf.distribute.InputOptions(experimental_fetch_to_device=True)
    )
