"""Keras models: the frozen MobileNet v1 backbone, the new head, and their assembly.

Every model here takes raw pixels (uint8, or float in [0, 255]) and applies MobileNet's
preprocessing in its first layer, so a saved model cannot be served with the wrong
preprocessing. That layer is Keras's own `Rescaling(1/127.5, offset=-1)` (the same float32
arithmetic as `decode.mobilenet_inputs`, x * (1/127.5) - 1), so a saved `model.keras`
loads with plain `keras.models.load_model`, without this package. Build models inside
`strategy.scope()`.
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np
import tensorflow as tf

from fruits_tl.core.config import IMAGENET_ALPHAS, IMAGENET_IMAGE_SIZES, OPTIMIZERS, UserInputError
from fruits_tl.data import decode

# Where Keras publishes MobileNet v1 weights (keras.applications.mobilenet.BASE_WEIGHT_PATH).
IMAGENET_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
# The head's layer names, for code that reaches into a classifier (features -> head, export).
HEAD_POOL = "head_pool"
HEAD_DROPOUT = "head_dropout"
HEAD_DENSE = "head_dense"
# Top-k accuracy's k: 5, or every class when there are fewer.
TOP_K = 5


def top_k(num_classes: int) -> int:
    """The k of the top-k accuracy for `num_classes` classes."""
    return min(TOP_K, int(num_classes))


BACKBONE_NAME = "backbone"


@keras.saving.register_keras_serializable(package="fruits_tl")
class MobileNetPreprocessing(keras.layers.Layer):
    """Applies `fruits_tl.data.decode.mobilenet_inputs`: raw pixels to float32 in [-1, 1].

    Only for loading models saved by fruits_tl 0.1.0, whose first layer this was (it stays
    registered so that `load_model` finds it). New models use `build_preprocessing()`, a
    built-in layer that needs no registration.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        return decode.mobilenet_inputs(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def build_preprocessing() -> keras.layers.Layer:
    """MobileNet's preprocessing as a built-in Keras layer: x / 127.5 - 1 on raw pixels."""
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, dtype="float32", name="preprocessing")


def imagenet_weights_file_name(*, alpha: float, image_size: int, include_top: bool = False) -> str:
    """Keras's file name for MobileNet v1 ImageNet weights, e.g. mobilenet_2_5_128_tf_no_top.h5."""
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[float(alpha)]
    return f"mobilenet_{alpha_text}_{image_size}_tf{'' if include_top else '_no_top'}.h5"


def fetch_imagenet_weights(
    *, alpha: float, image_size: int, include_top: bool = False, cache_dir: str | None = None
) -> str:
    """Returns a local path to Keras's MobileNet v1 ImageNet weights, downloading if needed.

    Uses Keras's own download and cache (`keras.utils.get_file`, `~/.keras/models` or
    `$KERAS_HOME/models`, or `cache_dir/models`): the same file `MobileNet(weights="imagenet")`
    would fetch.

    Raises:
      UserInputError: alpha or image_size has no published weights, or the download failed
        (offline); the message says how to pass a local file instead.
    """
    if float(alpha) not in IMAGENET_ALPHAS:
        raise UserInputError(
            f"ImageNet MobileNet weights exist only for alpha in {IMAGENET_ALPHAS}, got "
            f"--alpha={alpha}. Use one of those, or --weights=none or a weights file."
        )
    if image_size not in IMAGENET_IMAGE_SIZES:
        raise UserInputError(
            f"ImageNet MobileNet weights exist only for image sizes {IMAGENET_IMAGE_SIZES}, got "
            f"--image_size={image_size}. Use one of those, or --weights=none or a weights file."
        )
    file_name = imagenet_weights_file_name(
        alpha=alpha, image_size=image_size, include_top=include_top
    )
    try:
        return keras.utils.get_file(
            file_name, IMAGENET_WEIGHTS_URL + file_name, cache_subdir="models", cache_dir=cache_dir
        )
    except Exception as error:
        # keras.utils.get_file re-raises HTTP and URL errors as a bare Exception; anything
        # else is a bug and keeps its traceback.
        if type(error) is not Exception and not isinstance(error, OSError):
            raise
        raise UserInputError(
            f"Could not download the ImageNet weights '{file_name}' from "
            f"{IMAGENET_WEIGHTS_URL} ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            "This machine may be offline. Download the file elsewhere and pass "
            f"--weights=/path/to/{file_name}, place it in ~/.keras/models/, or use "
            "--weights=none for random (untrained) backbone weights."
        ) from None


def check_weights_file(weights: str) -> None:
    """Refuses a --weights path that is no file, before a job decodes anything.

    Raises:
      UserInputError: Naming the path.
    """
    if weights in ("imagenet", "none", "", None):
        return
    if not os.path.isfile(weights):
        raise UserInputError(
            f"The weights file '{weights}' does not exist (--weights takes 'imagenet', "
            "'none' or a path to a MobileNet .h5 weights file)."
        )


def build_backbone(
    *, image_size: int, alpha: float, weights: str = "imagenet", cache_dir: str | None = None
) -> keras.Model:
    """Builds MobileNet v1 without its top, frozen, on preprocessed float32 inputs.

    Args:
      image_size: Input is image_size x image_size x 3.
      alpha: Width multiplier.
      weights: "imagenet", "none", or a path to a weights file for this architecture.
      cache_dir: Keras cache folder for "imagenet" (default: Keras's own).

    Returns:
      The frozen backbone model, named "backbone", outputting the last feature map.

    Raises:
      UserInputError: The weights cannot be had or do not fit the architecture.
    """
    if weights == "imagenet":
        weights_path = fetch_imagenet_weights(
            alpha=alpha, image_size=image_size, cache_dir=cache_dir
        )
    elif weights in ("none", "", None):
        weights_path = None
    else:
        weights_path = weights
        check_weights_file(weights_path)
    backbone = keras.applications.MobileNet(
        input_shape=(image_size, image_size, 3),
        alpha=alpha,
        include_top=False,
        weights=None,
        name=BACKBONE_NAME,
    )
    if weights_path is not None:
        try:
            backbone.load_weights(weights_path)
        except (OSError, ValueError, KeyError) as error:  # Not HDF5 (h5py), or other shapes.
            detail = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            published = float(alpha) in IMAGENET_ALPHAS and image_size in IMAGENET_IMAGE_SIZES
            example = (
                imagenet_weights_file_name(alpha=alpha, image_size=image_size)
                if published
                else "mobilenet_<alpha>_<size>_tf_no_top.h5"
            )
            raise UserInputError(
                f"The weights file '{weights_path}' does not fit MobileNet(alpha={alpha}, "
                f"input_shape=({image_size}, {image_size}, 3), include_top=False): {detail}. "
                f"Pass the no-top weights file for this alpha, e.g. {example}."
            ) from None
    backbone.trainable = False
    return backbone


def build_feature_extractor(backbone: keras.Model, *, image_size: int) -> keras.Model:
    """Raw pixels -> preprocessing -> frozen backbone -> global average pool: the features."""
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="pixels")
    x = build_preprocessing()(inputs)
    x = backbone(x, training=False)
    outputs = keras.layers.GlobalAveragePooling2D(name=HEAD_POOL)(x)
    return keras.Model(inputs, outputs, name="feature_extractor")


def build_classifier(
    num_classes: int,
    *,
    image_size: int,
    alpha: float,
    weights: str = "imagenet",
    dropout: float = 0.0,
    cache_dir: str | None = None,
    seed: int | None = None,
) -> keras.Model:
    """Builds the tutorial's model, fixed: raw pixels in, class probabilities out.

    pixels (uint8) -> Rescaling(1/127.5, offset=-1) -> frozen MobileNet(training=False)
    -> GlobalAveragePooling2D -> [Dropout] -> Dense(num_classes, softmax).

    Softmax with sparse categorical cross-entropy, not the tutorial's sigmoid with binary
    cross-entropy (whose "accuracy" is per-output binary accuracy: about 99% for a model that
    predicts nothing, with 100 classes).

    Args:
      num_classes: Number of classes.
      image_size: Input images are image_size x image_size x 3.
      alpha: MobileNet width multiplier.
      weights: "imagenet", "none" or a weights file path.
      dropout: Dropout rate before the Dense layer (0 for none).
      cache_dir: Keras cache folder for "imagenet".
      seed: Seed of the head's initializer (build_head with the same seed starts equal).

    Returns:
      An uncompiled Keras model whose backbone is frozen.
    """
    if num_classes < 2:
        raise UserInputError(f"A classifier needs at least 2 classes, got {num_classes}.")
    backbone = build_backbone(
        image_size=image_size, alpha=alpha, weights=weights, cache_dir=cache_dir
    )
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="pixels")
    x = build_preprocessing()(inputs)
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=HEAD_POOL)(x)
    outputs = _head_layers(x, num_classes, dropout=dropout, seed=seed)
    return keras.Model(inputs, outputs, name="mobilenet_transfer")


def _head_layers(features, num_classes: int, *, dropout: float, seed: int | None):
    """[Dropout] -> Dense(softmax): the trainable head, shared by both model builders."""
    if dropout > 0:
        features = keras.layers.Dropout(dropout, seed=seed, name=HEAD_DROPOUT)(features)
    return keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name=HEAD_DENSE,
    )(features)


def build_head(
    feature_dim: int, num_classes: int, *, dropout: float = 0.0, seed: int | None = None
) -> keras.Model:
    """The classifier's head alone, on pooled backbone features: [Dropout] -> Dense(softmax).

    With the same seed it starts from the same weights as build_classifier's head, and its
    trained `head_dense` weights drop into that classifier unchanged (see assemble_classifier).
    """
    inputs = keras.Input((feature_dim,), name="features")
    return keras.Model(
        inputs, _head_layers(inputs, num_classes, dropout=dropout, seed=seed), name="head"
    )


def assemble_classifier(classifier: keras.Model, head: keras.Model) -> keras.Model:
    """Copies a trained head's Dense weights into the image classifier (same architecture)."""
    classifier.get_layer(HEAD_DENSE).set_weights(head.get_layer(HEAD_DENSE).get_weights())
    return classifier


def feature_dim(classifier: keras.Model) -> int:
    """Width of the pooled backbone features feeding the head."""
    return int(classifier.get_layer(HEAD_POOL).output.shape[-1])


def _block(layer_name: str) -> int:
    """The MobileNet v1 block a backbone layer belongs to: 0 for the stem (input, conv1),
    k for conv_pad_k, conv_dw_k* and conv_pw_k*."""
    match = re.match(r"conv_(?:pad|dw|pw)_(\d+)", layer_name)
    return int(match.group(1)) if match else 0


def unfreeze_top(classifier: keras.Model, layers: int) -> tuple[str, ...]:
    """Makes the backbone's last `layers` layers trainable, rounded up to whole MobileNet blocks
    (a block is conv_pad_k, conv_dw_k, its BatchNorm and ReLU, conv_pw_k, its BatchNorm and
    ReLU; 6 layers, 7 with the padding of a stride-2 block).

    BatchNorm layers stay frozen: their scale and offset are not trained, and the backbone is
    called with `training=False`, so their moving statistics are used and never updated (the
    Keras fine-tuning guide's advice: a small dataset's batch statistics would wreck them).

    Returns:
      The names of the layers whose weights are now trained (convolutions), first to last.
    """
    backbone = classifier.get_layer(BACKBONE_NAME)
    if layers <= 0:
        return ()
    candidates = [
        layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)
    ]
    first_block = _block(candidates[-min(layers, len(candidates))].name)
    backbone.trainable = True
    unfrozen = []
    for layer in candidates:
        chosen = _block(layer.name) >= first_block  # Block 0 (the stem): the whole backbone.
        layer.trainable = chosen and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return tuple(unfrozen)


def build_optimizer(
    name: str, *, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
) -> keras.optimizers.Optimizer:
    """Returns a Keras optimizer by name (rmsprop, adam, sgd), at a rate or on a schedule."""
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    raise UserInputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}.")


def compile_classifier(
    model: keras.Model,
    *,
    optimizer: str,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    num_classes: int,
) -> None:
    """Compiles with sparse categorical cross-entropy, accuracy and top-5 accuracy.

    Call inside the strategy's scope (the optimizer creates variables). `loop.fit`
    trains a head compiled here with the same loss and metrics, computed in its own loop.
    """
    model.compile(
        optimizer=build_optimizer(optimizer, learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=top_k(num_classes), name="top5_accuracy"),
        ],
    )


def count_parameters(model: keras.Model) -> dict[str, int]:
    """Trainable and frozen parameter counts."""
    trainable = sum(int(tf.size(w)) for w in model.trainable_weights)
    frozen = sum(int(tf.size(w)) for w in model.non_trainable_weights)
    return {"trainable": trainable, "frozen": frozen}


def variable_bytes(*objects) -> int:
    """Bytes of the variables of models and optimizers (what a checkpoint or a saved model
    of them writes, before the format's own overhead)."""
    total = 0
    for owner in objects:
        for variable in getattr(owner, "variables", ()):
            dtype = np.dtype(getattr(variable.dtype, "name", variable.dtype))
            total += int(np.prod(variable.shape, dtype=np.int64)) * dtype.itemsize
    return total
