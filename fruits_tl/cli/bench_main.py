"""fruits-tl-bench: input pipeline, model and training step throughput in one run, with a verdict.

Examples:
  fruits-tl-bench --data_dir=../shared/fruits360-sample --output_json=bench.json
  fruits-tl-bench --data_dir=... --variants=legacy,pipeline-memory-uint8 --assert_min_speedup=20
  fruits-tl-bench --data_dir=... --compare_modes --alpha=0.25 --weights=no_top.h5 \
      --output_dir=/tmp/modes
  fruits-tl-bench --data_dir=... --recommend --verify --alpha=0.25 --weights=no_top.h5 \
      --output_dir=/tmp/rec --target_images_per_second=20000
"""

from __future__ import annotations

import os

from absl import flags

from fruits_tl.cli import common
from fruits_tl.core.config import BENCH_VARIANTS

flags.DEFINE_list(
    "variants",
    ",".join(BENCH_VARIANTS),
    "Comma-separated variants to measure (see fruits_tl.jobs.benchmark); add tfds-memory-uint8 "
    "(and tfds-memory-float32, tfds-file-*) to compare the TFDS record pipeline, with "
    "--tfds_data_dir; service-1 and service-2 measure the decode pass through a tf.data "
    "service with 1 or 2 local workers.",
)
flags.DEFINE_integer(
    "repeats", 3, "Repeats of every variant, interleaved; medians are taken over them."
)
flags.DEFINE_integer(
    "model_steps", 20, "Batches per 'epoch' of the model variants (model-*, train, extract)."
)
flags.DEFINE_float(
    "assert_min_speedup",
    None,
    "Exit 1 when the steady pipeline-memory-uint8 rate is below this many times legacy.",
)
flags.DEFINE_bool(
    "compare_modes",
    False,
    "Instead of the variants: train end to end with --mode=images and --mode=features (the "
    "tutorial's recipe: --epochs, --batch_size, --learning_rate, rmsprop) into --output_dir, and "
    "report the speed ratio and the accuracy difference (--repeats times, alternating).",
)

flags.DEFINE_bool(
    "recommend",
    False,
    "Instead of the variants: measure each stage of fruits-tl-train on this machine (the decode "
    "pass into the store by --decode_parallelism, the store read, the backbone pass by "
    "--extract_batch_size, the head's and the classifier's epochs, checkpoints, start-up) on a "
    "sample of the training folder, and recommend the flags whose predicted run on the whole "
    "folder is shortest, for the model flags given (--alpha, --weights, --image_size, "
    "--batch_size, --epochs). Console and <output_dir>/recommendation.json.",
)
flags.DEFINE_bool(
    "verify",
    False,
    "With --recommend: run fruits-tl-train with the recommended flags (cold, in a temporary "
    "folder) and print predicted against measured, stage by stage.",
)
flags.DEFINE_float(
    "target_images_per_second",
    None,
    "With --recommend: the rate your accelerators will consume; say how many cores, or tf.data "
    "service workers and input hosts like this machine, feed it (cold pass and store reads).",
)
flags.DEFINE_integer(
    "recommend_images", 1024, "With --recommend: training images each stage is measured on."
)

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-bench"


def _recommend():
    from fruits_tl.core.config import ModelConfig
    from fruits_tl.jobs import recommend

    common.require(["output_dir"])
    if FLAGS.target_images_per_second is not None and FLAGS.target_images_per_second <= 0:
        raise common.UserInputError(
            f"--target_images_per_second must be > 0, got {FLAGS.target_images_per_second}."
        )
    if FLAGS.recommend_images < 2 * FLAGS.batch_size:
        raise common.UserInputError(
            f"--recommend_images must be at least twice --batch_size ({2 * FLAGS.batch_size}), "
            f"got {FLAGS.recommend_images}."
        )
    recommend.run(
        common.data_config(),
        ModelConfig(alpha=FLAGS.alpha, weights=FLAGS.weights),
        strategy=common.strategy(multi_worker=False),
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        sample=FLAGS.recommend_images,
        output_dir=FLAGS.output_dir,
        target=FLAGS.target_images_per_second,
        verify=FLAGS.verify,
        train_flags=(f"--batch_size={FLAGS.batch_size}", f"--learning_rate={FLAGS.learning_rate}"),
    )
    return 0


def _compare_modes():
    from fruits_tl.core import files
    from fruits_tl.core.config import ModelConfig, TrainConfig
    from fruits_tl.jobs import compare

    common.require(["output_dir"])
    config = TrainConfig(
        data=common.data_config(),
        model=ModelConfig(alpha=FLAGS.alpha, weights=FLAGS.weights),
        model_dir=FLAGS.output_dir,
        batch_size=FLAGS.batch_size,
        epochs=FLAGS.epochs,
        learning_rate=common.learning_rate(),
        verbose=0,
    )
    comparison = compare.compare_train_modes(
        config, strategy_name=FLAGS.strategy, repeats=FLAGS.repeats
    )
    images, features = comparison.images_metrics, comparison.features_metrics
    print(f"{'mode':9} {'end-to-end s':>12} {'extract s':>9} {'head/fit s':>10} {'test acc':>8}")
    for name, m in (("images", images), ("features", features)):
        print(
            f"{name:9} {m['total_seconds']:12.1f} {m['extract_seconds']:9.1f} "
            f"{m['head_train_seconds']:10.1f} {m['test_accuracy']:8.4f}"
        )
    print(f"speed-ups per repeat: {', '.join(f'{r:.1f}x' for r in comparison.speedups)}")
    print(
        f"features mode is {comparison.speedup:.1f}x faster end to end (median); test accuracy "
        f"difference {comparison.accuracy_difference * 100:+.2f} points"
    )
    if FLAGS.output_json:
        files.write_json(FLAGS.output_json, comparison.to_json())
    return 0


def _main(argv):
    common.reject_arguments(argv)
    common.require(["data_dir"])
    if FLAGS.compare_modes:
        return _compare_modes()
    if FLAGS.recommend:
        return _recommend()
    if FLAGS.verify or FLAGS.target_images_per_second is not None:
        raise common.UserInputError("--verify and --target_images_per_second go with --recommend.")
    from fruits_tl.core import files
    from fruits_tl.core.config import ModelConfig
    from fruits_tl.jobs import benchmark

    config = benchmark.BenchConfig(
        data=common.data_config(),
        model=ModelConfig(alpha=FLAGS.alpha, weights=common.value_or("weights", "none")),
        variants=tuple(FLAGS.variants),
        epochs=common.value_or("epochs", 5),
        repeats=FLAGS.repeats,
        batch_size=FLAGS.batch_size,
        model_steps=FLAGS.model_steps,
        cache_dir=FLAGS.output_dir and os.path.join(FLAGS.output_dir, "cache"),
    )
    from fruits_tl.core import stopping

    with stopping.GracefulStop() as stop:
        result = benchmark.run_benchmark(
            config, strategy=common.strategy(multi_worker=False), stop=stop
        )
    print(benchmark.format_table(result))
    if FLAGS.output_json:
        files.write_json(FLAGS.output_json, result.to_json())
    if FLAGS.assert_min_speedup is not None:
        ratio = result.ratios_to_legacy.get(benchmark.DEFAULT_TRAINING_FORM)
        if ratio is None:
            raise common.UserInputError(
                "--assert_min_speedup needs the legacy and "
                f"{benchmark.DEFAULT_TRAINING_FORM} variants."
            )
        if ratio.steady < FLAGS.assert_min_speedup:
            print(
                f"{PROGRAM}: steady pipeline is {ratio.steady:.1f}x legacy, below "
                f"--assert_min_speedup={FLAGS.assert_min_speedup}"
            )
            return 1
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = (
    *common.DATA_FLAGS,
    "alpha",
    "batch_size",
    "epochs",
    "learning_rate",
    "output_dir",
    "output_json",
    "strategy",
    "weights",
)
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
