"""The public API for embedding the package's input pipeline in other TensorFlow projects.

`make_datasets` checks a data folder and decodes each of its files once, in the decode
check's one parallel pass, into the pixel store (`store.SourceStores`); `make_input_fn`
gives an `input_fn` for `strategy.distribute_datasets_from_function`. Both read the store
through the one input pipeline the package's jobs take (`train_input.make_replica_dataset`):
batches of example indices (`iteration_rows`: shuffled by tf.data's seeded shuffle,
anew for each pass) -> each input pipeline's share -> the rows gathered from the store by
TensorFlow ops -> (MobileNet preprocessing) -> prefetch. No Python runs per batch.

The rows are read from a zero-copy view of the store's memory map: nothing of the store is
copied into the process (the page cache holds it). A dataset to be serialised (sent to a
tf.data service, saved) would carry that view, the whole store, in its graph; with
`read_by_path=True` it reads the rows by the store file's path instead (ImmutableConst), so the
graph carries a path and the service's workers read the file themselves. TensorFlow 2.21 then
copies the whole store into the memory of each process that runs the graph (it folds the
ImmutableConst into a constant when it instantiates the map function; BENCHMARKS.md 16), so
keep it for that case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from fruits_tl.core.config import UserInputError
from fruits_tl.data import decode, loading, store, train_input

OUTPUTS = ("uint8", "float32")
# The label of a padding row (the package's one rule: `train_input.PADDING_LABEL`).
PADDING_LABEL = train_input.PADDING_LABEL


def get_store_directory(cache: str) -> str:
    """Where the embedding API stores a split's decoded pixels for `cache`.

    "memory" (or "none"): a temporary folder of this process, removed when it exits (the
    operating system's page cache holds the pixels, not the process). Anything else is a
    folder that keeps the store across runs: a later call on unchanged files decodes nothing.
    """
    return store.temporary_directory() if cache in ("memory", "none") else cache


# The source stores this process filled, by folder: a split of one is read as its rows.
_FILLED: dict[tuple[str, int], store.SourceStores] = {}


def store_split(folder: loading.ImageFolder, *, cache: str = "memory") -> store.StoredRows:
    """The split's uint8 images in the store: rows of the store `make_datasets` filled for
    its folder in this process, or the split decoded into its own store once."""
    directory = get_store_directory(cache)
    stores = _FILLED.get((directory, folder.image_size))
    stores = stores or store.SourceStores(directory, folder.image_size)
    return stores.rows_or_stored(folder)


def make_split_dataset(
    examples,
    labels,
    *,
    batch_size: int,
    training: bool,
    seed: int | None = 42,
    output: str = "float32",
    shuffle_buffer_size: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    drop_remainder: bool = False,
    read_by_path: bool = False,
) -> tf.data.Dataset:
    """Batches of stored examples for `model.fit`, by the one input pipeline.

    Args:
      examples: A stored split (`store_split`), or an array of rows in memory.
      labels: [N] int labels.
      batch_size: Images per batch (per replica inside an `input_fn`).
      training: Shuffle, in a new order for each pass over the dataset (`model.fit` makes
        one pass per epoch); pass k's order is a function of `seed` and k.
      seed: The shuffle's seed; None for a different order in every run.
      output: uint8 images: "uint8" as stored, or "float32" MobileNet-preprocessed pixels in
        [-1, 1]. Other rows (features) come out as float32.
      shuffle_buffer_size: 0 shuffles the whole split; n > 0 is tf.data's shuffle buffer.
      input_context: The strategy's InputContext: this input pipeline reads only its
        replicas' shares of each global batch.
      drop_remainder: Leave out a last partial batch (every batch full).
      read_by_path: Read stored rows by the file's path, for a dataset that is serialised
        (see the module's docstring); else from a zero-copy view.

    Returns:
      A dataset of `(rows, int32 labels)` batches; the last one is short unless dropped.
    """
    if output not in OUTPUTS:
        raise UserInputError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}.")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, got {batch_size}.")
    context = input_context or tf.distribute.InputContext()
    replicas = context.num_replicas_in_sync
    batching = train_input.Batching(
        count=len(labels), batch_size=batch_size * replicas, replicas=replicas
    )
    seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
    index_rows = iteration_rows(
        batching,
        seed=seed,
        shuffle=training,
        shuffle_buffer_size=shuffle_buffer_size,
        drop_remainder=drop_remainder,
    )
    return train_input.make_replica_dataset(
        examples,
        labels,
        index_rows,
        batching=batching,
        input_context=context,
        by_path=read_by_path and isinstance(examples, train_input.STORED),
        output=_finisher(train_input.example_spec(examples)[1] == np.uint8, output),
    )


def _finisher(images: bool, output: str):
    """What each batch becomes: padding rows dropped; images as `output` asks, other rows
    (features) float32."""

    def finish(rows, row_labels, valid):
        keep = lambda x: tf.cond(  # noqa: E731
            tf.reduce_all(valid), lambda: x, lambda: tf.boolean_mask(x, valid)
        )
        rows, row_labels = keep(rows), keep(row_labels)
        if images and output == "float32":
            rows = decode.mobilenet_inputs(rows)
        elif not images:
            rows = tf.cast(rows, tf.float32)
        return rows, row_labels

    return finish


def make_feature_batches(
    features,
    labels,
    *,
    batch_size: int,
    training: bool,
    shuffle_buffer_size: int = 0,
    seed: int | None = 42,
) -> tf.data.Dataset:
    """Batches of backbone features ([N, D] float32 or float16, in memory or stored) for a
    head: the same pipeline as images, `(float32 features, int32 labels)`."""
    return make_split_dataset(
        features,
        np.asarray(labels),
        batch_size=batch_size,
        training=training,
        seed=seed,
        shuffle_buffer_size=shuffle_buffer_size,
    )


@dataclasses.dataclass(frozen=True)
class Datasets:
    """Batched datasets of one data folder, for embedding in other TensorFlow projects.

    Attributes:
      train: Shuffled training batches.
      validation: Validation batches (the test folder, or the held-out part of training).
      test: Test batches.
      class_names: Label index to class name.
      splits: The unbatched splits (file paths, labels, counts) behind the datasets.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    class_names: tuple[str, ...]
    splits: loading.Splits


def make_datasets(
    data_dir: str,
    *,
    batch_size: int = 32,
    image_size: int = 128,
    train_subdir: str = "Training",
    test_subdir: str = "Test",
    validation_split: float = 0.0,
    cache: str = "memory",
    shuffle_buffer_size: int = 0,
    seed: int = 42,
    output: str = "float32",
    skip_bad_images: bool = False,
    read_by_path: bool = False,
) -> Datasets:
    """Checks a `Training/<class>/*`, `Test/<class>/*` folder and returns batched datasets
    (train, validation, test) and the class names; a UserInputError says what is unusable.
    The decode check decodes each file once into the pixel store, and the batches are read
    from it by TensorFlow ops, as `fruits-tl-train` reads it (docs/pipeline.md).

    Args:
      data_dir, train_subdir, test_subdir: The folder; its training folder (whose class
        folders are the classes) and test folder.
      batch_size, image_size, seed, shuffle_buffer_size: Images per batch; their height and
        width; the seed of the split and the shuffle; 0 for a full shuffle.
      validation_split: Fraction of training held out for validation; 0 validates on test.
      cache: Where the decoded pixels are stored: "memory" (or "none") for a temporary
        folder (`get_store_directory`), or a folder kept for later runs.
      output: "float32" (MobileNet-preprocessed, in [-1, 1]) or "uint8" (raw pixels).
      skip_bad_images, read_by_path: Leave out undecodable files instead of raising; read
        rows by the store file's path, for datasets sent to a tf.data service.
    """
    # The decode check's one pass decodes every file into the store (a warm call decodes none).
    stores = store.SourceStores(directory=get_store_directory(cache), image_size=image_size)
    splits = loading.load_dataset(
        data_dir,
        train_subdir=train_subdir,
        test_subdir=test_subdir,
        validation_split=validation_split,
        image_size=image_size,
        seed=seed,
        skip_bad_images=skip_bad_images,
        check=stores.check,
    )
    _FILLED[(stores.directory, image_size)] = stores
    train, validation, test = _batched(
        stores,
        splits,
        batch_size=batch_size,
        seed=seed,
        output=output,
        shuffle_buffer_size=shuffle_buffer_size,
        read_by_path=read_by_path,
    )
    return Datasets(train, validation, test, class_names=splits.class_names, splits=splits)


def _batched(stores: store.SourceStores, splits: loading.Splits, **options) -> tuple:
    """(train, validation, test) datasets of the splits' stored rows; validation is the test
    dataset where they are one split."""
    train, test, validation = (
        make_split_dataset(stores.rows(f), f.labels, training=f is splits.train, **options)
        for f in (splits.train, splits.test, splits.validation)
    )
    return train, test if splits.validation_is_test else validation, test


def make_input_fn(
    folder: loading.ImageFolder,
    *,
    global_batch_size: int,
    training: bool = True,
    cache: str = "memory",
    shuffle_buffer_size: int = 0,
    seed: int = 42,
    output: str = "float32",
    read_by_path: bool = False,
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """Returns an `input_fn` for `strategy.distribute_datasets_from_function`.

    The split's pixels are found in the store (`store_split`) when this is called; each input
    pipeline then reads only its replicas' shares of each global batch, of the per-replica
    size the strategy's InputContext derives from `global_batch_size`. Training batches drop
    the remainder so every replica gets a full batch every step.

    Args:
      folder: A split, e.g. `make_datasets(...).splits.train` or `loading.load_dataset(...).train`.
      global_batch_size: Images per step across all replicas.
      training: Shuffle and drop the last partial batch.
      cache: Where the decoded pixels are stored (see `make_datasets`).
      shuffle_buffer_size: 0 for a full shuffle.
      seed: Shuffle seed.
      output: "float32" (preprocessed) or "uint8" (raw pixels).
      read_by_path: Read the rows by the store file's path (see the module's docstring).

    Returns:
      A function from `tf.distribute.InputContext` to a batched dataset.
    """

    examples = store_split(folder, cache=cache)

    def input_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_split_dataset(
            examples,
            folder.labels,
            batch_size=input_context.get_per_replica_batch_size(global_batch_size),
            training=training,
            seed=seed,
            output=output,
            shuffle_buffer_size=shuffle_buffer_size,
            input_context=input_context,
            drop_remainder=training,
            read_by_path=read_by_path,
        )

    return input_fn


def iteration_rows(
    batching: train_input.Batching,
    *,
    seed: int,
    shuffle: bool,
    shuffle_buffer_size: int = 0,
    drop_remainder: bool = False,
) -> train_input.IndexRows:
    """One pass per iteration of the dataset, for callers that iterate it once per epoch
    (`model.fit`) and may hand it to a tf.data service: the indices shuffled by tf.data's
    seeded shuffle, reshuffled each iteration (pass k of every run with one seed has one
    order), then cut into global batches as training cuts them. Its source is a range, so a
    service's `distributed_epoch` splits it among its workers. `drop_remainder` leaves out a
    last partial batch; `shuffle_buffer_size` 0 shuffles the whole split."""
    width = batching.width

    @tf.autograph.experimental.do_not_convert
    def padded(batch):
        row = tf.pad(batch, [[0, width - tf.shape(batch)[0]]], constant_values=PADDING_LABEL)
        return tf.constant(0, tf.int64), tf.ensure_shape(row, [width])

    def rows() -> tf.data.Dataset:
        indices = tf.data.Dataset.range(batching.count)
        if shuffle:
            buffer = shuffle_buffer_size or max(batching.count, 1)
            indices = indices.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        return indices.batch(batching.batch_size, drop_remainder=drop_remainder).map(padded)

    return rows
