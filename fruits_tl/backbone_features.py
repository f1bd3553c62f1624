"""Features once: run the frozen backbone over each split one time and keep the result.

The backbone is frozen, so its output for an image never changes during training; computing
it every epoch (as the tutorial does) repeats the same work once per epoch. This module runs
`model.build_feature_extractor` (preprocessing -> backbone -> global average pool) over the
input pipeline's evaluation batches, under the distribution strategy, and stores per split
`<split>.npz` (features, labels, file paths, its fingerprint), `labels.txt` and
`fingerprint.json`. A later run whose fingerprint matches reuses the files.

Writes are ordered so that nothing incomplete looks complete: `fingerprint.json` is removed
first, each `.npz` is written atomically, and `fingerprint.json` is written last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import weakref
import zipfile
import zlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl import (
    data,
    data_service,
    decode,
    distribute,
    faults,
    files,
    model,
    pipeline,
    preprocess,
    progress,
    store,
    train_input,
)
from fruits_tl.config import FEATURE_DTYPES
from fruits_tl.errors import UserInputError
from fruits_tl.stopping import GracefulStop

FINGERPRINT_FILE = "fingerprint.json"
# Images per stored chunk of an extraction: a killed run loses at most this much work.
DEFAULT_CHUNK_IMAGES = 2048
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Backbone features of one split, element for element with its files.

    Attributes:
      split: "train", "validation" or "test".
      features: [N, D] float32 or float16.
      labels: [N] int32, indices into class_names.
      file_paths: The N image files.
      class_names: The label map.
      fingerprint: The split's fingerprint the features were computed for.
    """

    split: str
    features: np.ndarray
    labels: np.ndarray
    file_paths: tuple[str, ...]
    class_names: tuple[str, ...]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Extraction:
    """The features of every split, and how they were obtained.

    Attributes:
      feature_sets: Split name -> FeatureSet.
      reused: True when every split came from an earlier run's files.
      seconds: Wall time of the extraction (0 when reused).
      images_per_second: Images through the backbone per second (0 when reused).
      features_dir: Where the files are.
    """

    feature_sets: dict
    reused: bool
    seconds: float
    images_per_second: float
    features_dir: str


def weights_digest(backbone: keras.Model) -> str:
    """A digest of the backbone's weights: equal digests mean the same backbone function."""
    digest = hashlib.sha256()
    for weight in backbone.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{weight.path}|{value.dtype}|{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def make_fingerprint(
    *,
    backbone: keras.Model,
    alpha: float,
    image_size: int,
    feature_dtype: str,
    splits: dict[str, data.ImageFolder],
) -> dict:
    """What determines the features: backbone weights, architecture, preprocessing, files."""
    return {
        "format_version": FORMAT_VERSION,
        "backbone_weights_digest": weights_digest(backbone),
        "alpha": float(alpha),
        "image_size": int(image_size),
        "preprocessing_version": preprocess.PREPROCESSING_VERSION,
        "decode_version": decode.DECODE_VERSION,
        "feature_dtype": feature_dtype,
        "splits": {name: folder.fingerprint for name, folder in sorted(splits.items())},
    }


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _extraction_step(extractor: keras.Model):
    """One traced step per extractor, reused across splits and calls (tracing costs ~1 s).

    No input_signature: under MirroredStrategy, `strategy.run` hands a tf.function the
    PerReplica values themselves, which a TensorSpec signature refuses. Every batch is full
    (`pipeline.PADDING_LABEL`), so one trace serves a whole split.
    """
    if extractor not in _STEPS:

        @tf.function(reduce_retracing=True)
        def step(images, labels):
            return extractor(images, training=False), labels

        _STEPS[extractor] = step
    return _STEPS[extractor]


def run_extractor(
    batches: tf.data.Dataset,
    extractor: keras.Model,
    *,
    strategy: tf.distribute.Strategy,
    feature_dtype: str = "float32",
    count: int = 0,
    verbose: bool = False,
    label: str = "extract",
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the extractor over uint8 `(images, labels)` batches of the input pipeline, in order.

    Features and labels come out of the same distributed step, gathered from the replicas in
    order, so they cannot drift apart.

    Returns:
      ([N, D] features in `feature_dtype`, [N] int32 labels).
    """
    distributed = strategy.experimental_distribute_dataset(batches)
    step = _extraction_step(extractor)
    counter = progress.Progress(count, label=label, enabled=verbose)
    features, labels = [], []
    for images, batch_labels in distributed:
        batch_features, batch_labels = strategy.run(step, args=(images, batch_labels))
        batch_features = strategy.gather(batch_features, axis=0).numpy()
        batch_labels = strategy.gather(batch_labels, axis=0).numpy()
        features.append(batch_features.astype(feature_dtype))
        labels.append(batch_labels.astype(np.int32))
        counter.add(int((batch_labels != pipeline.PADDING_LABEL).sum()))
    features_array = np.concatenate(features) if features else np.zeros((0, 0), feature_dtype)
    labels_array = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
    real = labels_array != pipeline.PADDING_LABEL
    return features_array[real], labels_array[real]


# Batches per compiled call of the extraction from stored pixels.
STORED_STEPS_PER_CALL = 32
_STORED_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stored_extraction_steps(extractor: keras.Model, strategy: tf.distribute.Strategy):
    """n batches of the training input pipeline through the extractor in one compiled call:
    [n * padded global batch, D] features, each batch's replica slices gathered in order."""
    for known, step in _STORED_STEPS.get(extractor, ()):
        if known is strategy:
            return step

    @tf.function
    def steps(iterator, n):
        features = tf.TensorArray(extractor.output.dtype, size=n, infer_shape=False)
        for i in tf.range(n):
            images, _, _ = next(iterator)
            per_replica = strategy.run(lambda x: extractor(x, training=False), args=(images,))
            features = features.write(i, strategy.gather(per_replica, axis=0))
        return features.concat()

    _STORED_STEPS.setdefault(extractor, []).append((strategy, steps))
    return steps


def extract_stored(
    images: store.StoredArray,
    labels: np.ndarray,
    extractor: keras.Model,
    *,
    strategy: tf.distribute.Strategy,
    batch_size: int,
    rows: np.ndarray | None = None,
    feature_dtype: str = "float32",
    verbose: bool = False,
    label: str = "extract",
) -> np.ndarray:
    """Features of stored images, read through the training input pipeline: nothing decoded.

    Args:
      images: A split's stored uint8 images (`pixels.store_pixels`).
      labels: Their labels (carried through the pipeline).
      extractor: uint8 pixels -> [batch, D] features, built in `strategy.scope()`.
      strategy: The distribution strategy; `batch_size` is the global batch.
      batch_size: Global batch size.
      rows: The rows to extract, in order (default: all).
      feature_dtype: The features' dtype.
      verbose: Show a progress bar.
      label: The progress bar's name.

    Returns:
      [len(rows), D] features in `rows` order.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, np.int64)
    batching = train_input.Batching(
        count=len(rows), batch_size=batch_size, replicas=strategy.num_replicas_in_sync
    )
    index_batches = batching.index_batches(rows)
    iterator = iter(
        train_input.distribute(
            strategy, images, labels, train_input.fixed_rows(index_batches), batching=batching
        )
    )
    steps = _stored_extraction_steps(extractor, strategy)
    counter = progress.Progress(len(rows), label=label, enabled=verbose)
    parts = []
    for first in range(0, batching.num_batches, STORED_STEPS_PER_CALL):
        n = min(STORED_STEPS_PER_CALL, batching.num_batches - first)
        parts.append(steps(iterator, tf.constant(n)).numpy().astype(feature_dtype))
        counter.add(int((index_batches[first : first + n] >= 0).sum()))
    features = np.concatenate(parts) if parts else np.zeros((0, 0), feature_dtype)
    return features[index_batches.reshape(-1) >= 0]


def extract_features(
    folder: data.ImageFolder,
    extractor: keras.Model,
    *,
    strategy: tf.distribute.Strategy,
    batch_size: int,
    cache: str = "none",
    feature_dtype: str = "float32",
    verbose: bool = True,
    data_service_address: str = "",
    data_service_timeout: float = data_service.DEFAULT_TIMEOUT,
    stored: tuple[store.StoredArray, np.ndarray] | None = None,
) -> FeatureSet:
    """Runs the extractor over one split in file order, under the strategy, in one pass.

    Features and labels come out of the same distributed step, gathered from the replicas in
    order, so they cannot drift apart; the labels are then checked against the folder's.

    Args:
      folder: The split.
      extractor: uint8 pixels -> [batch, D] features, built in `strategy.scope()`.
      strategy: The distribution strategy; `batch_size` is the global batch.
      batch_size: Global batch size.
      cache: Cache setting of the input pipeline (one pass: "none" unless a file cache should
        be filled for later image-mode runs).
      feature_dtype: "float32" or "float16" for the stored features.
      verbose: Show a progress bar.
      data_service_address: Decode the images on the tf.data service there (each exactly
        once), then run the backbone here over them.
      data_service_timeout: Seconds without an element before the service counts as lost.
      stored: (the split's stored pixels, the rows of `folder` in them): read them through
        the training input pipeline instead of decoding.
    """
    if feature_dtype not in FEATURE_DTYPES:
        raise UserInputError(
            f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, got {feature_dtype!r}."
        )
    if stored is not None:
        features = extract_stored(
            stored[0],
            np.zeros(len(stored[0]), np.int32),
            extractor,
            strategy=strategy,
            batch_size=batch_size,
            rows=stored[1],
            feature_dtype=feature_dtype,
            verbose=verbose,
            label=f"extract {folder.name} (stored pixels)",
        )
        return _feature_set(folder, features, np.asarray(folder.labels, np.int32))
    if data_service_address:
        images = data_service.decode_through_service(
            folder, data_service_address, timeout=data_service_timeout
        )
        batches = pipeline.batch_elements(
            tf.data.Dataset.from_tensor_slices((images, folder.labels)),
            batch_size=batch_size,
            pad_last_batch=True,
        )
    else:
        batches = pipeline.make_batches(
            folder,
            batch_size=batch_size,
            training=False,
            cache=cache,
            output="uint8",
            pad_last_batch=True,
        )
        batches = pipeline.share_cpu_with_model(batches)
    features, labels = run_extractor(
        batches,
        extractor,
        strategy=strategy,
        feature_dtype=feature_dtype,
        count=len(folder),
        verbose=verbose,
        label=f"extract {folder.name}",
    )
    return _feature_set(folder, features, labels)


def _feature_set(folder: data.ImageFolder, features: np.ndarray, labels: np.ndarray) -> FeatureSet:
    """The FeatureSet of a split, after checking that the labels are the folder's in order."""
    if not np.array_equal(labels, folder.labels):
        raise RuntimeError(f"extracted labels of split {folder.name} do not match its file order")
    return FeatureSet(
        split=folder.name,
        features=features,
        labels=labels,
        file_paths=folder.file_paths,
        class_names=folder.class_names,
        fingerprint=folder.fingerprint,
    )


def save_feature_set(path: str, feature_set: FeatureSet) -> None:
    """Writes one split's features as an .npz (no pickled objects), atomically."""
    with files.atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            np.savez(
                stream,
                features=feature_set.features,
                labels=feature_set.labels,
                file_paths=np.asarray(feature_set.file_paths, dtype=np.str_),
                class_names=np.asarray(feature_set.class_names, dtype=np.str_),
                split=np.asarray(feature_set.split),
                fingerprint=np.asarray(feature_set.fingerprint),
            )


def load_feature_set(path: str) -> FeatureSet:
    """Reads an .npz written by save_feature_set (never with allow_pickle)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return FeatureSet(
                split=str(stored["split"]),
                features=stored["features"],
                labels=stored["labels"].astype(np.int32),
                file_paths=tuple(str(p) for p in stored["file_paths"]),
                class_names=tuple(str(c) for c in stored["class_names"]),
                fingerprint=str(stored["fingerprint"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise UserInputError(f"The feature file '{path}' cannot be read: {error}") from None


def _read_fingerprint(features_dir: str) -> dict | None:
    try:
        with open(os.path.join(features_dir, FINGERPRINT_FILE), encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def _load_chunk(path: str, fingerprint: str, count: int) -> FeatureSet | None:
    """A stored chunk if it is complete and holds what `fingerprint` names, else None."""
    if not os.path.exists(path):
        return None
    try:
        part = load_feature_set(path)
    except UserInputError as error:
        logging.warning("Recomputing a damaged chunk: %s", error)
        return None
    return part if part.fingerprint == fingerprint and len(part) == count else None


def _shard_file(features_dir: str, name: str, index: int, count: int) -> str:
    return os.path.join(features_dir, f"{name}-{index}-of-{count}.npz")


def _shard_mask(folder: data.ImageFolder, index: int, count: int) -> np.ndarray:
    return np.arange(len(folder)) % count == index


def _extract_sharded(
    splits: dict[str, data.ImageFolder],
    extractor: keras.Model,
    strategy: tf.distribute.Strategy,
    *,
    role: distribute.WorkerRole,
    run_digest: str,
    settings: ExtractionSettings,
) -> dict[str, FeatureSet]:
    """Extraction under several workers: each runs the backbone on its shard only.

    Worker i of n takes every n-th image from image i of each split (the listing is sharded
    before decoding, `data.select`), runs the backbone on its own devices, and writes
    `<split>-<i>-of-<n>.npz` atomically (a rerun reuses it when its fingerprint matches). After
    a barrier every worker reads all the shards and puts the features back in file order; the
    chief writes `<split>.npz` (and, in `extract_or_reuse`, labels.txt and fingerprint.json,
    then removes the shards after a second barrier). No two workers write the same file.
    """
    local = tf.distribute.get_strategy()  # Outside any scope: this worker's own devices.
    features_dir, count = settings.features_dir, role.count
    for name, folder in splits.items():
        mask = _shard_mask(folder, role.index, count)
        path = _shard_file(features_dir, name, role.index, count)
        expected = f"{run_digest}:{name}:shard-{role.index}-of-{count}"
        if _load_chunk(path, expected, int(mask.sum())) is not None:
            logging.warning("Reusing shard %d of %d of %s in %s", role.index, count, name, path)
            continue
        logging.info(
            "Extracting shard %d of %d of %s: %d images", role.index, count, name, int(mask.sum())
        )
        part = settings.extract(
            data.select(folder, mask, name=name),
            extractor,
            local,
            batch_size=max(1, settings.batch_size // count),
        )
        save_feature_set(path, dataclasses.replace(part, fingerprint=expected))
    distribute.barrier(strategy, timeout=settings.barrier_timeout)
    feature_sets = {}
    for name, folder in splits.items():
        parts = []
        for index in range(count):
            part = _load_chunk(
                _shard_file(features_dir, name, index, count),
                f"{run_digest}:{name}:shard-{index}-of-{count}",
                int(_shard_mask(folder, index, count).sum()),
            )
            if part is None:
                raise RuntimeError(
                    f"worker {index}'s shard of {name} is missing or stale in {features_dir}"
                )
            parts.append(part)
        width = max(p.features.shape[1] for p in parts if len(p))
        features = np.zeros((len(folder), width), dtype=settings.feature_dtype)
        labels = np.zeros(len(folder), dtype=np.int32)
        for index, part in enumerate(parts):
            features[index::count] = part.features
            labels[index::count] = part.labels
        feature_sets[name] = _feature_set(folder, features, labels)
        if role.is_chief:
            save_feature_set(_split_path(features_dir, name), feature_sets[name])
    return feature_sets


def _remove_shards(splits, role: distribute.WorkerRole, features_dir: str) -> None:
    for name in splits:
        for index in range(role.count):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_shard_file(features_dir, name, index, role.count))


@dataclasses.dataclass(frozen=True)
class ExtractionSettings:
    """How a job extracts features, as `extract_or_reuse` takes it.

    Attributes:
      features_dir: Where `<split>.npz`, labels.txt and fingerprint.json live.
      batch_size: Global batch size.
      feature_dtype: "float32" or "float16".
      cache: The input pipeline's cache for the one pass: "none", or a file prefix to fill a
        file cache that later image-mode runs read ("memory" would hold images never read
        again).
      verbose: Progress bars.
      chunk_images: Images per stored chunk (rounded up to a multiple of batch_size).
      barrier_timeout: Under several workers, seconds a barrier waits for the others.
      data_service_address: Decode on the tf.data service there ("" decodes here).
      data_service_timeout: Seconds without an element before the service counts as lost.
      pixels_dir: A pixel store (`pixels.store_pixels`): a split whose decoded pixels are
        stored there is read from the store, not decoded.
    """

    features_dir: str
    batch_size: int
    feature_dtype: str = "float32"
    cache: str = "none"
    verbose: bool = True
    chunk_images: int = DEFAULT_CHUNK_IMAGES
    barrier_timeout: float | None = None
    data_service_address: str = ""
    data_service_timeout: float = data_service.DEFAULT_TIMEOUT
    pixels_dir: str = ""

    def extract(self, folder, extractor, strategy, *, batch_size=None, stored=None):
        """`extract_features` with these settings (`batch_size`: another global batch)."""
        return extract_features(
            folder,
            extractor,
            strategy=strategy,
            batch_size=batch_size or self.batch_size,
            feature_dtype=self.feature_dtype,
            cache=self.cache,
            verbose=self.verbose,
            data_service_address=self.data_service_address,
            data_service_timeout=self.data_service_timeout,
            stored=stored,
        )


def extract_or_reuse(
    splits: dict[str, data.ImageFolder],
    *,
    backbone: keras.Model,
    alpha: float,
    image_size: int,
    strategy: tf.distribute.Strategy,
    settings: ExtractionSettings,
    stop: GracefulStop | None = None,
) -> Extraction:
    """Returns the features of every split, reusing `settings.features_dir` when its
    fingerprint matches.

    The work is stored in chunks of about `chunk_images` images, each written atomically with
    a fingerprint of what it holds, so a killed extraction's rerun computes only the missing
    chunks, and the final files are the same whether or not a run was interrupted
    (`_extract_in_chunks`). Under several workers each extracts its shard (`_extract_sharded`).

    Args:
      splits: Split name -> ImageFolder (one label map).
      backbone: The frozen backbone (built in the strategy's scope).
      alpha: Its width multiplier (recorded in the fingerprint).
      image_size: Input size.
      strategy: Distribution strategy for the backbone pass.
      settings: Where and how to extract.
      stop: Checked after every chunk: a stop request raises StopRequested there.
    """
    features_dir = settings.features_dir
    fingerprint = make_fingerprint(
        backbone=backbone,
        alpha=alpha,
        image_size=image_size,
        feature_dtype=settings.feature_dtype,
        splits=splits,
    )
    reused = _reuse(splits, fingerprint, features_dir)
    if reused is not None:
        return reused
    os.makedirs(features_dir, exist_ok=True)
    role = distribute.worker_role(strategy)
    # Invalidate first: from here until the new fingerprint is written, nothing here counts.
    if role.is_chief:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(features_dir, FINGERPRINT_FILE))
    with strategy.scope():
        extractor = model.build_feature_extractor(backbone, image_size=image_size)
    run_digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    start = time.perf_counter()
    if role.count > 1:
        feature_sets = _extract_sharded(
            splits, extractor, strategy, role=role, run_digest=run_digest, settings=settings
        )
    else:
        feature_sets = {
            name: _extract_in_chunks(
                folder, extractor, strategy, run_digest=run_digest, settings=settings, stop=stop
            )
            for name, folder in splits.items()
        }
    if role.is_chief:
        any_split = next(iter(splits.values()))
        files.write_lines(os.path.join(features_dir, "labels.txt"), list(any_split.class_names))
        files.write_json(os.path.join(features_dir, FINGERPRINT_FILE), fingerprint)
    if role.count > 1:
        # Every worker has read the shards: the chief may remove them.
        distribute.barrier(strategy, timeout=settings.barrier_timeout)
        if role.is_chief:
            _remove_shards(splits, role, features_dir)
    seconds = time.perf_counter() - start
    rate = sum(len(folder) for folder in splits.values()) / max(seconds, 1e-9)
    logging.info("Extracted the features in %.1f s: %.1f images/s", seconds, rate)
    return Extraction(
        feature_sets=feature_sets,
        reused=False,
        seconds=seconds,
        images_per_second=rate,
        features_dir=features_dir,
    )


def _split_path(features_dir: str, name: str) -> str:
    return os.path.join(features_dir, f"{name}.npz")


def _reuse(splits, fingerprint: dict, features_dir: str) -> Extraction | None:
    """The stored features when the fingerprint and every split file match, else None (and a
    line saying what changed)."""
    previous = _read_fingerprint(features_dir)
    paths = {name: _split_path(features_dir, name) for name in splits}
    if previous == fingerprint and all(os.path.exists(p) for p in paths.values()):
        try:
            loaded = {name: load_feature_set(path) for name, path in paths.items()}
        except UserInputError as error:
            # A damaged file under a matching fingerprint (a disk error, a copy cut short): the
            # features can be computed again, so that is what happens, with a warning.
            logging.warning("Recomputing the features in %s: %s", features_dir, error)
            return None
        if all(
            loaded[name].fingerprint == splits[name].fingerprint
            and len(loaded[name]) == len(splits[name])
            for name in splits
        ):
            logging.warning(
                "Reusing the features in %s: their fingerprint matches this backbone and these "
                "files.",
                features_dir,
            )
            return Extraction(
                feature_sets=loaded,
                reused=True,
                seconds=0.0,
                images_per_second=0.0,
                features_dir=features_dir,
            )
    if previous is not None:
        changed = sorted(
            k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k)
        )
        logging.info(
            "Recomputing the features in %s: fingerprint changed (%s).",
            features_dir,
            ", ".join(changed),
        )
    return None


def _extract_in_chunks(
    folder: data.ImageFolder,
    extractor: keras.Model,
    strategy: tf.distribute.Strategy,
    *,
    run_digest: str,
    settings: ExtractionSettings,
    stop: GracefulStop | None,
) -> FeatureSet:
    """One split's features, chunk by chunk (each saved, a saved one reused), then saved whole
    as `<split>.npz` and its chunks removed."""
    name, features_dir = folder.name, settings.features_dir
    stored_pixels = None
    if settings.pixels_dir:
        stored_pixels = store.open_complete(
            settings.pixels_dir, f"{name}.pixels", fingerprint=folder.fingerprint
        )
    if stored_pixels is not None:
        logging.warning(
            "Extracting %s from the stored pixels in %s: nothing decoded.",
            name,
            settings.pixels_dir,
        )
    chunk = -(-max(settings.chunk_images, 1) // settings.batch_size) * settings.batch_size
    size = len(folder) if settings.cache not in ("none", "memory") else chunk
    bounds = [(i, min(i + size, len(folder))) for i in range(0, len(folder), size)] or [(0, 0)]

    def chunk_path(k: int) -> str:
        return os.path.join(features_dir, f"{name}.chunk-{k}.npz")

    parts = []
    for k, (first, last) in enumerate(bounds, start=1):
        part_fingerprint = f"{run_digest}:{name}:{first}-{last}"
        reused = _load_chunk(chunk_path(k), part_fingerprint, last - first)
        if reused is not None:
            logging.warning(
                "Reusing chunk %d of %d of %s (images %d-%d)", k, len(bounds), name, first, last - 1
            )
            parts.append(reused)
            continue
        logging.info(
            "Extracting %s features of images %d-%d of %d", name, first, last - 1, len(folder)
        )
        # The whole split keeps its own fingerprint, which names its file cache.
        subset = (
            folder
            if last - first == len(folder)
            else data.select(
                folder,
                (np.arange(len(folder)) >= first) & (np.arange(len(folder)) < last),
                name=name,
            )
        )
        rows = None if stored_pixels is None else (stored_pixels, np.arange(first, last))
        part = settings.extract(subset, extractor, strategy, stored=rows)
        part = dataclasses.replace(part, fingerprint=part_fingerprint)
        save_feature_set(chunk_path(k), part)
        parts.append(part)
        faults.point(f"extraction:chunk:{name}:{k}")
        if stop is not None and k < len(bounds):
            stop.check(
                f"{k} of {len(bounds)} chunks of the {name} features are saved in "
                f"{features_dir}; rerun to resume"
            )
    whole = _feature_set(
        folder,
        np.concatenate([p.features for p in parts]) if len(parts) > 1 else parts[0].features,
        np.concatenate([p.labels for p in parts]) if len(parts) > 1 else parts[0].labels,
    )
    save_feature_set(_split_path(features_dir, name), whole)
    for k in range(1, len(bounds) + 1):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(chunk_path(k))
    faults.point(f"extraction:saved:{name}")
    if stop is not None:
        stop.check(f"the {name} features are saved in {features_dir}; rerun to resume")
    return whole
