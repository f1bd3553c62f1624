"""fruits-tl-train: train the frozen-MobileNet classifier on an image folder.

Example:
  fruits-tl-train --data_dir=/data/fruits-360 --model_dir=runs/mobilenet

Defaults are the tutorial's recipe (MobileNet 1.0 at 128x128 on ImageNet weights, batch 32,
RMSprop 1e-4, 25 epochs), with softmax cross-entropy instead of sigmoid + binary cross-entropy.
"""

from __future__ import annotations

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_string(
    "model_dir",
    None,
    "Where model.keras, labels.txt, metrics.json, history.csv and flags.txt are written.",
)
flags.DEFINE_enum("optimizer", "rmsprop", ["rmsprop", "adam", "sgd"], "Optimizer for the head.")
flags.DEFINE_integer(
    "fine_tune_layers",
    0,
    "After the head, unfreeze about this many of the backbone's last layers, rounded up to whole "
    "MobileNet blocks (6 is the last block; 85 or more, the whole backbone: the measured best on "
    "Fruits-360) and train them with the head on the stored images, BatchNorm kept frozen; 0: no "
    "fine-tuning.",
)
flags.DEFINE_integer("fine_tune_epochs", 10, "Epochs of fine-tuning (with --fine_tune_layers).")
flags.DEFINE_float(
    "fine_tune_learning_rate",
    1e-5,
    "Learning rate of fine-tuning: low, so that the ImageNet features are adjusted, not erased "
    "(docs/training.md, Better accuracy).",
)
flags.DEFINE_enum(
    "fine_tune_optimizer", "adam", ["rmsprop", "adam", "sgd"], "Optimizer of fine-tuning."
)
flags.DEFINE_string(
    "augment",
    "",
    "Random transforms of the training images, e.g. flip_left_right,rotate=0.05: "
    "flip_left_right, flip_up_down (=probability, 0.5), rotate (=largest turn as a fraction of a "
    "full turn, 0.05), zoom (=largest scale change, 0.1), brightness (=largest shift as a "
    "fraction of 255, 0.1), contrast (=largest change, 0.1). Drawn from (seed, epoch, image). "
    "Off by default: on Fruits-360 flips and turns lowered test accuracy.",
)
flags.DEFINE_float("dropout", 0.0, "Dropout before the Dense head (0 for none).")
flags.DEFINE_integer(
    "shuffle_buffer",
    0,
    "0 shuffles the whole training split each epoch; k > 0 shuffles locally, as a k-image "
    "shuffle buffer does: no image moves more than k places from file order.",
)
flags.DEFINE_bool("save_h5", False, "Also write the legacy Keras .h5 model file.")
flags.DEFINE_enum(
    "mode",
    "auto",
    ["auto", "features", "images"],
    "features: run the frozen backbone once per image and train the head on the stored features; "
    "images: run the backbone on every image every epoch, reading the decoded pixels stored once "
    "in <features_dir>/pixels; auto: features, or images when --augment is given without "
    "fine-tuning. Fine-tuning (--fine_tune_layers) always runs on the stored pixels.",
)
flags.DEFINE_string(
    "tensorboard_dir", "", "Also log per-epoch images/s and metrics as TensorBoard scalars here."
)
flags.DEFINE_integer(
    "verbose",
    2,
    "0: no per-epoch lines; 1: a line of metrics per epoch and the extraction's progress; 2: a "
    "line of metrics per epoch.",
)

flags.DEFINE_integer(
    "extract_batch_size",
    0,
    "Global batch of the backbone pass over the stored images (features mode; 0: 64 per "
    "replica). fruits-tl-bench --recommend measures the fastest on this machine.",
)
flags.DEFINE_integer(
    "checkpoint_every_steps",
    0,
    "Also checkpoint after every this many training steps (0: once per epoch). A rerun of the same "
    "command resumes from the last checkpoint.",
)
flags.DEFINE_integer(
    "keep_checkpoints", 1, "How many of the most recent checkpoints to keep while training."
)
flags.DEFINE_bool(
    "keep_checkpoints_on_success",
    False,
    "Keep the checkpoints after the job finishes (removed otherwise).",
)
flags.DEFINE_bool(
    "restart",
    False,
    "Remove the checkpoints of an earlier run and start again from the first step.",
)
flags.DEFINE_bool(
    "deterministic",
    False,
    "Seeded, op-deterministic training: the same weights, metrics and batch_digests.csv on every "
    "run on the same machine and thread counts. Costs memory: under op determinism TensorFlow "
    "2.21 copies the stored pixels (images mode, fine-tuning) or features into the process "
    "instead of reading them through the page cache (BENCHMARKS.md 16).",
)
flags.DEFINE_string("checkpoint_dir", "", "Where checkpoints go (default <model_dir>/checkpoints).")

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-train"


def build_config():
    """Builds the TrainConfig from the flags (validation happens in the dataclasses)."""
    from fruits_tl.core import config

    common.require_data(["model_dir"])
    return config.train_config_from_flags(
        {name: FLAGS[name].value for name in config.train_flag_fields()}
    )


def _main(argv):
    common.reject_arguments(argv)
    config = build_config()
    from fruits_tl.jobs import train

    strategy = common.strategy()
    flags_text = common.resolved_flags_text([common.__name__, __name__])
    result = train.train(config, strategy=strategy, extra_text_files={"flags.txt": flags_text})
    metrics = result.metrics
    print(
        f"mode={metrics.mode} test_accuracy={metrics.test_accuracy:.4f} "
        f"test_top5_accuracy={metrics.test_top5_accuracy:.4f} "
        f"train_images_per_second={metrics.train_images_per_second:.1f} "
        f"model_dir={result.model_dir}"
    )
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = (
    *common.DATA_FLAGS,
    "alpha",
    "batch_size",
    "epochs",
    "feature_dtype",
    "features_dir",
    "learning_rate",
    "strategy",
    "collective_timeout",
    "data_service_address",
    "data_service_timeout",
    "weights",
    "extract_chunk_images",
    "decode_parallelism",
)
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
