"""Where a job's images come from: an image folder or the prepared fruits360 TFDS records.

Both give the same `data.Splits` (uint8 elements, one label map in the training folder's
class order), so every job then takes the same cache, shuffle, batch and preprocess steps.
"""

from __future__ import annotations

from fruits_tl import data
from fruits_tl.config import DataConfig


def load_splits(config: DataConfig, *, check: data.Check | None = None) -> data.Splits:
    """Loads the splits a DataConfig describes, checking them first (see data.load_dataset).

    `check`: the decode check itself (`pixels.SourceStores.check`: the check's pass fills the
    pixel store, so a later job on the same, unchanged files decodes nothing); image folders
    only (TFDS records are checked when they are prepared).
    """
    exclude = data.load_exclude_list(config.exclude_list)
    if config.data_source == "tfds":
        from fruits_tl import tfds_fruits360  # Registers the builder; imports tensorflow_datasets.

        return tfds_fruits360.load_tfds_splits(
            tfds_data_dir=config.tfds_data_dir,
            manual_dir=config.manual_dir,
            image_size=config.image_size,
            validation_split=config.validation_split,
            seed=config.seed,
            exclude_files=exclude,
        )
    return data.load_dataset(
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
