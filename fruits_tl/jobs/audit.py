"""Audit of a `Training/`, `Test/` image folder: what is wrong before hours are spent on it.

One parallel tf.data pass reads every file once and, with TensorFlow's own decoders, records
whether it decodes, its real format (magic bytes) against its extension, its channels (1 for
grayscale, 4 for alpha), a 4-component JPEG (CMYK or YCCK, from the JPEG header), its size and a
64-bit content fingerprint (for exact duplicates). The report then adds class counts, tiny or
empty classes, duplicates within a split and across train and test (leakage), and train/test
class mismatches with near-miss suggestions.
"""

from __future__ import annotations

import collections
import os

from fruits_tl.core.config import UserInputError
from fruits_tl.data import loading
from fruits_tl.data.inspection import EXTENSION_FORMATS, inspect_files


def _listed_splits(data_dir: str, train_subdir: str, test_subdir: str) -> dict:
    """Split name -> (its folder, its classes, class -> image files), for the splits present."""
    if not os.path.isdir(data_dir):
        raise UserInputError(f"The data directory '{data_dir}' does not exist (--data_dir).")
    splits = {}
    for split in (train_subdir, test_subdir):
        directory = os.path.join(data_dir, split)
        if os.path.isdir(directory):
            classes = loading.list_subfolders(directory)
            splits[split] = (directory, classes, loading.list_image_files(directory, classes))
    if train_subdir not in splits:
        raise UserInputError(
            f"There is no training folder '{os.path.join(data_dir, train_subdir)}' "
            "(--train_subdir)."
        )
    return splits


def audit_folder(
    data_dir: str,
    *,
    train_subdir: str = "Training",
    test_subdir: str = "Test",
    min_images_per_class: int = 10,
) -> dict:
    """Audits a data folder and returns the full report as a JSON-ready dict."""
    splits = _listed_splits(data_dir, train_subdir, test_subdir)
    entries = [
        (p, split, c)
        for split, (_, _, files_of) in splits.items()
        for c, paths in files_of.items()
        for p in paths
    ]
    facts, images_per_second = inspect_files(entries)

    counts = {
        split: {c: len(paths) for c, paths in files_of.items()}
        for split, (_, _, files_of) in splits.items()
    }
    good = [f for f in facts if f.decodable]
    within, across = _duplicates(good, list(splits), train_subdir, test_subdir)
    decodable_counts = collections.Counter((f.split, f.class_name) for f in good)
    small = [
        {"split": split, "class": c, "images": decodable_counts[(split, c)]}
        for split, (_, classes, _) in splits.items()
        for c in classes
        if decodable_counts[(split, c)] < min_images_per_class
    ]
    mismatch = _class_mismatch(splits, train_subdir, test_subdir)
    return {
        "data_dir": data_dir,
        "splits": {
            split: {
                "num_classes": len(classes),
                "num_images": sum(counts[split].values()),
                "images_per_class": counts[split],
            }
            for split, (_, classes, _) in splits.items()
        },
        **_file_findings(facts),
        "duplicates_within_split": within,
        "duplicates_across_train_test": across,
        "small_or_empty_classes": small,
        "min_images_per_class": min_images_per_class,
        "class_mismatch": mismatch,
        "decode_images_per_second": images_per_second,
    }


def _class_mismatch(splits: dict, train_subdir: str, test_subdir: str) -> dict:
    """Test classes with no training folder (and the closest training class), and training
    classes with no test folder."""
    mismatch = {"test_only": [], "train_only": []}
    if test_subdir in splits:
        train_classes, test_classes = splits[train_subdir][1], splits[test_subdir][1]
        for c in test_classes:
            if c not in train_classes:
                mismatch["test_only"].append(
                    {"class": c, "closest_training_class": loading.closest_name(c, train_classes)}
                )
        mismatch["train_only"] = [c for c in train_classes if c not in test_classes]
    return mismatch


def _file_findings(facts) -> dict:
    """Undecodable files, extensions that lie about the format, grayscale, alpha and CMYK."""
    good = [f for f in facts if f.decodable]
    mismatched = []
    for f in good:
        expected = EXTENSION_FORMATS.get(os.path.splitext(f.path)[1].lower())
        if expected and f.real_format != expected:
            mismatched.append(
                {
                    "path": f.path,
                    "extension": os.path.splitext(f.path)[1],
                    "actual_format": f.real_format,
                }
            )
    return {
        "undecodable": [{"path": f.path, "reason": f.reason} for f in facts if not f.decodable],
        "extension_mismatch": mismatched,
        "grayscale": [f.path for f in good if f.channels in (1, 2)],
        "alpha": [f.path for f in good if f.channels in (2, 4)],
        "cmyk": [f.path for f in good if f.jpeg_components == 4],
    }


def _duplicates(good, split_names, train_subdir: str, test_subdir: str):
    """Groups of identical decoded images within a split, and across train and test."""
    by_digest = collections.defaultdict(list)
    for f in good:
        by_digest[f.fingerprint].append(f)
    within = []
    across = []
    for group in by_digest.values():
        if len(group) < 2:
            continue
        for split in split_names:
            same = sorted(f.path for f in group if f.split == split)
            if len(same) > 1:
                within.append({"split": split, "paths": same})
        if test_subdir in split_names:
            train_paths = sorted(f.path for f in group if f.split == train_subdir)
            test_paths = sorted(f.path for f in group if f.split == test_subdir)
            if train_paths and test_paths:
                across.append({"train": train_paths, "test": test_paths})
    return within, across


def summary(report: dict) -> str:
    """The human summary: one line per finding, with counts and the first examples."""
    lines = []
    for split, info in report["splits"].items():
        lines.append(f"{split}: {info['num_classes']} classes, {info['num_images']} images")

    def listed(title, items, show=lambda x: str(x)):
        if items:
            examples = "; ".join(show(i) for i in items[:3]) + ("; ..." if len(items) > 3 else "")
            lines.append(f"{title}: {len(items)} ({examples})")
        else:
            lines.append(f"{title}: none")

    listed("undecodable files", report["undecodable"], lambda i: f"{i['path']}: {i['reason']}")
    listed(
        "content not matching extension",
        report["extension_mismatch"],
        lambda i: f"{i['path']} is {i['actual_format']}",
    )
    listed("grayscale images", report["grayscale"])
    listed("CMYK JPEGs", report["cmyk"])
    listed("images with alpha", report["alpha"])
    listed(
        "duplicate groups within a split",
        report["duplicates_within_split"],
        lambda i: ", ".join(i["paths"]),
    )
    listed(
        "train/test duplicates (leakage)",
        report["duplicates_across_train_test"],
        lambda i: f"{i['train'][0]} = {i['test'][0]}",
    )
    listed(
        f"classes under {report['min_images_per_class']} images",
        report["small_or_empty_classes"],
        lambda i: f"{i['split']}/{i['class']}: {i['images']}",
    )
    listed(
        "test classes not in training",
        report["class_mismatch"]["test_only"],
        lambda i: (
            f"'{i['class']}'"
            + (
                f" (closest: '{i['closest_training_class']}')"
                if i["closest_training_class"]
                else ""
            )
        ),
    )
    listed("training classes not in test", report["class_mismatch"]["train_only"])
    lines.append(f"decoded at {report['decode_images_per_second']:.0f} images/s")
    return "\n".join(lines)
