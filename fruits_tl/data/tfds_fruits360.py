"""A TensorFlow Datasets builder for Fruits-360, and its reader for the one input pipeline.

Importing this module registers the `fruits360` builder, so `tfds.load("fruits360",
data_dir=...)` and `tfds build fruits360 --imports fruits_tl.tfds_fruits360 --manual_dir=...`
both work. It prepares from, in this order: an extracted Fruits-360 folder (holding
`Training/` and `Test/`, at the top of the manual dir or below it), a release archive (.zip or
.tar.gz) in the manual dir, or a download of the public release archive.

`load_tfds_splits` turns the prepared records into the same `loading.Splits` that image folders
give (uint8 images resized as Keras resizes, int32 labels in the folder's class order, file
names as paths), so TFDS data takes the same cache, shuffle, batch and preprocessing steps.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from fruits_tl.core.config import UserInputError
from fruits_tl.data import decode, download, loading

NAME = "fruits360"
IMAGE_SHAPE = (100, 100, 3)


def _find_extracted_root(directory: epath.Path, *, depth: int = 3) -> epath.Path | None:
    """The shallowest folder under `directory` holding Training/ (tf.io.gfile, as TFDS requires)."""
    pending = [(directory, 0)]
    while pending:
        current, level = pending.pop(0)
        if (current / "Training").is_dir():
            return current
        if level < depth and current.is_dir():
            pending += [
                (child, level + 1)
                for child in sorted(current.iterdir())
                if child.is_dir() and not loading.is_skipped_folder(child.name)
            ]
    return None


class Fruits360(tfds.core.GeneratorBasedBuilder):
    """Fruits-360: 100x100 JPEG photos of fruits and vegetables on white, one class per folder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: train and test splits from Training/ and Test/, labels named "
        "after the training folders (sorted), file_name relative to the split folder.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put either the extracted Fruits-360 folder (the one holding Training/ and Test/, or a
    folder above it) or the release archive (.zip, .tar.gz) in the manual dir
    (`--manual_dir` of `tfds build` and of fruits_tl's binaries). With an empty manual dir the
    builder downloads the public release archive.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Fruits-360 (Muresan & Oltean), 100x100 images of fruits on a white "
            "background.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(),  # Names come from the training folder.
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/Horea94/Fruit-Images-Dataset",
            license="MIT",
        )

    def _source_root(self, dl_manager) -> epath.Path:
        manual = None
        try:
            manual = epath.Path(dl_manager.manual_dir)
        except AssertionError:  # TFDS's answer when no manual dir was configured.
            manual = None
        if manual is not None and manual.exists():
            root = _find_extracted_root(manual)
            if root is not None:
                return root
            archives = sorted(
                p for p in manual.iterdir() if p.name.endswith((".zip", ".tar.gz", ".tgz", ".tar"))
            )
            if archives:
                root = _find_extracted_root(epath.Path(dl_manager.extract(archives[0])))
                if root is not None:
                    return root
        # Our downloader, not dl_manager's: it resumes, verifies a configured sha256, and fails
        # at once with one sentence when offline (TFDS's retries back off for minutes).
        archive = os.path.join(
            os.fspath(dl_manager.download_dir), os.path.basename(download.FRUITS360_ARCHIVE_URL)
        )
        download.download(
            download.FRUITS360_ARCHIVE_URL, archive, sha256=download.FRUITS360_ARCHIVE_SHA256
        )
        extracted = epath.Path(download.extract(archive, archive + ".extracted"))
        root = _find_extracted_root(extracted)
        if root is None:
            raise UserInputError(
                f"The Fruits-360 source in {manual or extracted} holds no Training/ folder."
            )
        return root

    def _split_generators(self, dl_manager):
        root = self._source_root(dl_manager)
        names = sorted(
            p.name
            for p in (root / "Training").iterdir()
            if p.is_dir() and not loading.is_skipped_folder(p.name)
        )
        self.info.features["label"].names = names
        splits = {"train": self._generate_examples(root / "Training", names)}
        if (root / "Test").is_dir():
            splits["test"] = self._generate_examples(root / "Test", names)
        return splits

    def _generate_examples(self, split_dir: epath.Path, names: list[str]):
        known = set(names)
        for class_dir in sorted(
            p for p in split_dir.iterdir() if p.is_dir() and not loading.is_skipped_folder(p.name)
        ):
            if class_dir.name not in known:
                raise UserInputError(
                    f"'{class_dir}' is not a training class; the test folder must share the "
                    "label map."
                )
            for path in _image_files(class_dir):
                key = f"{split_dir.name}/{path.relative_to(split_dir)}"
                contents = path.read_bytes()
                try:
                    image = _as_encoded_jpeg_or_pixels(contents)
                except (tf.errors.OpError, ValueError):
                    logging.warning("Skipping undecodable image %s", path)
                    continue
                yield (
                    key,
                    {
                        "image": image,
                        "label": class_dir.name,
                        "file_name": str(path.relative_to(split_dir)),
                    },
                )


def _image_files(directory: epath.Path) -> list[epath.Path]:
    """Image files below `directory`, recursively, sorted (iterdir: TFDS forbids `**` globs),
    operating-system metadata (`__MACOSX/`, `._*` files) left out as in `listing`."""
    found = []
    for child in sorted(directory.iterdir()):
        if child.is_dir():
            if child.name not in loading.METADATA_FOLDERS:
                found += _image_files(child)
        elif child.name.lower().endswith(loading.IMAGE_EXTENSIONS) and not loading.is_metadata(
            child.name
        ):
            found.append(child)
    return found


def _as_encoded_jpeg_or_pixels(contents: bytes):
    """The bytes as they are for a 100x100 RGB JPEG, else decoded, RGB and resized pixels."""
    tensor = tf.constant(contents)
    if (
        bool(tf.io.is_jpeg(tensor))
        and tuple(tf.io.extract_jpeg_shape(tensor).numpy()) == IMAGE_SHAPE
    ):
        return contents
    # Other images are stored as pixels at the dataset's size, by the one decode function (a
    # bilinear resize to the same size leaves pixels unchanged).
    return decode.decode_image(tensor, IMAGE_SHAPE[0]).numpy()


def prepare(*, tfds_data_dir: str, manual_dir: str = "") -> tfds.core.DatasetBuilder:
    """Returns the builder, preparing the dataset first (and saying so) if it is not ready."""
    builder = tfds.builder(NAME, data_dir=tfds_data_dir or None)
    if not builder.is_prepared():
        logging.info(
            "Preparing the %s TFDS dataset in %s (a one-time step)", NAME, builder.data_dir
        )
        config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
        try:
            builder.download_and_prepare(download_config=config)
        except OSError as error:
            raise UserInputError(
                f"Could not prepare the {NAME} TFDS dataset in '{tfds_data_dir}' from manual dir "
                f"'{manual_dir or '(none)'}': {error}. Put the extracted Fruits-360 folder or its "
                "archive in --manual_dir."
            ) from None
    return builder


def _load_tfds_split(
    builder, split: str, *, image_size: int, class_names: tuple[str, ...]
) -> loading.ImageFolder:
    skip = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    names, labels = [], []
    names_and_labels = tf.autograph.experimental.do_not_convert(
        lambda e: (e["file_name"], e["label"])
    )
    for example in skip.map(names_and_labels).batch(4096).as_numpy_iterator():
        names += [n.decode("utf-8") for n in example[0]]
        labels.append(example[1].astype(np.int32))
    labels_array = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
    # Undecoded records: the input pipeline shards and selects them before decoding
    # (loading.ImageFolder.make_elements decodes with the one decode function).
    records = skip.map(
        tf.autograph.experimental.do_not_convert(
            lambda example: (example["image"], tf.cast(example["label"], tf.int32))
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).apply(tf.data.experimental.assert_cardinality(len(names)))
    file_paths = tuple(f"tfds://{NAME}/{split}/{n}" for n in names)
    # What identifies the records: their files (paths, sizes, modification times, as for an
    # image folder) and the listing inside them, so records rebuilt in place never reuse
    # stale caches or features.
    record_files = sorted(
        os.path.join(builder.data_dir, n)
        for n in os.listdir(builder.data_dir)
        if n.startswith(f"{NAME}-{split}.")
    )
    fingerprint = loading.listing_fingerprint(
        record_files,
        image_size=image_size,
        extra=f"{NAME}:{builder.info.version}:{split}:"
        + hashlib.sha256("\n".join(names).encode() + labels_array.tobytes()).hexdigest(),
    )
    return loading.ImageFolder(
        class_names=class_names,
        file_paths=file_paths,
        labels=labels_array,
        name=split,
        image_size=image_size,
        fingerprint=fingerprint,
        records=records,
    )


def load_tfds_splits(
    *,
    tfds_data_dir: str,
    manual_dir: str = "",
    image_size: int = 128,
    validation_split: float = 0.0,
    seed: int = 42,
    exclude_files: frozenset[str] = frozenset(),
) -> loading.Splits:
    """Prepares (if needed) and loads the fruits360 TFDS dataset as `loading.Splits`.

    File paths are `tfds://fruits360/<split>/<class>/<file>`; an exclude list may name them so.
    """
    builder = prepare(tfds_data_dir=tfds_data_dir, manual_dir=manual_dir)
    class_names = tuple(builder.info.features["label"].names)
    train = _load_tfds_split(builder, "train", image_size=image_size, class_names=class_names)
    test = (
        _load_tfds_split(builder, "test", image_size=image_size, class_names=class_names)
        if "test" in builder.info.splits
        else None
    )
    if exclude_files:
        train = loading.select(
            train, np.asarray([p not in exclude_files for p in train.file_paths]), name="train"
        )
        if test is not None:
            test = loading.select(
                test, np.asarray([p not in exclude_files for p in test.file_paths]), name="test"
            )
    return loading.assemble_splits(
        train, test, class_names=class_names, validation_split=validation_split, seed=seed
    )
