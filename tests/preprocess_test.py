"""The one preprocessing function: its range, and against Keras's own."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from fruits_tl.data import decode

PIXELS = np.array([[[0, 127, 255], [1, 128, 254]]], dtype=np.uint8)


def test_mobilenet_inputs_maps_0_255_to_minus1_1_eagerly():
    out = decode.mobilenet_inputs(tf.constant(PIXELS)).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, PIXELS.astype(np.float32) / 127.5 - 1, atol=1e-6)
    assert out.min() == -1.0 and out.max() == 1.0


def test_mobilenet_inputs_matches_keras_preprocess_input():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3)).astype(np.float32)
    expected = keras.applications.mobilenet.preprocess_input(pixels.copy())
    np.testing.assert_allclose(decode.mobilenet_inputs(pixels).numpy(), expected, atol=1e-6)


def test_mobilenet_inputs_gives_the_same_for_float_pixels():
    eager = decode.mobilenet_inputs(tf.constant(PIXELS)).numpy()
    np.testing.assert_array_equal(decode.mobilenet_inputs(PIXELS.astype(np.float32)).numpy(), eager)
