"""Features once: the frozen backbone over each split one time, its output stored as rows.

The backbone is frozen, so its output for an image never changes during training; computing
it every epoch (as the tutorial does) repeats the same work once per epoch. Extraction reads
the split's decoded pixels from the pixel store (`store.store_pixels`: each image decoded
once, whatever later reads it) through the training input pipeline, runs
`model.build_feature_extractor` (preprocessing -> backbone -> global average pool) over many
batches per compiled call, and writes the features into the store (`store.fill`), the same
format as the pixels: per split, in `features_dir`,
- `<split>.features.json` and its rows file: [N, D] float32 (or float16) features;
- `<split>.labels.json` and its rows file: [N] int32 labels;
- `<split>.files.txt`: the N image files, one per line, in row order;
and `labels.txt`, the class names in index order. `load_split` reads them back (NumPy arrays
that map the files). A features manifest's fingerprint names the backbone's weights, its
architecture, the preprocessing, the decode function and the split's files: a later run whose
fingerprint matches reuses the rows (their checksums verified), and a killed run resumes by
chunk. Under several workers the same rule as every store shares the chunks out
(`store.owns_chunk`): each worker decodes and extracts its chunks on its own devices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import weakref

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core import distribute, files, progress
from fruits_tl.core.config import DATA_SERVICE_TIMEOUT, FEATURE_DTYPES, UserInputError
from fruits_tl.core.stopping import GracefulStop
from fruits_tl.data import decode, loading, store, train_input
from fruits_tl.models import model

# Images per stored chunk of an extraction: a killed run loses at most this much work.
DEFAULT_CHUNK_IMAGES = 2048
# Images per replica in each extraction batch: the compiled forward pass of MobileNet is
# 3-24% slower at training's 32 than at 64-128, no faster at 256, and at 128 its working memory
# is 100 MB more than at 64 (BENCHMARKS.md 15).
EXTRACTION_BATCH_PER_REPLICA = 64
FORMAT_VERSION = 2
PIXELS_DIR = "pixels"
LABELS_FILE = "labels.txt"


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Backbone features of one split, element for element with its files.

    Attributes:
      split: "train", "validation" or "test".
      rows: The stored [N, D] float32 or float16 features (the input pipeline reads them
        natively).
      labels: [N] int32, indices into class_names.
      file_paths: The N image files.
      class_names: The label map.
    """

    split: str
    rows: store.StoredArray
    labels: np.ndarray
    file_paths: tuple[str, ...]
    class_names: tuple[str, ...]

    @property
    def features(self) -> np.ndarray:
        """The features as NumPy: a copy-on-write map of the stored rows."""
        return self.rows.numpy()

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Extraction:
    """The features of every split, and how they were obtained.

    Attributes:
      feature_sets: Split name -> FeatureSet.
      reused: True when every split's features came from an earlier run.
      seconds: Wall time of the extraction (0 when reused): the backbone pass, and the pixel
        store's fill only for a split whose pixels the job's decode check did not store.
      images_per_second: Images through the backbone per second (0 when reused).
      features_dir: Where the files are.
      images: Images through the backbone (0 when reused).
      decode_seconds: The job's decode check before it (Keras's listing, every file decoded
        into the pixel store; 0 when the caller did not time one).
    """

    feature_sets: dict
    reused: bool
    seconds: float
    images_per_second: float
    features_dir: str
    images: int = 0
    decode_seconds: float = 0.0


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
    splits: dict[str, loading.ImageFolder],
) -> dict:
    """What determines the features: backbone weights, architecture, preprocessing, files."""
    return {
        "format_version": FORMAT_VERSION,
        "backbone_weights_digest": weights_digest(backbone),
        "alpha": float(alpha),
        "image_size": int(image_size),
        "preprocessing_version": decode.PREPROCESSING_VERSION,
        "decode_version": decode.DECODE_VERSION,
        "feature_dtype": feature_dtype,
        "splits": {name: folder.fingerprint for name, folder in sorted(splits.items())},
    }


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


def feature_rows(
    images: store.StoredArray,
    extractor: keras.Model,
    *,
    strategy: tf.distribute.Strategy,
    batch_size: int,
    first: int = 0,
    last: int | None = None,
    feature_dtype: str = "float32",
    counter: progress.Progress | None = None,
):
    """Features of stored images [first, last), read through the training input pipeline:
    blocks of (row positions, [n, D] features), `STORED_STEPS_PER_CALL` batches per block.

    Args:
      images: A split's stored uint8 images (`store.store_pixels`).
      extractor: uint8 pixels -> [batch, D] features, built in `strategy.scope()`.
      strategy: The distribution strategy; `batch_size` is the global batch.
      batch_size: Global batch size.
      first, last: The rows (default: all).
      feature_dtype: The features' dtype.
      counter: A progress bar to advance.
    """
    rows = np.arange(first, len(images) if last is None else last)
    batching = train_input.Batching(
        count=len(rows), batch_size=batch_size, replicas=strategy.num_replicas_in_sync
    )
    index_batches = batching.index_batches(rows)
    labels = np.zeros(len(images), np.int32)  # Not needed: the pipeline carries labels.
    iterator = iter(
        train_input.distribute(
            strategy, images, labels, train_input.fixed_rows(index_batches), batching=batching
        )
    )
    steps = _stored_extraction_steps(extractor, strategy)
    for start in range(0, batching.num_batches, STORED_STEPS_PER_CALL):
        n = min(STORED_STEPS_PER_CALL, batching.num_batches - start)
        features = steps(iterator, tf.constant(n)).numpy()
        positions = index_batches[start : start + n].reshape(-1)
        real = positions >= 0
        if counter is not None:
            counter.add(int(real.sum()))
        yield positions[real], features[real].astype(feature_dtype)


def extract_stored(images: store.StoredArray, extractor: keras.Model, **kwargs) -> np.ndarray:
    """[N, D] features of all stored images, in order (`feature_rows`' blocks joined)."""
    blocks = [features for _, features in feature_rows(images, extractor, **kwargs)]
    dtype = kwargs.get("feature_dtype", "float32")
    return np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype)


@dataclasses.dataclass(frozen=True)
class ExtractionSettings:
    """How a job extracts features, as `extract_or_reuse` takes it.

    Attributes:
      features_dir: Where the features, labels and file lists are stored.
      batch_size: Global batch size of the extraction (0: EXTRACTION_BATCH_PER_REPLICA per
        replica).
      feature_dtype: "float32" or "float16".
      verbose: Progress bars.
      chunk_images: Images per stored chunk, of the features and of the pixels.
      barrier_timeout: Under several workers, seconds a barrier waits for the others.
      data_service_address: Decode on the tf.data service there ("" decodes here).
      data_service_timeout: Seconds without an element before the service counts as lost.
      pixels_dir: The pixel store (default: `<features_dir>/pixels`).
    """

    features_dir: str
    batch_size: int = 0
    feature_dtype: str = "float32"
    verbose: bool = True
    chunk_images: int = DEFAULT_CHUNK_IMAGES
    barrier_timeout: float | None = None
    data_service_address: str = ""
    data_service_timeout: float = DATA_SERVICE_TIMEOUT
    pixels_dir: str = ""

    def resolved_pixels_dir(self) -> str:
        return self.pixels_dir or os.path.join(self.features_dir, PIXELS_DIR)


def extract_or_reuse(
    splits: dict[str, loading.ImageFolder],
    *,
    images: dict | None = None,
    backbone: keras.Model,
    alpha: float,
    image_size: int,
    strategy: tf.distribute.Strategy,
    settings: ExtractionSettings,
    stop: GracefulStop | None = None,
) -> Extraction:
    """The features of every split: stored ones reused where their fingerprint matches, the
    rest extracted from the pixel store (filled first where needed) into the store.

    Args:
      splits: Split name -> ImageFolder (one label map).
      images: Split name -> its stored pixels (`store.SourceStores.rows`, filled by the
        decode check); a split without them is decoded into the pixel store first.
      backbone, alpha, image_size: The frozen backbone (built in the strategy's scope), its
        width multiplier (recorded in the fingerprint) and input size.
      strategy, settings: The backbone pass's strategy; where and how to extract.
      stop: Checked after every chunk: a stop request raises StopRequested there.

    Raises:
      UserInputError: An unknown feature dtype; a disk without room for the store.
    """
    if settings.feature_dtype not in FEATURE_DTYPES:
        raise UserInputError(
            f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, "
            f"got {settings.feature_dtype!r}."
        )
    fingerprint = make_fingerprint(
        backbone=backbone,
        alpha=alpha,
        image_size=image_size,
        feature_dtype=settings.feature_dtype,
        splits=splits,
    )
    run = _Run(
        images or {},
        settings,
        strategy,
        backbone,
        image_size,
        hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16],
        stop,
    )
    start = time.perf_counter()
    feature_sets = {name: run.split(folder) for name, folder in splits.items()}
    if run.role.is_chief:
        any_split = next(iter(splits.values()))
        files.write_lines(
            os.path.join(settings.features_dir, LABELS_FILE), list(any_split.class_names)
        )
    seconds = time.perf_counter() - start
    if not run.extracted:
        return Extraction(feature_sets, True, 0.0, 0.0, settings.features_dir)
    rate = run.extracted / max(seconds, 1e-9)
    logging.info("Extracted the features in %.1f s: %.1f images/s", seconds, rate)
    return Extraction(feature_sets, False, seconds, rate, settings.features_dir, run.extracted)


class _Run:
    """One extraction: the worker's part of every split, through the store."""

    def __init__(self, images, settings, strategy, backbone, image_size: int, digest: str, stop):
        self.images, self.settings, self.strategy = images, settings, strategy
        self.backbone = backbone
        self.image_size = image_size
        self.digest, self.stop = digest, stop
        self.role = distribute.worker_role(strategy)
        # Under several workers each extracts its own chunks on its own devices.
        self.local = strategy if self.role.count == 1 else tf.distribute.get_strategy()
        self.batch_size = (
            max(1, settings.batch_size // self.role.count)
            if settings.batch_size
            else EXTRACTION_BATCH_PER_REPLICA * self.local.num_replicas_in_sync
        )
        # The pixel store's chunks too, so that images mode and fine-tuning find it filled.
        self.chunk_rows = max(settings.chunk_images, 1)
        self.extracted = 0
        self._extractor = None

    def barrier(self) -> None:
        distribute.barrier(self.strategy, timeout=self.settings.barrier_timeout)

    def extractor(self) -> keras.Model:
        if self._extractor is None:
            with self.strategy.scope():
                self._extractor = model.build_feature_extractor(
                    self.backbone, image_size=self.image_size
                )
        return self._extractor

    def pixels(self, folder: loading.ImageFolder, *, shared: bool) -> store.StoredArray:
        """The split's stored pixels, filled where needed (by every worker together when
        `shared`, else by this one alone: a damaged features chunk found late)."""
        settings = self.settings
        return store.store_pixels(
            folder,
            directory=settings.resolved_pixels_dir(),
            chunk_images=self.chunk_rows,
            data_service_address=settings.data_service_address,
            data_service_timeout=settings.data_service_timeout,
            worker_index=self.role.index if shared else 0,
            worker_count=self.role.count if shared else 1,
            wait_for_workers=self.barrier if shared else (lambda: None),
            stop=self.stop,
        ).examples

    def split(self, folder: loading.ImageFolder) -> FeatureSet:
        """The split's features: reused, or extracted chunk by chunk into the store."""
        settings, name = self.settings, folder.name
        fingerprint = f"{self.digest}:{folder.fingerprint}"
        name_in_store = f"{name}.features"
        stored = store.open_complete(settings.features_dir, name_in_store, fingerprint=fingerprint)
        # Every worker sees the same answer here: nothing changes the store before the pixel
        # store's barriers.
        images = self.images.get(name)
        if images is None and stored is None:
            images = self.pixels(folder, shared=True)
        counter = progress.Progress(len(folder), label=f"extract {name}", enabled=settings.verbose)

        def produce(first: int, last: int):
            nonlocal images
            if images is None:
                images = self.pixels(folder, shared=False)
            self.extracted += last - first
            yield from feature_rows(
                images,
                self.extractor(),
                strategy=self.local,
                batch_size=self.batch_size,
                first=first,
                last=last,
                feature_dtype=settings.feature_dtype,
                counter=counter,
            )

        width = int(self.backbone.output.shape[-1])
        filled = self._fill(
            folder, name_in_store, fingerprint, produce, (width,), settings.feature_dtype
        )
        if self.role.count > 1 and filled.written_rows:
            logging.info(
                "Worker %d of %d extracted %d of the %d %s images",
                self.role.index,
                self.role.count,
                filled.written_rows,
                len(folder),
                name,
            )
        features = filled.examples
        labels = self._fill(
            folder,
            f"{name}.labels",
            folder.fingerprint,
            lambda first, last: [(np.arange(first, last), _labels(folder)[first:last])],
            (),
            np.int32,
        ).examples
        if self.role.is_chief:
            files.write_lines(_files_path(settings.features_dir, name), list(folder.file_paths))
        return FeatureSet(
            split=name,
            rows=features,
            labels=labels.numpy(),
            file_paths=folder.file_paths,
            class_names=folder.class_names,
        )

    def _fill(self, folder, name, fingerprint, produce, row_shape, dtype) -> store.Stored:
        """One of the split's arrays in the store (this worker's chunks of it)."""
        return store.fill(
            self.settings.features_dir,
            name,
            fingerprint=fingerprint,
            count=len(folder),
            row_shape=row_shape,
            dtype=dtype,
            produce=produce,
            chunk_rows=self.chunk_rows,
            worker_index=self.role.index,
            worker_count=self.role.count,
            barrier=self.barrier,
            stop=self.stop,
            label=f"{folder.name} {name.split('.')[-1]}",
        )


def _labels(folder: loading.ImageFolder) -> np.ndarray:
    return np.asarray(folder.labels, np.int32)


def _files_path(features_dir: str, name: str) -> str:
    return os.path.join(features_dir, f"{name}.files.txt")


def load_split(features_dir: str, name: str) -> FeatureSet:
    """A split's stored features, labels and files, as `extract_or_reuse` wrote them.

    Raises:
      UserInputError: The folder holds no complete features of that split.
    """
    features = store.open_complete(features_dir, f"{name}.features")
    labels = store.open_complete(features_dir, f"{name}.labels")
    try:
        with open(_files_path(features_dir, name), encoding="utf-8") as stream:
            file_paths = tuple(stream.read().splitlines())
        with open(os.path.join(features_dir, LABELS_FILE), encoding="utf-8") as stream:
            class_names = tuple(stream.read().splitlines())
    except OSError:
        file_paths = class_names = None
    if features is None or labels is None or file_paths is None or len(file_paths) != len(labels):
        raise UserInputError(
            f"'{features_dir}' holds no complete features of the {name} split (its "
            f"{name}.features.json, {name}.labels.json, {name}.files.txt and {LABELS_FILE}): "
            "run fruits-tl-extract into it first."
        )
    return FeatureSet(
        split=name,
        rows=features,
        labels=labels.numpy(),
        file_paths=file_paths,
        class_names=class_names,
    )
