"""The tf.data input pipeline every job takes, and the public API for embedding it.

The order is written once, here (after big_vision's input_pipeline):

1. shard the (path, label) listing (for an `input_fn` or a worker), then decode only that
   shard with `decode.decode_image` (`data.ImageFolder.make_elements`);
2. cache the unbatched uint8 elements (memory, or a file prefix): the first epoch decodes, the
   rest replay decoded pixels. uint8, never float32: a float32 cache is 4x the memory;
3. shuffle (training only), reshuffled every epoch with a seeded generator. The buffer defaults
   to the whole split: Fruits-360 folders are sorted by class, so a small buffer would feed
   batches of one or two classes. After a memory cache the buffer holds references, not copies;
4. batch with the global batch size (`input_fn`: the per-replica size);
5. optionally map `preprocess.mobilenet_inputs` (float32 in [-1, 1]) for embedding users. The
   package's own models take the uint8 batches and preprocess in their first layer: 4x fewer
   bytes written per image on the host and copied to an accelerator;
6. prefetch(AUTOTUNE), so the next batch is ready while the model runs.

The parallelism is set, not autotuned: the decode map takes `decode.decode_parallelism()`
calls, tf.data's autotuner is off and so are its static graph rewrites
(`decode.with_pass_options`, measured in BENCHMARKS.md 5a and 5c).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from fruits_tl import data, decode, files, pixels, preprocess, progress, store, train_input
from fruits_tl.errors import UserInputError

OUTPUTS = ("uint8", "float32")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def get_cache_prefix(
    cache: str, folder: data.ImageFolder, *, num_shards: int = 1, shard_index: int = 0
) -> str:
    """The file-cache prefix for one split: the user's prefix plus the split's fingerprint.

    A different listing, image size or class map gives a different prefix, so a stale cache is
    never read as if it were current.
    """
    shard = f"-shard{shard_index}of{num_shards}" if num_shards > 1 else ""
    return f"{cache}-{folder.name}-{folder.fingerprint}{shard}"


def _fill_file_cache(dataset: tf.data.Dataset, prefix: str, *, expected: int) -> None:
    """Writes the tf.data file cache at `prefix` in one full pass, then marks it complete.

    tf.data's file cache leaves a lockfile and temporary files behind when the writing process
    is killed, and later runs then fail with AlreadyExistsError. Here a cache counts only with
    the `.complete` marker written (atomically) after a full pass; anything else under the
    prefix is a leftover and is removed, unless a live process still owns it.
    """
    owner_path = prefix + ".owner"
    if os.path.exists(owner_path):
        try:
            with open(owner_path, encoding="utf-8") as stream:
                host, pid_text = stream.read().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            host, pid = "", -1
        if host == socket.gethostname() and pid != os.getpid() and _process_alive(pid):
            raise UserInputError(
                f"The file cache '{prefix}' is being written by process {pid} on this machine. "
                "Wait for it to finish, or pass another --cache path."
            )
    leftovers = glob.glob(glob.escape(prefix) + ".*") + glob.glob(glob.escape(prefix) + "_*")
    if leftovers:
        logging.warning(
            "Removing an incomplete file cache left by an interrupted run: %s",
            ", ".join(sorted(leftovers)),
        )
        for path in leftovers:
            os.unlink(path)
    files.write_text(owner_path, f"{socket.gethostname()} {os.getpid()}\n")
    try:
        counter = progress.Progress(expected, label=f"file cache {os.path.basename(prefix)}")
        count = 0
        labels_only = tf.autograph.experimental.do_not_convert(lambda image, label: label)
        for labels in dataset.cache(prefix).map(labels_only).batch(256):
            count += int(labels.shape[0])
            counter.add(int(labels.shape[0]))
        if count != expected:
            raise RuntimeError(f"file cache {prefix} holds {count} elements, expected {expected}")
        files.write_text(prefix + ".complete", f"{count}\n")
    finally:
        os.unlink(owner_path)


def apply_cache(
    dataset: tf.data.Dataset, cache: str, *, prefix: str, expected: int
) -> tf.data.Dataset:
    """Applies the cache setting to an unbatched dataset.

    Args:
      dataset: Unbatched uint8 elements.
      cache: "memory", "none", or a file path prefix.
      prefix: The full file-cache prefix for this split (from get_cache_prefix).
      expected: Number of elements, to verify a file cache after writing it.

    Returns:
      The cached (or uncached) dataset.
    """
    if cache == "none":
        return dataset
    if cache == "memory":
        return dataset.cache()
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    if not (os.path.exists(prefix + ".complete") and os.path.exists(prefix + ".index")):
        logging.info("Writing the file cache %s", prefix)
        _fill_file_cache(dataset, prefix, expected=expected)
    else:
        logging.info("Reading the complete file cache %s", prefix)
    return dataset.cache(prefix)


# The label of a padding row (the package's one rule: `train_input.PADDING_LABEL`).
PADDING_LABEL = train_input.PADDING_LABEL


def batch_elements(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    drop_remainder: bool = False,
    pad_last_batch: bool = False,
) -> tf.data.Dataset:
    """The input pipeline's batching step: `(image, label)` elements into batches of
    `batch_size`, the last one dropped, kept short, or padded (see `PADDING_LABEL`)."""
    dataset = dataset.batch(
        batch_size,
        drop_remainder=drop_remainder,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if not pad_last_batch or drop_remainder:
        return dataset

    def pad(images, labels):
        missing = batch_size - tf.shape(images)[0]
        images = tf.pad(images, [[0, missing]] + [[0, 0]] * (images.shape.rank - 1))
        labels = tf.pad(labels, [[0, missing]], constant_values=PADDING_LABEL)
        return (
            tf.ensure_shape(images, [batch_size, *images.shape[1:]]),
            tf.ensure_shape(labels, [batch_size]),
        )

    return dataset.map(tf.autograph.experimental.do_not_convert(pad))


def make_batches(
    folder: data.ImageFolder,
    *,
    batch_size: int,
    training: bool,
    cache: str = "memory",
    shuffle_buffer_size: int = 0,
    seed: int | None = 42,
    output: str = "uint8",
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: bool = False,
    pad_last_batch: bool = False,
) -> tf.data.Dataset:
    """Assembles the input pipeline for one split: cache, shuffle, batch, (preprocess,) prefetch.

    Args:
      folder: The split from `data.load_split` or `data.load_dataset`.
      batch_size: Images per batch: the global batch size when the dataset goes to
        `model.fit` under a strategy, the per-replica size inside an `input_fn`.
      training: Shuffle (reshuffled every epoch). Evaluation keeps file order.
      cache: "memory", "none", or a file path prefix (see get_cache_prefix).
      shuffle_buffer_size: Shuffle buffer; 0 means the whole split.
      seed: Shuffle seed; None for a different order every run.
      output: "uint8" raw pixels (for the package's models, which preprocess inside) or
        "float32" pixels mapped to [-1, 1] by `preprocess.mobilenet_inputs`.
      num_shards: Split the elements into this many shards (by element index) ...
      shard_index: ... and keep this one.
      drop_remainder: Drop a last partial batch (static batch shapes).
      pad_last_batch: Pad a last partial batch to `batch_size` with zero images labelled
        `PADDING_LABEL` (-1), for inference under a strategy: every replica then gets a share
        of every batch, and every batch has one shape. Drop the outputs of those rows.

    Returns:
      A dataset of `(images, labels)` batches.
    """
    if output not in OUTPUTS:
        raise UserInputError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}.")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0 <= shard_index < num_shards:
        raise UserInputError(f"shard_index must be in [0, {num_shards}), got {shard_index}.")
    # Shard the listing before anything is decoded: this pipeline decodes only its own files.
    dataset = folder.make_elements(num_shards=num_shards, shard_index=shard_index)
    count = len(range(shard_index, len(folder), num_shards))
    dataset = apply_cache(
        dataset,
        cache,
        prefix=get_cache_prefix(cache, folder, num_shards=num_shards, shard_index=shard_index),
        expected=count,
    )
    if training:
        buffer = shuffle_buffer_size or max(count, 1)
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = batch_elements(
        dataset,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
        pad_last_batch=pad_last_batch,
    )
    if output == "float32":
        dataset = dataset.map(
            tf.autograph.experimental.do_not_convert(
                lambda images, labels: (preprocess.mobilenet_inputs(images), labels)
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return decode.with_pass_options(dataset.prefetch(tf.data.AUTOTUNE))


def make_feature_batches(
    features,
    labels,
    *,
    batch_size: int,
    training: bool,
    shuffle_buffer_size: int = 0,
    seed: int | None = 42,
) -> tf.data.Dataset:
    """The input pipeline of cached backbone features: shuffle (training), batch, prefetch.

    The shuffle is the image pipeline's (same buffer rule, seed and reshuffling), so with the same
    seed the head sees examples in the same order as it would in image mode.

    Args:
      features: [N, D] float32 or float16 array.
      labels: [N] int labels.
      batch_size: Global batch size.
      training: Shuffle, reshuffled every epoch.
      shuffle_buffer_size: 0 for the whole split.
      seed: Shuffle seed.

    Returns:
      A dataset of `(float32 features, int32 labels)` batches.
    """
    dataset = tf.data.Dataset.from_tensor_slices((features, labels.astype("int32")))
    if training:
        dataset = dataset.shuffle(
            shuffle_buffer_size or max(len(labels), 1), seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.map(
        tf.autograph.experimental.do_not_convert(lambda x, y: (tf.cast(x, tf.float32), y)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


@functools.cache
def _temporary_store_directory() -> str:
    """This process's temporary store folder, removed when the process exits."""
    path = tempfile.mkdtemp(prefix="fruits-tl-store-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def get_store_directory(cache: str) -> str:
    """Where the embedding API stores a split's decoded pixels for `cache`.

    "memory" (or "none"): a temporary folder of this process, removed when it exits (the
    operating system's page cache holds the pixels, not the process). Anything else is a
    folder that keeps the store across runs: a later call on unchanged files decodes nothing.
    """
    return _temporary_store_directory() if cache in ("memory", "none") else cache


def store_split(folder: data.ImageFolder, *, cache: str = "memory") -> store.StoredArray:
    """The split's uint8 images in the store (decoded into it once, by one parallel pass)."""
    return pixels.store_pixels(folder, directory=get_store_directory(cache)).examples


def make_split_dataset(
    examples: store.StoredArray,
    labels,
    *,
    batch_size: int,
    training: bool,
    seed: int | None = 42,
    output: str = "float32",
    shuffle_buffer_size: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of a stored split for `model.fit`: indices -> (shard) -> (shuffle, reshuffled
    every epoch) -> batch -> rows gathered from the store by TensorFlow ops -> (preprocess)
    -> prefetch. The rows are read by the file's path (`StoredArray.gather_by_path`): the
    dataset's graph carries the path, not the store, so it can be saved or sent to a tf.data
    service whose workers reach the file, and nothing of the store is copied into memory."""
    if output not in OUTPUTS:
        raise UserInputError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}.")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, got {batch_size}.")
    label_table = tf.constant(labels, tf.int32)
    indices = tf.data.Dataset.range(len(examples))
    if num_shards > 1:
        indices = indices.shard(num_shards, shard_index)
    if training:
        count = len(range(shard_index, len(examples), num_shards))
        buffer = shuffle_buffer_size or max(count, 1)
        indices = indices.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)

    @tf.autograph.experimental.do_not_convert
    def read(batch):
        images = examples.gather_by_path(batch)
        if output == "float32":
            images = preprocess.mobilenet_inputs(images)
        return images, tf.gather(label_table, batch)

    dataset = indices.map(read, num_parallel_calls=decode.available_cores(), deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(train_input.read_options())


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
    splits: data.Splits


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
) -> Datasets:
    """Checks a `Training/<class>/*`, `Test/<class>/*` folder and returns batched datasets.

    Each split is decoded once, in parallel, into the store (`store_split`), and the batches
    are read from it by TensorFlow ops, as `fruits-tl-train` reads it. By default
    batches are float32 MobileNet-preprocessed pixels in [-1, 1]; pass `output="uint8"` for raw
    pixels (4x less memory traffic) when your model applies `fruits_tl.preprocess.mobilenet_inputs`
    itself.

    Args:
      data_dir: The data folder.
      batch_size: Images per batch.
      image_size: Images are resized to image_size x image_size.
      train_subdir: The training folder inside data_dir (defines the classes).
      test_subdir: The test folder inside data_dir.
      validation_split: Fraction of training held out for validation; 0 validates on test.
      cache: Where the decoded pixels are stored (`get_store_directory`): "memory" (or
        "none") for a temporary folder removed when the process exits, or a folder that keeps
        them for later runs.
      shuffle_buffer_size: 0 for a full shuffle.
      seed: Seed for the split and the shuffle.
      output: "float32" (preprocessed) or "uint8" (raw pixels).
      skip_bad_images: Leave out undecodable files instead of raising.

    Returns:
      Datasets with train, validation and test batches and the class names.

    Raises:
      UserInputError: The folder or its files are not usable; the message says why.
    """
    splits = data.load_dataset(
        data_dir,
        train_subdir=train_subdir,
        test_subdir=test_subdir,
        validation_split=validation_split,
        image_size=image_size,
        seed=seed,
        skip_bad_images=skip_bad_images,
    )

    def batches(folder, training):
        return make_split_dataset(
            store_split(folder, cache=cache),
            folder.labels,
            batch_size=batch_size,
            training=training,
            seed=seed,
            output=output,
            shuffle_buffer_size=shuffle_buffer_size,
        )

    train = batches(splits.train, True)
    test = batches(splits.test, False)
    validation = test if splits.validation_is_test else batches(splits.validation, False)
    return Datasets(
        train=train, validation=validation, test=test, class_names=splits.class_names, splits=splits
    )


def make_input_fn(
    folder: data.ImageFolder,
    *,
    global_batch_size: int,
    training: bool = True,
    cache: str = "memory",
    shuffle_buffer_size: int = 0,
    seed: int = 42,
    output: str = "float32",
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """Returns an `input_fn` for `strategy.distribute_datasets_from_function`.

    The split is decoded once into the store (`store_split`) when this is called; each input
    pipeline then reads its own shard of the rows (row i to pipeline i mod n) and batches
    with the per-replica batch size that the strategy's InputContext derives from
    `global_batch_size`. Training batches drop the remainder so
    every replica gets a full batch every step.

    Args:
      folder: A split, e.g. `make_datasets(...).splits.train` or `data.load_dataset(...).train`.
      global_batch_size: Images per step across all replicas.
      training: Shuffle and drop the last partial batch.
      cache: Where the decoded pixels are stored (see `make_datasets`).
      shuffle_buffer_size: 0 for a full shuffle of the shard.
      seed: Shuffle seed.
      output: "float32" (preprocessed) or "uint8" (raw pixels).

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
            num_shards=input_context.num_input_pipelines,
            shard_index=input_context.input_pipeline_id,
            drop_remainder=training,
        )

    return input_fn
