"""fruits-tl-extract: run the frozen backbone once over each split and store the features.

Examples:
  fruits-tl-extract --data_dir=/data/fruits-360 --features_dir=features --alpha=0.25 \
      --weights=mobilenet_2_5_128_tf_no_top.h5
  fruits-tl-extract --data_dir=/data/fruits-360 --features_dir=features --model=runs/mobilenet

Each split is decoded once into the pixel store (<features_dir>/pixels) and its features are
extracted from there, 64 images per replica per batch unless --batch_size says otherwise.
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
    from fruits_tl.core.config import ModelConfig
    from fruits_tl.jobs import extract

    config = extract.ExtractConfig(
        data=common.data_config(),
        model=ModelConfig(alpha=FLAGS.alpha, weights=FLAGS.weights),
        features_dir=FLAGS.features_dir,
        trained_model=FLAGS.model or "",
        # Unset: the measured extraction batch (64 per replica), not training's 32.
        batch_size=FLAGS.batch_size if FLAGS["batch_size"].present else 0,
        feature_dtype=FLAGS.feature_dtype,
        verbose=FLAGS.extract_verbose == 1,
        chunk_images=FLAGS.extract_chunk_images,
        collective_timeout=FLAGS.collective_timeout,
    )
    result = extract.extract(config, strategy=common.strategy())
    for name, feature_set in result.feature_sets.items():
        rows, width = feature_set.features.shape
        print(f"{name}: {rows} x {width} {feature_set.features.dtype}")
    if result.reused:
        print(f"reused the features in {result.features_dir} (fingerprint match)")
    else:
        both = result.decode_seconds + result.seconds
        print(
            f"decode check {result.decode_seconds:.2f} s, extracted in {result.seconds:.2f} s, "
            f"{result.images_per_second:.1f} images/s; files to features "
            f"{result.images / max(both, 1e-9):.1f} images/s -> {result.features_dir}"
        )
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = (
    *common.DATA_FLAGS,
    "extract_chunk_images",
    "decode_parallelism",
    "alpha",
    "batch_size",
    "feature_dtype",
    "features_dir",
    "model",
    "strategy",
    "collective_timeout",
    "data_service_address",
    "data_service_timeout",
    "weights",
)
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
