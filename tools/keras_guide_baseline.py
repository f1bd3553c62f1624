"""The program a Keras user writes from the Keras guides, for the end-to-end comparison.

Usage: python tools/keras_guide_baseline.py --data_dir=DIR --weights=FILE.h5 [--epochs=25]
  [--alpha=0.25] [--image_size=128] [--batch_size=32] [--output_json=FILE]

What the guides teach ("Load and preprocess images", "Transfer learning & fine-tuning"):
`keras.utils.image_dataset_from_directory` on `DIR/Training` -> `cache()` -> `prefetch`;
a frozen `MobileNet(include_top=False)` called with `training=False` after
`keras.applications.mobilenet.preprocess_input`, global average pooling and a softmax Dense
head; Adam at its default rate (1e-3) and sparse categorical cross-entropy; `fit` for 25
epochs; then `evaluate` on `DIR/Test`. The weights file is the one `fruits-tl-train
--weights` takes, so both programs start from the same backbone.

It prints (and writes to --output_json) the wall time from the start of the process to the
test accuracy, with TensorFlow's import, and the test accuracy. BENCHMARKS.md 16 compares it
with `fruits-tl-train --learning_rate=1e-3` on the same folder.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_json", default="")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    size = (args.image_size, args.image_size)
    train = keras.utils.image_dataset_from_directory(
        os.path.join(args.data_dir, "Training"),
        image_size=size,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    test = keras.utils.image_dataset_from_directory(
        os.path.join(args.data_dir, "Test"), image_size=size, batch_size=args.batch_size
    )
    classes = len(train.class_names)
    train = train.cache().prefetch(tf.data.AUTOTUNE)
    test = test.cache().prefetch(tf.data.AUTOTUNE)
    base = keras.applications.MobileNet(
        input_shape=(*size, 3), alpha=args.alpha, include_top=False, weights=args.weights
    )
    base.trainable = False
    inputs = keras.Input((*size, 3))
    x = keras.applications.mobilenet.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    classifier = keras.Model(inputs, outputs)
    classifier.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    fit_started = time.perf_counter()
    classifier.fit(train, epochs=args.epochs, verbose=2)
    fit_seconds = time.perf_counter() - fit_started
    _, accuracy = classifier.evaluate(test, verbose=0)
    result = {
        "program": "keras_guide_baseline",
        "wall_seconds": time.perf_counter() - STARTED,
        "fit_seconds": fit_seconds,
        "epochs": args.epochs,
        "test_accuracy": float(accuracy),
    }
    print(json.dumps(result))
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as stream:
            json.dump(result, stream, indent=1)


if __name__ == "__main__":
    main()
