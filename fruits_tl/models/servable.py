"""A trained classifier in any of its formats, behind one predict interface.

`load_servable` takes what `--model` names: a model_dir (`model.keras` inside), a `.keras` or
`.h5` file, a SavedModel directory written by `fruits-tl-export`, or a `.tflite` file. Each
gives a `Servable` with the label map, the input size and `predict_pixels` (uint8 pixels in,
class probabilities out); a SavedModel also serves encoded image bytes (`predict_encoded`,
its `serve_jpeg` signature). So evaluation and prediction run the same input pipeline and write the
same reports whatever the format.

The label map is `labels.txt` beside the model file (for a model_dir or SavedModel directory:
inside it, then beside it).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import zipfile
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import message

from fruits_tl.core.config import UserInputError
from fruits_tl.data import decode
from fruits_tl.models import model  # noqa: F401  Registers MobileNetPreprocessing for load_model.

LABELS_FILE = "labels.txt"
SAVED_MODEL_FILE = "saved_model.pb"
SERVE_PIXELS = "serve_pixels"
SERVE_JPEG = "serve_jpeg"
FORMATS = ("keras", "saved_model", "tflite")


@dataclasses.dataclass(frozen=True, eq=False)
class Servable:
    """A loaded classifier.

    Attributes:
      path: What was loaded.
      format: One of FORMATS.
      class_names: Label index to class name.
      image_size: The model takes image_size x image_size x 3 uint8 pixels.
      predict_pixels: uint8 [N, S, S, 3] array -> float [N, classes] probabilities.
      predict_encoded: For a SavedModel: a list of encoded image files' bytes -> (top-k class
        names, top-k probabilities, top-k indices), decoded inside the model; else None.
      keras_model: The Keras model, for the Keras format (None otherwise).
    """

    path: str
    format: str
    class_names: tuple[str, ...]
    image_size: int
    predict_pixels: Callable[[np.ndarray], np.ndarray]
    predict_encoded: Callable[[list[bytes]], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = (
        None
    )
    keras_model: object | None = None


def read_labels(path: str, *, model_path: str) -> tuple[str, ...]:
    """Reads a labels.txt (one class per line), with a clear error when it is missing."""
    if not os.path.isfile(path):
        raise UserInputError(
            f"There is no labels.txt for the model '{model_path}' (looked for '{path}'); it holds "
            "the class names, one per line, as fruits-tl-train and fruits-tl-export write it."
        )
    with open(path, encoding="utf-8") as stream:
        return tuple(line.rstrip("\n") for line in stream if line.strip())


def _labels_near(directory: str, *, model_path: str) -> tuple[str, ...]:
    for candidate in (
        os.path.join(directory, LABELS_FILE),
        os.path.join(os.path.dirname(directory), LABELS_FILE),
    ):
        if os.path.isfile(candidate):
            return read_labels(candidate, model_path=model_path)
    return read_labels(os.path.join(directory, LABELS_FILE), model_path=model_path)


def _check_outputs(class_names: tuple[str, ...], outputs: int, path: str) -> None:
    if len(class_names) != outputs:
        raise UserInputError(
            f"The labels.txt of '{path}' names {len(class_names)} classes but the model has "
            f"{outputs} outputs."
        )


def _load_keras(path: str) -> Servable:
    classifier, class_names, image_size = load_trained(path)

    def predict_pixels(images: np.ndarray) -> np.ndarray:
        return np.asarray(classifier.predict_on_batch(images))

    return Servable(
        path=path,
        format="keras",
        class_names=class_names,
        image_size=image_size,
        predict_pixels=predict_pixels,
        keras_model=classifier,
    )


def _load_saved_model(path: str) -> Servable:
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError, message.DecodeError) as error:
        # Missing or unreadable files, or a damaged saved_model.pb.
        raise UserInputError(
            f"The SavedModel '{path}' cannot be loaded: {str(error).splitlines()[0][:300]}"
        ) from None
    missing = [name for name in (SERVE_PIXELS, SERVE_JPEG) if name not in loaded.signatures]
    if missing:
        raise UserInputError(
            f"The SavedModel '{path}' has no {' or '.join(missing)} signature: "
            "fruits-tl-evaluate and "
            "fruits-tl-predict take SavedModels written by fruits-tl-export."
        )
    pixels_fn, jpeg_fn = loaded.signatures[SERVE_PIXELS], loaded.signatures[SERVE_JPEG]
    image_size = int(pixels_fn.structured_input_signature[1]["images"].shape[1])
    class_names = _labels_near(path, model_path=path)
    _check_outputs(class_names, int(pixels_fn.structured_outputs["probabilities"].shape[-1]), path)

    def predict_pixels(images: np.ndarray) -> np.ndarray:
        return pixels_fn(images=tf.constant(images, tf.uint8))["probabilities"].numpy()

    def predict_encoded(contents: list[bytes]):
        outputs = jpeg_fn(images=tf.constant(contents, tf.string))
        return (
            outputs["classes"].numpy(),
            outputs["probabilities"].numpy(),
            outputs["indices"].numpy(),
        )

    return Servable(
        path=path,
        format="saved_model",
        class_names=class_names,
        image_size=image_size,
        predict_pixels=predict_pixels,
        predict_encoded=predict_encoded,
    )


class TFLiteRunner:
    """Runs a `.tflite` classifier on uint8 pixels, quantizing int8 inputs and outputs."""

    def __init__(self, path: str):
        try:
            with warnings.catch_warnings():
                # tf.lite.Interpreter warns that it moves to ai_edge_litert; it is TF 2.21's own
                # interpreter and needs no further dependency (BUILD_NOTES, "TFLite interpreter").
                warnings.simplefilter("ignore", UserWarning)
                self.interpreter = tf.lite.Interpreter(
                    model_path=path, num_threads=decode.available_cores()
                )
        except (ValueError, RuntimeError) as error:
            raise UserInputError(
                f"The TFLite file '{path}' cannot be loaded: {str(error).splitlines()[0][:300]}"
            ) from None
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape"][1])
        self.num_classes = int(self.output["shape"][-1])
        self._batch = int(self.input["shape"][0])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if len(images) != self._batch:
            self.interpreter.resize_tensor_input(
                self.input["index"], [len(images), *self.input["shape"][1:]]
            )
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = len(images)
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] in (np.int8, np.uint8) and scale:
            info = np.iinfo(self.input["dtype"])
            quantized = np.round(images.astype(np.float32) / scale + zero_point)
            feed = np.clip(quantized, info.min, info.max).astype(self.input["dtype"])
        else:
            feed = images.astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], feed)
        self.interpreter.invoke()
        result = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        if self.output["dtype"] in (np.int8, np.uint8) and scale:
            return (result.astype(np.float32) - zero_point) * scale
        return result.astype(np.float32)


def _load_tflite(path: str) -> Servable:
    runner = TFLiteRunner(path)
    class_names = read_labels(
        os.path.join(os.path.dirname(os.path.abspath(path)), LABELS_FILE), model_path=path
    )
    _check_outputs(class_names, runner.num_classes, path)
    return Servable(
        path=path,
        format="tflite",
        class_names=class_names,
        image_size=runner.image_size,
        predict_pixels=runner,
    )


def detect_format(path: str) -> str:
    """The format of what `path` names, or a clear error naming the path."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
            return "saved_model"
        if os.path.isfile(os.path.join(path, "model.keras")):
            return "keras"
        raise UserInputError(
            f"'{path}' is a folder with neither model.keras (a model_dir) nor saved_model.pb (a "
            "SavedModel): --model takes a model_dir, a .keras file, a SavedModel folder or a "
            ".tflite file."
        )
    if not os.path.isfile(path):
        raise UserInputError(f"There is no model at '{path}' (--model).")
    if path.endswith(".tflite"):
        return "tflite"
    if path.endswith((".keras", ".h5")):
        return "keras"
    raise UserInputError(
        f"'{path}' is not a model file fruits_tl knows (.keras, .h5, .tflite, or a SavedModel "
        "folder)."
    )


def load_servable(path: str) -> Servable:
    """Loads a classifier in any format (see the module docstring).

    Raises:
      UserInputError: Nothing loadable at `path`, or no labels.txt for it.
    """
    loaders = {"keras": _load_keras, "saved_model": _load_saved_model, "tflite": _load_tflite}
    return loaders[detect_format(path)](path)


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` model saved by this package, with a clear error if it cannot."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
        raise UserInputError(
            f"There is no model file at '{path}' (--model takes a model_dir or a .keras file)."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as error:
        # Not a .keras zip, a damaged one, or one whose config names unknown layers.
        raise UserInputError(
            f"The model file '{path}' cannot be loaded: {str(error).splitlines()[0][:300]}"
        ) from None


def load_trained(path: str) -> tuple[keras.Model, tuple[str, ...], int]:
    """Loads a trained classifier and its label map.

    Args:
      path: A model_dir written by fruits-tl-train, or a .keras file with labels.txt beside it.

    Returns:
      (model, class_names, image_size).
    """
    model_file = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    labels_file = os.path.join(os.path.dirname(os.path.abspath(model_file)), "labels.txt")
    classifier = load_model(model_file)
    if not os.path.isfile(labels_file):
        raise UserInputError(
            f"There is no labels.txt beside the model '{model_file}'; it holds the class names."
        )
    with open(labels_file, encoding="utf-8") as stream:
        class_names = tuple(line.rstrip("\n") for line in stream if line.strip())
    outputs = int(classifier.outputs[0].shape[-1])
    if len(class_names) != outputs:
        raise UserInputError(
            f"'{labels_file}' names {len(class_names)} classes but the model '{model_file}' "
            f"has {outputs} outputs."
        )
    return classifier, class_names, int(classifier.inputs[0].shape[1])


def backbone_alpha(backbone: keras.Model) -> float:
    """The width multiplier of a MobileNet v1 backbone (its first conv has 32 * alpha filters)."""
    first = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D))
    return first.filters / 32.0
