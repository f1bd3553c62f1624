"""Test set-up: the CPU alone, split into two logical devices before TensorFlow starts, and
tiny real image folders."""

from __future__ import annotations

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests' strategies run on CPU devices, on a GPU host too: "mirrored" means the two logical
# CPUs below, and the binaries the tests start (they inherit this environment) see no GPU.
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"

import pytest  # noqa: E402
from absl import flags  # noqa: E402
from absl.testing import flagsaver  # noqa: E402


def pytest_configure(config):
    """Splits the CPU into two logical devices before any op runs, so MirroredStrategy gets two
    replicas on a CPU-only machine. Not in pytest-xdist's controller, which runs no test (it
    would pay TensorFlow's import, about 5 s, before starting its workers)."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


def pytest_collection_modifyitems(config, items):
    """The modules of the slow tier first, whole (their module fixtures are built once): under
    several workers the long tests start early and the short ones fill the cores at the end."""

    def rank(module) -> int:
        marks = [item.get_closest_marker("slow") is not None for item in by_module[module]]
        return 0 if all(marks) else 1 if any(marks) else 2

    by_module: dict = {}
    for item in items:
        by_module.setdefault(item.module, []).append(item)
    items[:] = [item for module in sorted(by_module, key=rank) for item in by_module[module]]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
FRUITS_SAMPLE = os.path.join(SHARED, "fruits360-sample")
NO_TOP_WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_2_5_128_tf_no_top.h5")
TOP_WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_2_5_128_tf.h5")

needs_fruits_sample = pytest.mark.skipif(
    not os.path.isdir(os.path.join(FRUITS_SAMPLE, "Training")),
    reason="../shared/fruits360-sample is absent",
)
needs_weights = pytest.mark.skipif(
    not os.path.isfile(NO_TOP_WEIGHTS), reason="../shared/weights is absent"
)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """3 classes, 6 training and 3 test real JPEGs each (100x100)."""
    from fruits_tl.jobs import synthetic

    path = str(tmp_path_factory.mktemp("tiny") / "fruits")
    return synthetic.write_synthetic_dataset(
        path, num_classes=3, train_per_class=6, test_per_class=3, seed=1
    )


@pytest.fixture
def data_dir(tiny_dataset, tmp_path) -> str:
    """A private copy of the tiny dataset that a test may damage."""
    path = str(tmp_path / "data")
    shutil.copytree(tiny_dataset, path)
    return path


def write_unusual_images(folder: str) -> int:
    """Writes valid images that differ from plain RGB JPEGs into `folder`; returns how many.

    Grayscale, CMYK and progressive JPEGs, a PNG with alpha, an upper-case extension, a BMP and
    a still GIF: Keras's loader reads each as RGB, and so must the input pipeline.
    """
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(0).random((50, 60, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).convert("L").save(os.path.join(folder, "gray.jpg"))
    Image.fromarray(pixels).convert("CMYK").save(os.path.join(folder, "cmyk.jpg"))
    Image.fromarray(pixels).save(os.path.join(folder, "progressive.jpg"), progressive=True)
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(os.path.join(folder, "alpha.png"))
    Image.fromarray(pixels).save(os.path.join(folder, "UPPER.JPG"))
    Image.fromarray(pixels).save(os.path.join(folder, "bitmap.bmp"))
    Image.fromarray(pixels).save(os.path.join(folder, "still.gif"))
    return 7


class FakeClock:
    """A clock that moves only when a test moves it (`clock.now += seconds`)."""

    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


def run_main(module, argv: list[str]) -> int:
    """Runs a binary's main with flags, as its console script would; returns the exit code."""
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        try:
            remaining = flags.FLAGS([module.PROGRAM, *argv])
        except flags.Error as error:
            print(f"{module.PROGRAM}: error: {error}", file=sys.stderr)
            return 1
        try:
            result = module.main(remaining)
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1
        return result or 0


@pytest.fixture(scope="session")
def informative_weights(tmp_path_factory) -> str:
    """A random MobileNet alpha-0.25 weights file whose features do not vanish.

    Keras's default (Glorot) initialisation shrinks activations through 27 conv layers to about
    1e-18, so a `weights="none"` backbone gives constant features and head tests could not tell
    one example order from another. He-normal kernels keep the features informative (nearest
    class mean separates the tiny synthetic classes) without ImageNet weights.
    """
    import keras
    import numpy as np

    from fruits_tl.models import model

    backbone = model.build_backbone(image_size=32, alpha=0.25, weights="none")
    rng = np.random.default_rng(0)
    for layer in backbone.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            weights = layer.get_weights()
            kernel = weights[0]
            fan_in = (
                kernel.shape[0]
                * kernel.shape[1]
                * (1 if isinstance(layer, keras.layers.DepthwiseConv2D) else kernel.shape[2])
            )
            weights[0] = rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype("float32")
            layer.set_weights(weights)
    path = str(tmp_path_factory.mktemp("weights") / "informative_alpha_0_25.weights.h5")
    backbone.save_weights(path)
    return path


def store_listing(folder) -> list[str]:
    """A folder's names, the store's content digests left out (`train.features.<digest>.rows`
    -> `train.features.rows`), sorted."""
    import re

    return sorted(re.sub(r"\.[0-9a-f]{12}\.", ".", name) for name in os.listdir(folder))


def feature_files(*splits: str, pixels: bool = True) -> list[str]:
    """What a complete extraction leaves in its features folder (`store_listing`)."""
    names = ["labels.txt", *(["pixels"] if pixels else [])]
    for split in splits:
        names += [f"{split}.{kind}" for kind in ("features.json", "features.rows", "files.txt")]
        names += [f"{split}.labels.json", f"{split}.labels.rows"]
    return sorted(names)


def stored_features(folder, split: str):
    """A split's stored features and labels (`backbone_features.load_split`)."""
    from fruits_tl.models import backbone_features

    return backbone_features.load_split(str(folder), split)


def anonymous_bytes() -> int:
    """This process's own resident memory (RssAnon): what a copy of the store would grow."""
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def run_json_script(script: str, *args: str):
    """Runs `script` in a fresh interpreter (this folder importable: `from conftest import`)
    and returns what its last line of output holds, as JSON."""
    import json
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.abspath(__file__)),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
