"""fruits-tl-extract: run the frozen backbone once over each split and store the features.

Examples:
  fruits-tl-extract --data_dir=/data/fruits-360 --features_dir=features --alpha=0.25 \
      --weights=mobilenet_2_5_128_tf_no_top.h5
  fruits-tl-extract --data_dir=/data/fruits-360 --features_dir=features --model=runs/mobilenet
"""

from __future__ import annotations

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_integer("extract_verbose", 1, "1 shows a progress bar per split, 0 does not.")

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-extract"


def _main(argv):
    common.reject_arguments(argv)
    common.require_data(["features_dir"])
    from fruits_tl import distribute, features, model, sources
    from fruits_tl.config import ModelConfig

    strategy = distribute.get_strategy(FLAGS.strategy)
    distribute.per_replica_batch_size(strategy, FLAGS.batch_size)
    if FLAGS.model:
        with strategy.scope():
            classifier, class_names, image_size = model.load_trained(FLAGS.model)
        backbone = classifier.get_layer(model.BACKBONE_NAME)
        alpha = model.backbone_alpha(backbone)
    else:
        ModelConfig(alpha=FLAGS.alpha, weights=FLAGS.weights)
        image_size, alpha = FLAGS.image_size, FLAGS.alpha
    splits = sources.load_splits(common.data_config(image_size=image_size))
    if FLAGS.model and splits.class_names != class_names:
        raise common.UserInputError(
            f"The training classes of '{FLAGS.data_dir}' differ from the labels.txt of "
            f"'{FLAGS.model}'."
        )
    if not FLAGS.model:
        with strategy.scope():
            backbone = model.build_backbone(
                image_size=image_size, alpha=alpha, weights=FLAGS.weights
            )
    named = {"train": splits.train, "test": splits.test}
    if splits.validation is not splits.test:
        named["validation"] = splits.validation
    extraction = features.extract_or_reuse(
        named,
        backbone=backbone,
        alpha=alpha,
        image_size=image_size,
        features_dir=FLAGS.features_dir,
        strategy=strategy,
        batch_size=FLAGS.batch_size,
        feature_dtype=FLAGS.feature_dtype,
        verbose=FLAGS.extract_verbose == 1,
    )
    for name, feature_set in extraction.feature_sets.items():
        print(
            f"{name}: {feature_set.features.shape[0]} x {feature_set.features.shape[1]} "
            f"{feature_set.features.dtype}"
        )
    if extraction.reused:
        print(f"reused the features in {extraction.features_dir} (fingerprint match)")
    else:
        print(
            f"extracted in {extraction.seconds:.1f} s, {extraction.images_per_second:.1f} "
            f"images/s -> {extraction.features_dir}"
        )
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = (
    *common.DATA_FLAGS,
    "alpha",
    "batch_size",
    "feature_dtype",
    "features_dir",
    "model",
    "strategy",
    "weights",
)
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
