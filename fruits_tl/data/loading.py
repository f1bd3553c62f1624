"""Image folders: listing, checking and loading `<split>/<class>/<image>` trees, and a job's
splits from a folder or from the fruits360 TFDS records (`load_splits`).

This module owns the first step of the one input pipeline. File listing is kept apart from
decoding (as in tensorflow_datasets' image-folder reader): the listing rules (Keras's own:
`list_image_files`, `list_classes`, `is_metadata`, at the end of this module) and the
label-map checks touch only the file system; the decode check (`decode.find_bad_images`, or
the store's fill: `store.SourceStores.check`) decodes every file once, in parallel, before any
training starts; `load_split` takes the listing (file order, class order) from
`keras.utils.image_dataset_from_directory(batch_size=None)`, without ever iterating Keras's
dataset, and hands back an `ImageFolder`: the (path, label) listing, from which
`ImageFolder.make_elements` builds the decoded elements. Leaving files out happens on the
listing, before anything is decoded.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from fruits_tl.core import files
from fruits_tl.core.config import DataConfig, UserInputError
from fruits_tl.data import decode
from fruits_tl.data.decode import (
    DECODE_VERSION,
    BadImage,
    describe_bad_images,
    find_bad_images,
)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder:
    """One split: its (path, label) listing, and the decoded elements of any shard of it.

    Attributes:
      class_names: Class names in label-index order (always the training classes).
      file_paths: The image files, in the input pipeline's element order.
      labels: The int labels, element for element (a NumPy int32 array).
      name: The split's name ("train", "validation", "test"), used in logs and cache names.
      image_size: Images are image_size x image_size.
      fingerprint: Digest of the listing (paths, sizes, modification times), image size and
        decode version: equal fingerprints mean equal decoded elements.
      records: None for files on disk (each element reads its path); otherwise a dataset of
        `(encoded image bytes, int32 label)` element for element with `file_paths` (the TFDS
        input pipeline's undecoded records).
    """

    class_names: tuple[str, ...]
    file_paths: tuple[str, ...]
    labels: np.ndarray
    name: str
    image_size: int
    fingerprint: str
    records: tf.data.Dataset | None = None

    def __len__(self) -> int:
        return len(self.file_paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def make_elements(self, parallelism: int = 0) -> tf.data.Dataset:
        """The decoded elements, in file order: uint8 [S, S, 3] images and int32 labels.
        Decoding is `decode.decode_image`, in parallel, keeping element order; this is the
        decode pass that fills the pixel store (`store.fill_pass`). `parallelism`: its calls
        (0: `decode.decode_parallelism()`)."""
        if self.records is None:
            sources = tf.data.Dataset.from_tensor_slices(
                (tf.constant(list(self.file_paths), tf.string), tf.constant(self.labels, tf.int32))
            )
            read = tf.io.read_file
        else:
            sources = self.records
            read = tf.identity
        image_size = self.image_size

        # Not converted by AutoGraph (no Python control flow here): converting it slowed the
        # first input pipeline built in a process (BENCHMARKS.md 5c).
        @tf.autograph.experimental.do_not_convert
        def decode_element(source, label):
            return decode.decode_image(read(source), image_size), label

        elements = sources.map(
            decode_element,
            num_parallel_calls=decode.decode_parallelism(parallelism),
            deterministic=True,
        )
        return elements.apply(tf.data.experimental.assert_cardinality(len(self)))


@dataclasses.dataclass(frozen=True)
class Splits:
    """The splits of one data folder, sharing one label map.

    Attributes:
      train: The training split.
      validation: What is evaluated after every epoch.
      test: What the final metrics are computed on.
      class_names: The label map, from the training folder.
      bad_images: Files left out by `skip_bad_images`.
      warnings: Things worth telling the user that do not stop the job.
      validation_source: "test folder" or "validation_split".
      validation_is_test: Validation and test are one split (the test folder validates, or
        there is no test folder and the held-out part of training is both).
    """

    train: ImageFolder
    validation: ImageFolder
    test: ImageFolder
    class_names: tuple[str, ...]
    bad_images: tuple[BadImage, ...]
    warnings: tuple[str, ...]
    validation_source: str
    validation_is_test: bool

    def named(self) -> dict[str, ImageFolder]:
        """The distinct splits by name: train, test and, when it is its own split, validation."""
        named = {"train": self.train, "test": self.test}
        if not self.validation_is_test:
            named["validation"] = self.validation
        return named

    def log(self) -> None:
        """Logs the warnings, the files left out, and one line of counts."""
        for warning in self.warnings:
            logging.warning("%s", warning)
        if self.bad_images:
            logging.warning(
                "Leaving out %d undecodable file(s): %s",
                len(self.bad_images),
                ", ".join(b.path for b in self.bad_images),
            )
        logging.info(
            "Data: %d classes, %d training, %d validation (%s), %d test images",
            len(self.class_names),
            len(self.train),
            len(self.validation),
            self.validation_source,
            len(self.test),
        )


def listing_fingerprint(file_paths, *, image_size: int, extra: str = "") -> str:
    """Digest of a file listing (paths, sizes, modification times) and the decode settings."""
    return files.stat_digest(file_paths, header=f"{DECODE_VERSION}|{image_size}|{extra}")


def _refuse_bad_images(bad: tuple[BadImage, ...], *, skip: bool, then: str = "") -> None:
    """Refuses undecodable files in one paragraph naming them, unless `skip`
    (--skip_bad_images); `then`: what skipping them leaves behind."""
    _refuse_unreadable(bad)
    if bad and not skip:
        raise UserInputError(
            f"{len(bad)} file(s) cannot be decoded by TensorFlow: {describe_bad_images(bad)}. "
            f"Fix or remove them, or pass --skip_bad_images to leave them out{then}."
        )


def _refuse_unreadable(bad: tuple[BadImage, ...]) -> None:
    """Read errors are not bad images: one paragraph, whatever --skip_bad_images says.

    Raises:
      UserInputError: Naming every file that could not be read, and why.
    """
    unreadable = tuple(item for item in bad if item.unreadable)
    if unreadable:
        raise UserInputError(
            f"{len(unreadable)} file(s) cannot be read: {describe_bad_images(unreadable)}. These "
            "are read errors (permissions, the disk, files that went away), not bad images, so "
            "--skip_bad_images does not leave them out: fix the access and rerun."
        )


# The decode check of one source folder: ("train" or "test", its files) -> the failures.
Check = Callable[[str, list[str]], tuple[BadImage, ...]]


def validation_mask(labels: np.ndarray, validation_split: float, seed: int) -> np.ndarray:
    """A seeded, class-stratified boolean mask selecting about validation_split of each class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        (indices,) = np.nonzero(labels == label)
        count = int(round(validation_split * len(indices)))
        if len(indices) >= 2:
            count = min(max(count, 1), len(indices) - 1)
        else:
            count = 0
        mask[rng.permutation(indices)[:count]] = True
    return mask


def _keras_listing(directory: str, present: list[str], image_size: int) -> list[str]:
    """The files Keras's `image_dataset_from_directory` lists under `directory` for the class
    folders `present`, in its order, operating-system metadata left out."""
    keras_listing = keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        label_mode="int",
        class_names=present,
        color_mode="rgb",
        batch_size=None,
        image_size=(image_size, image_size),
        shuffle=False,
        interpolation="bilinear",
        verbose=False,
    )
    # Keras lists AppleDouble `._*` files and __MACOSX/ contents too; they are not data.
    return [p for p in keras_listing.file_paths if not is_metadata(relative(p, directory))]


def relative(path: str, directory: str) -> str:
    """`path` relative to `directory`: its prefix cut when it is `directory` joined with the
    rest, as every listed path is (`os.path.relpath` on every file was a third of the
    listing's time), else `os.path.relpath`."""
    prefix = os.path.join(directory, "")
    if path.startswith(prefix):
        return path[len(prefix) :].lstrip(os.sep)
    return os.path.relpath(path, directory)


def load_split(
    directory: str,
    *,
    class_names: list[str] | tuple[str, ...],
    image_size: int,
    name: str,
    exclude: frozenset[str] | set[str] = frozenset(),
    undecodable: frozenset[str] | set[str] = frozenset(),
    expected_files: list[str] | None = None,
) -> ImageFolder:
    """Lists one split folder as Keras does and leaves out files, without decoding any.

    Keras's `image_dataset_from_directory(batch_size=None, shuffle=False)` is the source of
    truth for the file order; its dataset is never iterated (that would decode every file),
    only its `file_paths` are read.

    Args:
      directory: The split folder.
      class_names: The label map (training classes). Classes without a folder here are
        allowed (they get no elements); labels always index into this list.
      image_size: Output images are image_size x image_size (bilinear, as Keras resizes).
      name: Split name for logs and cache files.
      exclude: Paths of files to leave out (decodable or not).
      undecodable: Paths of files that the decoder rejects (from find_bad_images).
      expected_files: The listing the caller checked; a mismatch with Keras's own listing is an
        error rather than silently unchecked files.

    Returns:
      The split as an ImageFolder.
    """
    present = [c for c in class_names if os.path.isdir(os.path.join(directory, c))]
    file_paths = _keras_listing(directory, present, image_size)
    if expected_files is not None and sorted(file_paths) != sorted(expected_files):
        raise RuntimeError(
            f"Keras listed different files in '{directory}' than fruits_tl checked; the listing "
            "rules in fruits_tl.data.loading no longer match this Keras version."
        )
    label_of = {c: list(class_names).index(c) for c in present}
    left_out = set(exclude) | set(undecodable)
    file_paths = [p for p in file_paths if p not in left_out]
    labels = np.asarray(
        [label_of[relative(p, directory).split(os.sep)[0]] for p in file_paths],
        dtype=np.int32,
    )
    return ImageFolder(
        class_names=tuple(class_names),
        file_paths=tuple(file_paths),
        labels=labels,
        name=name,
        image_size=image_size,
        fingerprint=listing_fingerprint(
            file_paths, image_size=image_size, extra=",".join(class_names)
        ),
    )


def select(folder: ImageFolder, mask: np.ndarray, *, name: str) -> ImageFolder:
    """Returns the elements of `folder` where `mask` is true, keeping file paths aligned.

    Selection works on the listing (or, for records, on the undecoded records), so nothing
    left out is ever decoded.
    """
    mask = np.asarray(mask, dtype=bool)
    records = folder.records
    if records is not None:
        keep = tf.constant(mask)
        records = (
            records.enumerate()
            .filter(tf.autograph.experimental.do_not_convert(lambda index, record: keep[index]))
            .map(tf.autograph.experimental.do_not_convert(lambda index, record: record))
        )
    return dataclasses.replace(
        folder,
        file_paths=tuple(p for p, k in zip(folder.file_paths, mask, strict=True) if k),
        labels=folder.labels[mask],
        name=name,
        fingerprint=hashlib.sha256(
            (folder.fingerprint + name + np.packbits(mask).tobytes().hex()).encode()
        ).hexdigest()[:16],
        records=records,
    )


def folder_of_files(
    file_paths: list[str] | tuple[str, ...], *, image_size: int, name: str
) -> ImageFolder:
    """An unlabelled split of arbitrary image files (prediction): labels are all 0."""
    return ImageFolder(
        class_names=(),
        file_paths=tuple(file_paths),
        labels=np.zeros(len(file_paths), dtype=np.int32),
        name=name,
        image_size=image_size,
        fingerprint=listing_fingerprint(file_paths, image_size=image_size),
    )


def load_labeled_folder(
    directory: str,
    *,
    class_names: list[str] | tuple[str, ...],
    image_size: int,
    name: str,
    skip_bad_images: bool = False,
    exclude_files: frozenset[str] | set[str] = frozenset(),
    check: Check | None = None,
) -> tuple[ImageFolder, tuple[BadImage, ...]]:
    """Checks and loads one `<class>/<images>` folder against a fixed label map (a model's).

    `check`: the decode check, called as `check(name, files)` (`store.SourceStores.check`
    decodes into the pixel store); without it, `find_bad_images` decodes into nothing.

    Raises:
      UserInputError: The folder is missing, its classes differ from `class_names` (both
        differences named, with the closest names), a class folder is empty, or files cannot
        be decoded (unless skip_bad_images).
    """
    found = list_classes(directory, role=name)
    check_same_classes(
        sorted(found),
        sorted(class_names),
        where=f"'{directory}'",
        expected_as="the model's labels.txt",
        noun="model class",
    )
    listed_files = list_image_files(directory, found)
    empty = [os.path.join(directory, c) for c, paths in listed_files.items() if not paths]
    if empty:
        raise UserInputError(f"{len(empty)} class folder(s) hold no images: {', '.join(empty)}.")
    all_files = [p for paths in listed_files.values() for p in paths]
    listed = {os.path.abspath(p) for p in exclude_files}
    user_excluded = {p for p in all_files if os.path.abspath(p) in listed} if listed else set()
    kept = [p for p in all_files if p not in user_excluded]
    all_bad = check(name, kept) if check is not None else find_bad_images(kept)
    bad = tuple(b for b in all_bad if b.path not in user_excluded)
    _refuse_bad_images(bad, skip=skip_bad_images)
    folder = load_split(
        directory,
        class_names=class_names,
        image_size=image_size,
        name=name,
        exclude=user_excluded,
        undecodable={b.path for b in all_bad},
        expected_files=all_files,
    )
    return folder, bad


def load_exclude_list(path: str) -> frozenset[str]:
    """Reads an exclude list (one path per line, as fruits-tl-audit writes it); '' is empty."""
    if not path:
        return frozenset()
    try:
        with open(path, encoding="utf-8") as stream:
            return frozenset(
                line.rstrip("\n") for line in stream if line.strip() and not line.startswith("#")
            )
    except OSError as error:
        raise UserInputError(
            f"The exclude list '{path}' cannot be read ({error.strerror}) (--exclude_list)."
        ) from None


def load_dataset(
    data_dir: str,
    *,
    train_subdir: str = "Training",
    test_subdir: str = "Test",
    validation_split: float = 0.0,
    image_size: int = 128,
    seed: int = 42,
    skip_bad_images: bool = False,
    exclude_files: frozenset[str] | set[str] = frozenset(),
    check: Check | None = None,
) -> Splits:
    """Checks a data folder and loads its splits under one label map.

    Every check runs before any decoding for training: missing folders, class folders that do
    not match, empty class folders, and (by decoding every file once, in parallel)
    undecodable files; a UserInputError names the folder, class or files at fault.

    Args:
      data_dir, train_subdir, test_subdir: The folders; the training folder's class folders
        are the label map. Without a test folder `validation_split` must be > 0.
      validation_split, seed: The fraction of training images per class held out for
        validation, and the seed of that split.
      image_size, skip_bad_images: Images are resized to image_size x image_size; leave out
        undecodable files (reported in Splits.bad_images).
      exclude_files: Files to leave out (e.g. fruits-tl-audit's exclude list); undecodable
        files listed here are not an error.
      check: The decode check itself, per source folder ("train", "test") and its files:
        returns the files that failed. Jobs pass `store.SourceStores.check`, whose one pass is
        the store's fill; without it, `decode.find_bad_images` decodes into nothing.
    """
    listed = _list_data_dir(data_dir, train_subdir, test_subdir, validation_split)
    user_excluded, undecodable, bad = _check_listed_files(
        listed,
        exclude_files,
        skip_bad_images=skip_bad_images,
        check=check,
    )
    common = dict(
        class_names=listed.class_names,
        image_size=image_size,
        exclude=user_excluded,
        undecodable=undecodable,
    )
    train, test = (
        load_split(directory, name=name, expected_files=listed.all_files(name), **common)
        if directory
        else None
        for name, directory in (("train", listed.train_dir), ("test", listed.test_dir))
    )
    return assemble_splits(
        train,
        test,
        class_names=listed.class_names,
        validation_split=validation_split,
        seed=seed,
        bad_images=bad,
        warnings=listed.warnings,
    )


def assemble_splits(
    train: ImageFolder,
    test: ImageFolder | None,
    *,
    class_names: tuple[str, ...],
    validation_split: float,
    seed: int,
    bad_images: tuple[BadImage, ...] = (),
    warnings: tuple[str, ...] = (),
) -> Splits:
    """The Splits of every source: with `validation_split` > 0, a seeded class-stratified part
    of `train` validates (`validation_mask`); otherwise the test split does."""
    if validation_split > 0:
        mask = validation_mask(train.labels, validation_split, seed)
        if not mask.any():
            raise UserInputError(
                f"--validation_split={validation_split} selects no images: every class needs at "
                "least 2 training images for a class-mixed validation set."
            )
        validation = select(train, mask, name="validation")
        train = select(train, ~mask, name="train")
        source = "validation_split"
    elif test is None:
        raise UserInputError(
            "There is no test split and --validation_split is 0: nothing to validate on. Set "
            "--validation_split=0.2 to hold out a seeded, class-mixed part of training."
        )
    else:
        validation, source = test, "test folder"
    return Splits(
        train=train,
        validation=validation,
        test=test if test is not None else validation,
        class_names=tuple(class_names),
        bad_images=tuple(bad_images),
        warnings=tuple(warnings),
        validation_source=source,
        validation_is_test=test is None or validation_split <= 0,
    )


@dataclasses.dataclass(frozen=True)
class _Listed:
    """A data folder's listing: classes, files per class of each split, label-map warnings."""

    train_dir: str
    test_dir: str  # "" without a test folder.
    class_names: tuple[str, ...]
    files: dict[str, dict[str, list[str]]]  # split -> class -> paths.
    warnings: tuple[str, ...]

    def all_files(self, split: str) -> list[str]:
        return [path for paths in self.files[split].values() for path in paths]


def _list_data_dir(
    data_dir: str, train_subdir: str, test_subdir: str, validation_split: float
) -> _Listed:
    """Lists a data folder (Keras's listing rules, below) and checks its shape: the
    folders exist, the label maps agree, no class folder is empty."""
    if not os.path.exists(data_dir):
        raise UserInputError(f"The data directory '{data_dir}' does not exist (--data_dir).")
    if not os.path.isdir(data_dir):
        raise UserInputError(
            f"The data directory '{data_dir}' is a file, not a folder (--data_dir)."
        )
    train_dir = os.path.join(data_dir, train_subdir)
    if not os.path.isdir(train_dir):
        found = list_subfolders(data_dir)
        shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "") if found else "none"
        raise UserInputError(
            f"The training folder '{train_dir}' does not exist: --data_dir must hold "
            f"'{train_subdir}/<class>/<images>' (set --train_subdir if it has another name). "
            f"Sub-folders of '{data_dir}': {shown}."
        )
    train_classes = list_classes(train_dir, role="training")
    test_dir = os.path.join(data_dir, test_subdir) if test_subdir else ""
    has_test = bool(test_dir) and os.path.isdir(test_dir)
    if not has_test and validation_split <= 0:
        raise UserInputError(
            f"There is no test folder '{test_dir or '(none)'}' and --validation_split is 0: "
            "nothing to validate on. Set --test_subdir to your test folder's name, or "
            "--validation_split=0.2 to hold out a seeded, class-mixed part of training."
        )
    warnings: list[str] = []
    test_classes: list[str] = []
    if has_test:
        test_classes = list_classes(test_dir, role="test")
        warnings += check_label_map(train_classes, test_classes, test_dir=test_dir)
    train_files = list_image_files(train_dir, train_classes)
    test_files = list_image_files(test_dir, test_classes) if has_test else {}
    empty = [os.path.join(train_dir, c) for c, p in train_files.items() if not p]
    empty += [os.path.join(test_dir, c) for c, p in test_files.items() if not p]
    if empty:
        raise UserInputError(
            f"{len(empty)} class folder(s) hold no images (extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}. Add images or remove "
            "the folders."
        )
    return _Listed(
        train_dir=train_dir,
        test_dir=test_dir if has_test else "",
        class_names=tuple(train_classes),
        files={"train": train_files, "test": test_files},
        warnings=tuple(warnings),
    )


def _check_listed_files(
    listed: _Listed, exclude_files, *, skip_bad_images: bool, check
) -> tuple[set[str], set[str], tuple[BadImage, ...]]:
    """Decodes every listed file once (`check`, else `decode.find_bad_images`) and
    applies the exclude list: (files the user excluded, undecodable files, bad files not
    excluded). User-excluded files are not decoded."""
    all_files = listed.all_files("train") + listed.all_files("test")
    excluded_paths = {os.path.abspath(p) for p in exclude_files}
    user_excluded = (
        {p for p in all_files if os.path.abspath(p) in excluded_paths} if excluded_paths else set()
    )
    if check is not None:
        found = tuple(
            item
            for source in ("train", "test")
            if listed.files[source]
            for item in check(
                source, [p for p in listed.all_files(source) if p not in user_excluded]
            )
        )
    else:
        found = find_bad_images([p for p in all_files if p not in user_excluded])
    undecodable = {item.path for item in found}
    bad = tuple(item for item in found if item.path not in user_excluded)
    _refuse_bad_images(
        bad,
        skip=skip_bad_images,
        then=" (the list is then written to skipped_images.txt in --model_dir)",
    )
    excluded = undecodable | user_excluded
    emptied = [
        os.path.join(directory, c)
        for directory, split in ((listed.train_dir, "train"), (listed.test_dir, "test"))
        for c, paths in listed.files[split].items()
        if paths and all(p in excluded for p in paths)
    ]
    if emptied:
        raise UserInputError(
            f"After leaving out undecodable and excluded files, {len(emptied)} class folder(s) "
            f"hold no images: {', '.join(emptied)}."
        )
    return user_excluded, undecodable, bad


def load_splits(config: DataConfig, *, check: Check | None = None) -> Splits:
    """Loads the splits a DataConfig describes, checking them first (see loading.load_dataset).

    `check`: the decode check itself (`store.SourceStores.check`: the check's pass fills the
    pixel store, so a later job on the same, unchanged files decodes nothing); image folders
    only (TFDS records are checked when they are prepared).
    """
    exclude = load_exclude_list(config.exclude_list)
    if config.data_source == "tfds":
        from fruits_tl.data import tfds_fruits360

        return tfds_fruits360.load_tfds_splits(
            tfds_data_dir=config.tfds_data_dir,
            manual_dir=config.manual_dir,
            image_size=config.image_size,
            validation_split=config.validation_split,
            seed=config.seed,
            exclude_files=exclude,
        )
    return load_dataset(
        config.data_dir,
        train_subdir=config.train_subdir,
        test_subdir=config.test_subdir,
        validation_split=config.validation_split,
        image_size=config.image_size,
        seed=config.seed,
        skip_bad_images=config.skip_bad_images,
        exclude_files=exclude,
        check=check,
    )


# File listing without TensorFlow: class folders, image files, and class-name checks.
#
# The rules are Keras's own (`image_dataset_from_directory`), so the files fruits_tl checks are
# the files Keras lists: class folders are the non-hidden sub-folders of a split folder; images
# are found recursively below each class folder, in sorted order, with a case-insensitive
# extension in IMAGE_EXTENSIONS. Every listing in the package goes through here.
#
# One rule is added to Keras's: operating-system metadata is not data. `__MACOSX/` folders and
# AppleDouble `._<name>` files (what a zip made on macOS carries), `$RECYCLE.BIN/` and
# `System Volume Information/` are left out wherever they are (`is_metadata`), and
# `list_image_files` logs one line saying what it left out. (`.Trashes`, `.DS_Store` and other
# dot-names are hidden already; `desktop.ini` and `Thumbs.db` have no image extension.)

# The extensions `keras.utils.image_dataset_from_directory` accepts (its ALLOWLIST_FORMATS).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


# Folders that operating systems and archivers write beside the data.
METADATA_FOLDERS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information"})


def is_metadata(path: str) -> bool:
    """Whether a path is operating-system metadata: inside a METADATA_FOLDERS folder, or an
    AppleDouble `._<name>` file."""
    parts = os.path.normpath(path).split(os.sep)
    return parts[-1].startswith("._") or any(part in METADATA_FOLDERS for part in parts)


def is_skipped_folder(name: str) -> bool:
    """Whether a folder name is no class: hidden (a leading dot, as Keras has it) or
    operating-system metadata (METADATA_FOLDERS)."""
    return name.startswith(".") or name in METADATA_FOLDERS


def list_subfolders(directory: str) -> list[str]:
    """The sorted names of the sub-folders of `directory` that `is_skipped_folder` keeps."""
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not is_skipped_folder(entry.name)
    )


def walk_images(directory: str, *, left_out: list[str] | None = None) -> list[str]:
    """Image files below `directory`, recursively, in Keras's order (folders sorted, then
    files), operating-system metadata left out (and appended to `left_out` if given)."""
    paths = []
    for root, _, names in sorted(os.walk(directory), key=lambda item: item[0]):
        for name in sorted(names):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(root, name)
            if is_metadata(relative(path, directory)):
                if left_out is not None:
                    left_out.append(path)
                continue
            paths.append(path)
    return paths


def list_classes(directory: str, *, role: str = "image") -> list[str]:
    """Returns the sorted non-hidden sub-folder names of `directory`.

    Args:
      directory: A split folder such as `<data_dir>/Training`.
      role: Word used in error messages ("training", "test").

    Raises:
      UserInputError: `directory` does not exist, is not a folder, or has no class folders.
    """
    if not os.path.exists(directory):
        raise UserInputError(f"The {role} folder '{directory}' does not exist.")
    if not os.path.isdir(directory):
        raise UserInputError(f"The {role} folder '{directory}' is a file, not a folder.")
    names = list_subfolders(directory)
    if not names:
        raise UserInputError(
            f"The {role} folder '{directory}' has no class folders: expected one sub-folder per "
            "class, each holding that class's images (hidden folders such as "
            ".ipynb_checkpoints are not classes)."
        )
    return names


def list_image_files(
    directory: str, class_names: list[str] | tuple[str, ...]
) -> dict[str, list[str]]:
    """Lists the image files of each class, with Keras's rules and in Keras's order.

    Args:
      directory: A split folder.
      class_names: The class folders to list.

    Returns:
      A dict from class name to the sorted list of its image paths (recursive).
    """
    left_out: list[str] = []
    files = {
        name: walk_images(os.path.join(directory, name), left_out=left_out) for name in class_names
    }
    folders = [
        name
        for name in os.listdir(directory)
        if name in METADATA_FOLDERS and os.path.isdir(os.path.join(directory, name))
    ]
    if left_out or folders:
        logging.info(
            "Left out operating-system metadata in '%s', not images: %s.",
            directory,
            ", ".join(
                [f"the folder {name}/" for name in sorted(folders)]
                + ([f"{len(left_out)} file(s) such as '{left_out[0]}'"] if left_out else [])
            ),
        )
    return files


def closest_name(name: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """Returns the candidate closest to `name` (case-insensitive), or None if none is close."""
    lowered = {candidate.lower(): candidate for candidate in candidates}
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[matches[0]] if matches else None


def check_label_map(
    train_classes: list[str], test_classes: list[str], *, test_dir: str
) -> list[str]:
    """Checks a test folder's classes against the training label map.

    Args:
      train_classes: Class names from the training folder (the label map).
      test_classes: Class folder names found in the test folder.
      test_dir: The test folder, for messages.

    Returns:
      Warnings (training classes absent from the test folder).

    Raises:
      UserInputError: The test folder has classes that training does not; the message names
        each one and the closest training class name.
    """
    extra = [name for name in test_classes if name not in set(train_classes)]
    if extra:
        raise UserInputError(
            f"The test folder '{test_dir}' has {len(extra)} class folder(s) that the training "
            "folder does not: "
            f"{describe_unknown_classes(extra, train_classes, known_as='training class')}. "
            "Train and test must share one label map: rename or remove these folders."
        )
    missing = [name for name in train_classes if name not in set(test_classes)]
    if missing:
        return [
            f"{len(missing)} training class(es) have no folder in '{test_dir}' and will not be "
            f"tested: {', '.join(missing)}."
        ]
    return []


def describe_unknown_classes(names, known: list[str] | tuple[str, ...], *, known_as: str) -> str:
    """`'a' (closest <known_as>: 'b'), 'c'`: each unknown name with its closest known one."""
    described = []
    for name in names:
        suggestion = closest_name(name, known)
        described.append(
            f"'{name}'" + (f" (closest {known_as}: '{suggestion}')" if suggestion else "")
        )
    return ", ".join(described)


def check_same_classes(found, expected, *, where: str, expected_as: str, noun: str) -> None:
    """Raises a clear error when the class names `found` in `where` differ from `expected`.

    Both differences are named: the found classes that `expected_as` lacks (each with the
    closest expected name, a `noun`) and the expected classes with no counterpart.

    Example: check_same_classes(folders, labels, where="'data/Test'",
    expected_as="the model's labels.txt", noun="model class").
    """
    extra = [c for c in found if c not in set(expected)]
    missing = [c for c in expected if c not in set(found)]
    if not (extra or missing):
        if tuple(found) != tuple(expected):
            raise UserInputError(f"The classes of {where} are in another order than {expected_as}.")
        return
    parts = []
    if extra:
        parts.append(
            f"not in {expected_as}: {describe_unknown_classes(extra, expected, known_as=noun)}"
        )
    if missing:
        parts.append(f"{noun}es with no counterpart here: {', '.join(repr(c) for c in missing)}")
    raise UserInputError(f"The classes of {where} do not match {expected_as}: {'; '.join(parts)}.")
