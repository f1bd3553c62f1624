"""Models: frozen backbone, raw-pixel inputs, weights from files, Keras's cache, clear errors."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
from conftest import NO_TOP_WEIGHTS, TOP_WEIGHTS, needs_weights

from fruits_tl.core.config import UserInputError
from fruits_tl.data import decode
from fruits_tl.models import model, servable


def test_classifier_takes_uint8_and_freezes_backbone():
    classifier = model.build_classifier(3, image_size=32, alpha=0.25, weights="none", dropout=0.2)
    assert classifier.inputs[0].dtype == "uint8"
    backbone = classifier.get_layer(model.BACKBONE_NAME)
    assert not backbone.trainable
    # Only the Dense head trains: 1024 * 0.25 features -> 3 classes.
    assert model.count_parameters(classifier)["trainable"] == 256 * 3 + 3
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    probabilities = classifier.predict(pixels, verbose=0)
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_first_layer_is_a_built_in_rescaling_equal_to_the_package_preprocessing():
    classifier = model.build_classifier(3, image_size=32, alpha=0.25, weights="none")
    layer = classifier.get_layer("preprocessing")
    assert type(layer) is keras.layers.Rescaling  # Built in: loads anywhere without fruits_tl.
    every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    np.testing.assert_array_equal(
        layer(every_value).numpy(), decode.mobilenet_inputs(every_value).numpy()
    )
    extractor = model.build_feature_extractor(
        classifier.get_layer(model.BACKBONE_NAME), image_size=32
    )
    pixels = np.full((1, 32, 32, 3), 200, np.uint8)
    # The same pixels as uint8 or as float give the same features.
    np.testing.assert_allclose(
        extractor.predict(pixels, verbose=0),
        extractor.predict(pixels.astype(np.float32), verbose=0),
        rtol=1e-6,
    )


def test_saved_model_round_trip_keeps_predictions(tmp_path):
    classifier = model.build_classifier(3, image_size=32, alpha=0.25, weights="none")
    pixels = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    path = str(tmp_path / "m.keras")
    classifier.save(path)
    loaded = servable.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(pixels, verbose=0), classifier.predict(pixels, verbose=0), rtol=1e-5
    )


def test_weights_from_a_file_are_loaded(tmp_path):
    source = model.build_backbone(image_size=32, alpha=0.25, weights="none")
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    loaded = model.build_backbone(image_size=32, alpha=0.25, weights=path)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_or_mismatched_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match=r"weights file '.*nope.h5' does not exist"):
        model.build_backbone(image_size=32, alpha=0.25, weights=str(tmp_path / "nope.h5"))
    other = model.build_backbone(image_size=32, alpha=0.5, weights="none")
    path = str(tmp_path / "alpha_0_5.weights.h5")
    other.save_weights(path)
    with pytest.raises(UserInputError, match=r"does not fit MobileNet\(alpha=0.25"):
        model.build_backbone(image_size=32, alpha=0.25, weights=path)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5")
    with pytest.raises(UserInputError, match="garbage.h5"):
        model.build_backbone(image_size=32, alpha=0.25, weights=str(garbage))


def test_imagenet_weights_without_network_say_how_to_pass_a_file(tmp_path, monkeypatch):
    # A closed local port as proxy makes the download fail the same way on every machine.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(UserInputError) as raised:
        model.build_backbone(
            image_size=128, alpha=0.25, weights="imagenet", cache_dir=str(tmp_path)
        )
    message = str(raised.value)
    assert "mobilenet_2_5_128_tf_no_top.h5" in message and "--weights=/path/to/" in message
    # Nothing half-downloaded is left in the cache.
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_imagenet_weights_rejects_sizes_without_published_weights():
    with pytest.raises(UserInputError, match="--image_size=32"):
        model.build_backbone(image_size=32, alpha=0.25, weights="imagenet")
    with pytest.raises(UserInputError, match="--alpha=0.3"):
        model.build_backbone(image_size=128, alpha=0.3, weights="imagenet")


@needs_weights
def test_imagenet_path_uses_keras_cache_with_the_real_file(tmp_path):
    cache = tmp_path / "keras"
    (cache / "models").mkdir(parents=True)
    shutil.copy(NO_TOP_WEIGHTS, cache / "models" / "mobilenet_2_5_128_tf_no_top.h5")
    from_cache = model.build_backbone(
        image_size=128, alpha=0.25, weights="imagenet", cache_dir=str(cache)
    )
    from_file = model.build_backbone(image_size=128, alpha=0.25, weights=NO_TOP_WEIGHTS)
    for a, b in zip(from_cache.get_weights(), from_file.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    import h5py

    with h5py.File(NO_TOP_WEIGHTS, "r") as stored:
        kernel = stored["conv1"]["conv1"]["kernel:0"][()]
    np.testing.assert_array_equal(from_file.get_layer("conv1").get_weights()[0], kernel)


@needs_weights
def test_with_top_file_is_rejected_with_the_no_top_name():
    with pytest.raises(UserInputError, match="mobilenet_2_5_128_tf_no_top.h5"):
        model.build_backbone(image_size=128, alpha=0.25, weights=TOP_WEIGHTS)


def test_optimizers_by_name_take_the_rate_and_sgd_its_momentum():
    for name, kind in (
        ("rmsprop", keras.optimizers.RMSprop),
        ("adam", keras.optimizers.Adam),
        ("sgd", keras.optimizers.SGD),
    ):
        optimizer = model.build_optimizer(name, learning_rate=0.125)
        assert type(optimizer) is kind and float(optimizer.learning_rate) == 0.125
    assert model.build_optimizer("sgd", learning_rate=0.1).momentum == 0.9
    with pytest.raises(UserInputError, match="optimizer must be one of rmsprop, adam, sgd"):
        model.build_optimizer("adagrad", learning_rate=0.1)


@pytest.mark.parametrize(
    "layers, expected",
    [
        (0, ()),
        (1, ("conv_dw_13", "conv_pw_13")),
        (6, ("conv_dw_13", "conv_pw_13")),
        (7, ("conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13")),
    ],
)
def test_unfreeze_top_rounds_to_whole_blocks_and_keeps_batchnorm_frozen(layers, expected):
    classifier = model.build_classifier(3, image_size=32, alpha=0.25, weights="none")
    assert model.unfreeze_top(classifier, layers) == expected
    backbone = classifier.get_layer(model.BACKBONE_NAME)
    trainable = {w.path.split("/")[-2] for w in backbone.trainable_weights}
    assert trainable == set(expected)
    assert not any(
        layer.trainable
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_a_fine_tuning_step_moves_the_block_and_leaves_batchnorm_statistics_alone(
    informative_weights,
):
    classifier = model.build_classifier(
        3, image_size=32, alpha=0.25, weights=informative_weights, seed=1
    )
    model.unfreeze_top(classifier, 6)
    model.compile_classifier(classifier, optimizer="adam", learning_rate=1e-2, num_classes=3)
    backbone = classifier.get_layer(model.BACKBONE_NAME)
    before = {w.path: w.numpy().copy() for w in backbone.weights}
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    classifier.fit(images, np.arange(8) % 3, epochs=1, batch_size=8, verbose=0)
    after = {w.path: w.numpy() for w in backbone.weights}
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    # The block's kernels moved; no BatchNorm weight or statistic did (inference mode).
    assert changed == {w.path for w in backbone.trainable_weights}
    assert all("_bn" not in path for path in changed) and len(changed) == 2
