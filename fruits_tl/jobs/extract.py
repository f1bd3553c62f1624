"""The extraction job (fruits-tl-extract): a backbone's features of every split, stored once.

The backbone is built from a ModelConfig or taken from a trained model (whose input size and
label map then apply); `backbone_features.extract_or_reuse` does the work (each split decoded
once into the pixel store, its features into the store beside it) and reuses features whose
fingerprint matches.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf

from fruits_tl.core import distribute, stopping
from fruits_tl.core.config import FEATURE_DTYPES, DataConfig, ModelConfig, require
from fruits_tl.data import loading, store
from fruits_tl.models import backbone_features, model, servable


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """One feature extraction (fruits-tl-extract).

    Attributes:
      data: The images.
      model: The backbone to build (ignored with trained_model).
      features_dir: Where the features go (`backbone_features`: the store's rows, labels.txt,
        and the decoded pixels under pixels/).
      trained_model: A trained model_dir or .keras file whose backbone (and input size and
        label map) to use instead of `model`; "" to build `model`.
      batch_size: Global batch size of the extraction; 0: 64 per replica (the measured best).
      feature_dtype: "float32" or "float16".
      verbose: Show progress.
      chunk_images: Images per stored chunk (a killed extraction's rerun reuses whole chunks).
      collective_timeout: Under several workers, seconds a barrier waits for the others.
    """

    data: DataConfig
    model: ModelConfig
    features_dir: str
    trained_model: str = ""
    batch_size: int = 0
    feature_dtype: str = "float32"
    verbose: bool = True
    chunk_images: int = 2048
    collective_timeout: float = 300.0

    def __post_init__(self) -> None:
        require(bool(self.features_dir), "features_dir is required: where the features go.")
        require(
            self.chunk_images >= 1, f"extract_chunk_images must be >= 1, got {self.chunk_images}."
        )
        require(
            0 <= self.batch_size <= 65536,
            f"batch_size must be in [1, 65536] (or 0: the default), got {self.batch_size}.",
        )
        require(
            self.feature_dtype in FEATURE_DTYPES,
            f"feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, "
            f"got {self.feature_dtype!r}.",
        )


# fruits-tl-evaluate --split names of the TFDS source's splits (case-insensitive).


def _backbone(config: ExtractConfig, strategy: tf.distribute.Strategy):
    """(backbone, alpha, the trained model's class names or None, the data config): a trained
    model's backbone (its image size wins), or a new one from the model flags."""
    data_config = config.data
    if config.trained_model:
        with strategy.scope():
            classifier, class_names, image_size = servable.load_trained(config.trained_model)
        backbone = classifier.get_layer(model.BACKBONE_NAME)
        alpha = servable.backbone_alpha(backbone)
        data_config = dataclasses.replace(data_config, image_size=image_size)
        training = os.path.join(data_config.data_dir, data_config.train_subdir)
        if data_config.data_source == "folder" and os.path.isdir(training):
            # Refused before anything is decoded: the classes come from the listing alone.
            _check_classes(loading.list_classes(training, role="training"), class_names, config)
    else:
        class_names, alpha = None, config.model.alpha
        # Seeded as training seeds it: with --weights=none the backbone is the same in every run,
        # so a rerun's fingerprint matches and stored chunks are reused.
        keras.utils.set_random_seed(data_config.seed)
        with strategy.scope():
            backbone = model.build_backbone(
                image_size=data_config.image_size, alpha=alpha, weights=config.model.weights
            )
    return backbone, alpha, class_names, data_config


def extract(
    config: ExtractConfig, *, strategy: tf.distribute.Strategy
) -> backbone_features.Extraction:
    """Extracts (or reuses) the features of every split of `config.data`.

    Raises:
      UserInputError: Bad data, weights or model; the training classes differ from a trained
        model's labels.txt.
    """
    if config.batch_size:
        distribute.per_replica_batch_size(strategy, config.batch_size)
    backbone, alpha, class_names, data_config = _backbone(config, strategy)
    hint = "Start every worker again: chunks already written are reused."
    with stopping.GracefulStop() as stop, distribute.clear_worker_errors(strategy, hint=hint):
        # The decode check's one pass fills the pixel store the extraction reads.
        stores = store.SourceStores.for_job(
            data_config,
            directory=os.path.join(config.features_dir, backbone_features.PIXELS_DIR),
            chunk_images=config.chunk_images,
            role=distribute.worker_role(strategy),
            wait_for_workers=lambda: distribute.barrier(
                strategy, timeout=config.collective_timeout
            ),
            stop=stop,
        )
        splits, decode_seconds = stores.load_splits(data_config)
        if class_names is not None:
            _check_classes(splits.class_names, class_names, config)
        named = splits.named()
        extraction = backbone_features.extract_or_reuse(
            named,
            # TFDS splits, which the check did not store, are decoded by the extraction.
            images={n: stores.rows(f) for n, f in named.items() if stores.holds(f)},
            backbone=backbone,
            alpha=alpha,
            image_size=data_config.image_size,
            strategy=strategy,
            settings=backbone_features.ExtractionSettings(
                features_dir=config.features_dir,
                batch_size=config.batch_size,
                feature_dtype=config.feature_dtype,
                verbose=config.verbose,
                chunk_images=config.chunk_images,
                barrier_timeout=config.collective_timeout,
                data_service_address=data_config.data_service_address,
                data_service_timeout=data_config.data_service_timeout,
            ),
            stop=stop,
        )
        return dataclasses.replace(extraction, decode_seconds=decode_seconds)


def _check_classes(found, class_names, config: ExtractConfig) -> None:
    loading.check_same_classes(
        list(found),
        class_names,
        where="the training folder (--data_dir)",
        expected_as=f"the labels.txt of '{config.trained_model}'",
        noun="model class",
    )
