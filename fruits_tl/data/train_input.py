"""The training input pipeline: examples stay on the host, only batches reach the devices.

Both training modes, and the evaluation between epochs, read their examples through this one
`tf.data` pipeline (after big_vision's input_pipeline: the order written once, with the reason
for each step):

1. the epoch's order: `epoch_order(count, seed=, epoch=)`, a pure function of the seed and the
   epoch (stateless Philox draws keyed by [seed, epoch], sorted), so a run resumed at
   (epoch, step) feeds exactly the batches an uninterrupted run would have fed. Training reads
   one stream of batches for the whole run (`training_rows`: each epoch's order is computed,
   in the graph, when the pipeline reaches it), so the host reads ahead across an epoch's end;
2. batches of example indices: `batch_size` (global) consecutive indices of the order, the
   last batch padded with -1 to a full batch, so every batch has one static shape and no
   replica ever gets an empty batch (the package's one rule: `PADDING_LABEL`);
3. each replica's slice: the global batch is cut into one contiguous share per replica, and an
   input pipeline (one per worker) keeps only its own replicas' shares, so a worker reads only
   what its devices will train on;
4. the examples read on the host, by TensorFlow ops: `tf.gather` of the slice's rows from a
   zero-copy view of the store (`store.StoredArray.tensor`: memory-mapped decoded pixels in
   images mode, backbone features in features mode), with their labels (-1 for padding);
   with `--augment`, the images are transformed there, each by draws keyed by (seed, epoch,
   example index) (`fruits_tl.data.augment`). No Python runs per batch, so the reads of several
   slices run in parallel on every core (no interpreter lock);
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

from fruits_tl.core.config import NO_AUGMENTATION, Augmentation
from fruits_tl.data import decode, store

# The label of a padding row. Every batch that reaches a replica's step is full: training pads
# its last batch of example indices with -1 (`Batching`), inference pads its last
# batch of images (`pad_last_batch`), and both mark the padding rows with this label. A step
# never sees an empty per-replica batch (oneDNN's convolution fails on one on some CPUs:
# "Incompatible shapes: [0,32,32,3] vs. [8]", TF 2.21 on an AVX-512 machine), every batch has
# one static shape (one trace), and the outputs of padding rows are dropped by their label.
PADDING_LABEL = -1
# Batches read ahead on the host, per input pipeline. Two: one being copied to the devices,
# one being read.
HOST_PREFETCH = 2


def _order_tensor(count: int, seed, epoch, *, shuffle: bool, shuffle_buffer_size: int):
    """`epoch_order` as TensorFlow ops (eager or in a graph; `seed` and `epoch` may be
    tensors)."""
    if not shuffle or count == 0:
        return tf.range(count, dtype=tf.int64)
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    if shuffle_buffer_size <= 0 or shuffle_buffer_size >= count:
        draws = tf.random.stateless_uniform(
            [count], seed=key, minval=None, maxval=None, dtype=tf.int64, alg="philox"
        )
        return tf.cast(tf.argsort(draws, stable=True), tf.int64)
    jitter = tf.random.stateless_uniform([count], seed=key, dtype=tf.float64, alg="philox")
    keys = tf.range(count, dtype=tf.float64) + float(shuffle_buffer_size) * jitter
    return tf.cast(tf.argsort(keys, stable=True), tf.int64)


def epoch_order(
    count: int, *, seed: int, epoch: int, shuffle: bool = True, shuffle_buffer_size: int = 0
) -> np.ndarray:
    """The order in which epoch `epoch` visits `count` examples: a pure function of its args.

    Args:
      count: Examples in the split.
      seed: The run's seed.
      epoch: The epoch (from 0).
      shuffle: False keeps file order (evaluation).
      shuffle_buffer_size: 0 (or >= count) for a uniform permutation: the examples sorted by
        full-range int64 draws of the stateless Philox generator keyed by [seed, epoch].
        Otherwise a local shuffle, as a shuffle buffer of that many examples gives: example i
        is sorted by i + shuffle_buffer_size x u (u uniform in [0, 1), the same generator),
        so it moves about that many places at most; 1 keeps file order.

    Returns:
      [count] int64 example indices.
    """
    order = _order_tensor(
        count, seed, epoch, shuffle=shuffle, shuffle_buffer_size=shuffle_buffer_size
    )
    return order.numpy()


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

    @property
    def width(self) -> int:
        """Rows of a padded global batch: every replica's slice."""
        return self.replicas * self.per_replica

    def batches_tensor(self, order) -> tf.Tensor:
        """`index_batches` as TensorFlow ops."""
        order = tf.convert_to_tensor(order, tf.int64)
        total = self.num_batches * self.batch_size
        padded = tf.concat([order, tf.fill([total - self.count], tf.constant(-1, tf.int64))], 0)
        rows = tf.reshape(padded, [self.num_batches, self.batch_size])
        return tf.pad(
            rows, [[0, 0], [0, self.width - self.batch_size]], constant_values=PADDING_LABEL
        )

    def index_batches(self, order) -> np.ndarray:
        """[num_batches, width] example indices, `batch_size` consecutive ones of `order` per
        global batch, -1 where padded."""
        if len(order) != self.count:
            raise ValueError(f"an order of {len(order)} examples for a pass of {self.count}")
        return self.batches_tensor(order).numpy()


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
    order = _order_tensor(
        batching.count, seed, epoch, shuffle=shuffle, shuffle_buffer_size=shuffle_buffer_size
    )
    return batching.batches_tensor(order).numpy()


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
    one stream for the whole run, each epoch's order computed in the graph when the pipeline
    reaches it."""

    @tf.autograph.experimental.do_not_convert
    def epoch_rows(epoch):
        order = _order_tensor(
            batching.count, seed, epoch, shuffle=True, shuffle_buffer_size=shuffle_buffer_size
        )
        matrix = batching.batches_tensor(order)
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


# What the pipeline reads rows from: a stored array (read through a view of its file), some
# rows of one (a split of its source folder's store), or an array in memory (small: features
# being trained on, tests).
Examples = store.StoredArray | store.StoredRows | np.ndarray
STORED = (store.StoredArray, store.StoredRows)


def example_spec(examples: Examples) -> tuple[tuple[int, ...], np.dtype]:
    """(row shape, dtype) of the examples."""
    if isinstance(examples, STORED):
        return examples.row_shape, examples.dtype
    return tuple(examples.shape[1:]), examples.dtype


def _gather_rows(examples: Examples, *, by_path: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    """indices (>= 0) -> their rows, by TensorFlow ops on a view of the examples, or (`by_path`,
    for a dataset graph that is serialised) by the store file's path, which costs a copy of
    the store in the process that runs the graph (`store.StoredArray.gather_by_path`)."""
    if isinstance(examples, store.StoredRows):
        table = tf.constant(np.asarray(examples.rows, np.int64))
        if by_path:
            return lambda indices: examples.array.gather_by_path(tf.gather(table, indices))
        view = examples.array.tensor()
        return lambda indices: tf.gather(view, tf.gather(table, indices))
    if isinstance(examples, store.StoredArray) and by_path:
        return examples.gather_by_path
    source = examples.tensor() if isinstance(examples, store.StoredArray) else tf.constant(examples)
    return lambda indices: tf.gather(source, indices)


def read_options() -> tf.data.Options:
    """The options of every pipeline that reads the store. tf.data's default graph rewrites
    are off: they copied a captured view of the store into the process's own memory (the
    whole store, once per pipeline), and have nothing to rewrite here."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.apply_default_optimizations = False
    return options


def _slice_reader(examples, labels, *, augmentation, seed, by_path, output):
    """The map that reads one replica's slice: (indices, count, epoch) -> its rows gathered by
    TensorFlow ops, augmented where asked; a padding row (index -1) is the first row again,
    labelled -1. It is not zeroed: every consumer masks or drops padding rows by their label,
    no op here mixes rows (BatchNorm runs in inference mode), and zeroing them (a `tf.cond` on
    every slice, for the one padded batch of a pass) cost the read a fifth of its rate
    (BENCHMARKS 18a)."""
    row_shape, dtype = example_spec(examples)
    if augmentation and (dtype != np.uint8 or len(row_shape) != 3):
        raise ValueError(f"augmentation needs uint8 images, not {dtype} rows of {row_shape}")
    if augmentation:
        from fruits_tl.data import augment  # Only with --augment: off the default path.
    gather = _gather_rows(examples, by_path=by_path)
    label_table = tf.constant(np.asarray(labels, np.int32))

    @tf.autograph.experimental.do_not_convert
    def read_slice(indices, count, epoch):
        valid = indices >= 0
        safe = tf.maximum(indices, 0)
        rows = gather(safe)
        row_labels = tf.where(valid, tf.gather(label_table, safe), PADDING_LABEL)
        if augmentation:
            rows = augment.apply(rows, augment.draws(seed, epoch, indices), augmentation)
        if output is not None:
            return output(rows, row_labels, valid)
        return rows, row_labels, count

    return read_slice


def make_replica_dataset(
    examples: Examples,
    labels: np.ndarray,
    index_rows: IndexRows,
    *,
    batching: Batching,
    input_context: tf.distribute.InputContext,
    augmentation: Augmentation = NO_AUGMENTATION,
    seed: int = 0,
    by_path: bool = False,
    output: Callable | None = None,
) -> tf.data.Dataset:
    """One input pipeline's dataset: its replicas' slices of the global batches, in turn.

    Element k * L + r (L replicas per pipeline) is replica r's slice of global batch k:
    `(examples [per_replica, ...], labels [per_replica] with -1 for padding, real examples in
    the global batch)`, gathered on the host by TensorFlow ops, and transformed by
    `augmentation` (uint8 images only) with draws keyed by (`seed`, epoch, example index).
    A padding row repeats the first row, labelled -1.

    `by_path` reads the rows by the store file's path (a graph that is serialised carries the
    path, not a view); `output`, given, maps a slice to the element instead, as
    `output(rows, labels, valid)` (`valid`: the rows that are not padding).
    """
    replicas, per_replica = batching.replicas, batching.per_replica
    pipelines = input_context.num_input_pipelines
    if replicas % pipelines:
        raise ValueError(f"{replicas} replicas do not divide among {pipelines} input pipelines")
    local = replicas // pipelines
    first = input_context.input_pipeline_id * local

    @tf.autograph.experimental.do_not_convert
    def own_slices(epoch, row):
        real = tf.reduce_sum(tf.cast(row >= 0, tf.int32))
        mine = tf.reshape(row, [replicas, per_replica])[first : first + local]
        return mine, tf.fill([local], real), tf.fill([local], epoch)

    @tf.autograph.experimental.do_not_convert
    def first_slice(mine, count, epoch):
        return mine[0], count[0], epoch[0]

    read_slice = _slice_reader(
        examples, labels, augmentation=augmentation, seed=seed, by_path=by_path, output=output
    )
    if local == 1:
        # One replica per pipeline: its slice is the element (and the dataset keeps its
        # length), cut and read in the one parallel map (a sequential map before it runs in
        # one thread and held a second core back, BENCHMARKS 18a).
        dataset = index_rows()

        @tf.autograph.experimental.do_not_convert
        def read(epoch, row):
            return read_slice(*first_slice(*own_slices(epoch, row)))

    else:
        dataset, read = index_rows().map(own_slices).unbatch(), read_slice
    dataset = dataset.map(read, num_parallel_calls=decode.available_cores(), deterministic=True)
    return dataset.prefetch(HOST_PREFETCH).with_options(read_options())


def file_order_batches(examples: Examples, labels: np.ndarray, *, batch_size: int):
    """The examples in file order, `(rows, labels)` batches of `batch_size` on the host, the
    last one padded (labels `PADDING_LABEL`): inference's input (evaluation, prediction,
    export), the same pipeline as training's with one pipeline and one replica."""
    batching = Batching(count=len(labels), batch_size=batch_size, replicas=1)
    return make_replica_dataset(
        examples,
        labels,
        fixed_rows(epoch_index_batches(batching, seed=0, epoch=0, shuffle=False)),
        batching=batching,
        input_context=tf.distribute.InputContext(),
        output=lambda rows, row_labels, valid: (rows, row_labels),
    )


def distribute(
    strategy: tf.distribute.Strategy,
    examples: Examples,
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

    # On accelerators the next slice is copied to the device while the current step runs; on
    # CPUs there is nothing to copy to, and the extra buffering stage cost the pipeline
    # throughput (BENCHMARKS 14).
    accelerated = bool(
        tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")
    )
    return strategy.distribute_datasets_from_function(
        input_fn, options=tf.distribute.InputOptions(experimental_fetch_to_device=accelerated)
    )


def real_row_counter(strategy: tf.distribute.Strategy):
    """A compiled call that takes `steps` batches from a distributed iterator of this pipeline
    as training does (next(iterator) inside a compiled call, under the strategy) and counts
    their real rows: the pipeline consumed without the model, for measuring it (the bench's
    `train-input`, `--recommend`'s store read)."""

    @tf.function
    def count_real(iterator, steps):
        total = tf.constant(0)
        for _ in tf.range(steps):
            _, labels, _ = next(iterator)
            per_replica = strategy.run(
                lambda y: tf.reduce_sum(tf.cast(y >= 0, tf.int32)), args=(labels,)
            )
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return total

    return count_real
