"""File listing without TensorFlow: class folders, image files, and class-name checks.

The rules are Keras's own (`image_dataset_from_directory`), so the files fruits_tl checks are
the files Keras lists: class folders are the non-hidden sub-folders of a split folder; images
are found recursively below each class folder, in sorted order, with a case-insensitive
extension in IMAGE_EXTENSIONS. Every listing in the package goes through here.

One rule is added to Keras's: operating-system metadata is not data. `__MACOSX/` folders and
AppleDouble `._<name>` files (what a zip made on macOS carries), `$RECYCLE.BIN/` and
`System Volume Information/` are left out wherever they are (`is_metadata`), and
`list_image_files` logs one line saying what it left out. (`.Trashes`, `.DS_Store` and other
dot-names are hidden already; `desktop.ini` and `Thumbs.db` have no image extension.)
"""

from __future__ import annotations

import difflib
import os

from absl import logging

from fruits_tl.core.errors import UserInputError

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
            if is_metadata(os.path.relpath(path, directory)):
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


def collect_image_paths(inputs: list[str]) -> list[str]:
    """Expands folders (recursively, image extensions only) and keeps files as given."""
    paths = []
    for item in inputs:
        paths += walk_images(item) if os.path.isdir(item) else [item]
    return paths
