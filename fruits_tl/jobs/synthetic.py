"""A synthetic Fruits-360-like dataset: the embedded default for the demo and the test fixtures.

Each class is a "fruit" with its own colour, shape (ellipse aspect and size), texture (plain,
stripes, spots or a shaded gradient) and stem; each image draws it at a random rotation,
position and scale, with colour jitter, on a white background, as 100x100 JPEGs in
`Training/<class>/` and `Test/<class>/`, like Fruits-360. Generation is deterministic in the
seed, and the folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import colorsys
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from fruits_tl.core import files
from fruits_tl.core.config import UserInputError

FRUIT_NAMES = (
    "Apple Red",
    "Banana",
    "Blueberry",
    "Cherry",
    "Kiwi",
    "Lemon",
    "Lime",
    "Mango",
    "Orange",
    "Peach",
    "Pear",
    "Plum",
    "Pomegranate",
    "Raspberry",
    "Strawberry",
    "Tomato",
    "Avocado",
    "Apricot",
    "Grape White",
    "Fig",
)
TEXTURES = ("plain", "stripes", "spots", "gradient")
COMPLETE_MARKER = ".fruits_tl_synthetic"


def _class_style(index: int, rng: np.random.Generator) -> dict:
    hue = (index * 0.618034) % 1.0
    return {
        "rgb": np.array(
            colorsys.hsv_to_rgb(hue, 0.55 + 0.4 * rng.random(), 0.55 + 0.4 * rng.random())
        )
        * 255,
        "aspect": 0.55 + 0.45 * ((index * 7) % 5) / 4,
        "size": 0.45 + 0.25 * ((index * 3) % 4) / 3,
        "texture": TEXTURES[index % len(TEXTURES)],
        "stem": index % 3 != 0,
    }


def render_fruit(style: dict, rng: np.random.Generator, *, image_size: int = 100) -> np.ndarray:
    """Draws one fruit of a class style: uint8 [image_size, image_size, 3] on white."""
    coords = (np.arange(image_size) + 0.5) / image_size * 2 - 1
    x, y = np.meshgrid(coords, coords)
    angle = rng.uniform(0, 2 * np.pi)
    center = rng.uniform(-0.2, 0.2, size=2)
    scale = style["size"] * rng.uniform(0.85, 1.15)
    dx, dy = x - center[0], y - center[1]
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / scale
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / (scale * style["aspect"])
    radius = np.sqrt(u**2 + v**2)
    body = radius <= 1.0
    colour = style["rgb"] * rng.uniform(0.85, 1.15, size=3)
    shade = 1.0 - 0.35 * np.clip(radius, 0, 1) ** 2
    texture = style["texture"]
    if texture == "stripes":
        shade = shade * (0.8 + 0.2 * (np.sin(u * 9 + rng.uniform(0, 6)) > 0))
    elif texture == "spots":
        shade = shade * (1.0 - 0.35 * (np.sin(u * 14) * np.sin(v * 14) > 0.6))
    elif texture == "gradient":
        shade = shade * (0.7 + 0.3 * (u + 1) / 2)
    image = np.full((image_size, image_size, 3), 255.0)
    image[body] = colour[None, :] * shade[body][:, None]
    if style["stem"]:
        stem = (np.abs(u) < 0.08) & (v < -0.9) & (v > -1.35)
        image[stem & ~body] = (70, 50, 20)
    image += rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _render_classes(
    folder, num_classes, train_per_class, test_per_class, image_size, seed, file_format
) -> None:
    """Renders and encodes every image of the dataset into `folder`."""
    rng = np.random.default_rng(seed)
    for index in range(num_classes):
        name = FRUIT_NAMES[index % len(FRUIT_NAMES)]
        if index >= len(FRUIT_NAMES):
            name = f"{name} {index // len(FRUIT_NAMES) + 1}"
        style = _class_style(index, rng)
        for split, count in (("Training", train_per_class), ("Test", test_per_class)):
            class_dir = os.path.join(folder, split, name)
            os.makedirs(class_dir, exist_ok=True)
            for number in range(count):
                pixels = render_fruit(style, rng, image_size=image_size)
                if file_format == "jpg":
                    encoded = tf.io.encode_jpeg(pixels, quality=92).numpy()
                else:
                    encoded = tf.io.encode_png(pixels).numpy()
                with open(os.path.join(class_dir, f"{number}_100.{file_format}"), "wb") as stream:
                    stream.write(encoded)


def _written_before(directory: str, marker: str, settings: str) -> bool:
    """Whether `directory` holds a complete dataset with these settings; refuses one with other
    settings, and a folder that holds anything else."""
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as stream:
            written = stream.read().strip()
        if written != settings:
            raise UserInputError(
                f"'{directory}' holds a synthetic dataset written with other settings ({written}), "
                f"not {settings}; choose another folder or remove it."
            )
        return True
    if os.path.exists(directory) and os.listdir(directory):
        raise UserInputError(
            f"'{directory}' exists and is not a synthetic dataset; choose an empty or new folder."
        )
    return False


def write_synthetic_dataset(
    directory: str,
    *,
    num_classes: int = 8,
    train_per_class: int = 40,
    test_per_class: int = 12,
    image_size: int = 100,
    seed: int = 0,
    file_format: str = "jpg",
) -> str:
    """Writes a synthetic `Training/` and `Test/` image folder and returns its path.

    If `directory` already holds a complete dataset written by this function with the same
    settings, it is reused; with other settings it is an error (its marker file records them).

    Args:
      directory: Where to write (created; must not hold anything else).
      num_classes: Number of classes (at most len(FRUIT_NAMES) * 5).
      train_per_class, test_per_class: Training and test images per class.
      image_size, seed, file_format: Images are image_size x image_size; the generation seed;
        "jpg" or "png".

    Returns `directory`.
    """
    if not 2 <= num_classes <= len(FRUIT_NAMES) * 5:
        raise UserInputError(
            f"num_classes must be in [2, {len(FRUIT_NAMES) * 5}], got {num_classes}."
        )
    if train_per_class < 1 or test_per_class < 0:
        raise UserInputError("train_per_class must be >= 1 and test_per_class >= 0.")
    if file_format not in ("jpg", "png"):
        raise UserInputError(f"file_format must be jpg or png, got {file_format!r}.")
    marker = os.path.join(directory, COMPLETE_MARKER)
    settings = (
        f"num_classes={num_classes} train_per_class={train_per_class} "
        f"test_per_class={test_per_class} image_size={image_size} seed={seed}"
        + ("" if file_format == "jpg" else f" file_format={file_format}")
    )
    if _written_before(directory, marker, settings):
        return directory
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        _render_classes(
            staging, num_classes, train_per_class, test_per_class, image_size, seed, file_format
        )
        files.write_text(os.path.join(staging, COMPLETE_MARKER), settings + "\n")
        if os.path.exists(directory):
            os.rmdir(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
