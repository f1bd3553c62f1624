"""fruits-tl-evaluate: metrics, per-class figures, confusion matrix and top mistakes.

Example:
  fruits-tl-evaluate --model=runs/mobilenet --data_dir=/data/fruits-360 --split=Test \
      --assert_accuracy_at_least=0.9
"""

from __future__ import annotations

import os

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_string(
    "split",
    "Test",
    "Folder inside --data_dir to evaluate (its class folders must match labels.txt).",
)
flags.DEFINE_integer(
    "num_mistakes", 20, "How many of the most confident mistakes to list in mistakes.csv."
)
flags.DEFINE_float(
    "assert_accuracy_at_least",
    None,
    "Exit with code 1 when accuracy is below this (a gate for CI).",
)

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-evaluate"


def _main(argv):
    common.reject_arguments(argv)
    common.require_data(["model"])
    if FLAGS.num_mistakes < 0:
        raise common.UserInputError(f"num_mistakes must be >= 0, got {FLAGS.num_mistakes}.")
    from fruits_tl import data, distribute, evaluate

    strategy = distribute.get_strategy(FLAGS.strategy)
    if FLAGS.data_source == "tfds":
        from fruits_tl import sources

        split = {
            "test": "test",
            "training": "train",
            "train": "train",
            "validation": "validation",
        }.get(FLAGS.split.lower())
        if split is None:
            raise common.UserInputError(
                f"--split={FLAGS.split} is not a split of the TFDS source (Test, Training, "
                "validation)."
            )

        def folder_for(class_names, image_size):
            splits = sources.load_splits(common.data_config(image_size=image_size))
            if splits.class_names != tuple(class_names):
                raise common.UserInputError(
                    "The fruits360 TFDS classes differ from the model's labels.txt."
                )
            return getattr(splits, split)

        report = evaluate.evaluate_split(
            FLAGS.model,
            folder_for,
            strategy=strategy,
            batch_size=FLAGS.batch_size,
            num_mistakes=FLAGS.num_mistakes,
        )
    else:
        report = evaluate.evaluate_folder(
            FLAGS.model,
            os.path.join(FLAGS.data_dir, FLAGS.split),
            strategy=strategy,
            batch_size=FLAGS.batch_size,
            num_mistakes=FLAGS.num_mistakes,
            skip_bad_images=FLAGS.skip_bad_images,
            exclude_files=data.load_exclude_list(FLAGS.exclude_list),
        )
    model_dir = (
        FLAGS.model if os.path.isdir(FLAGS.model) else os.path.dirname(os.path.abspath(FLAGS.model))
    )
    output_dir = FLAGS.output_dir or os.path.join(model_dir, f"evaluation-{FLAGS.split}")
    evaluate.save_report(output_dir, report)
    print(evaluate.summary_table(report))
    print(f"report: {output_dir}")
    threshold = FLAGS.assert_accuracy_at_least
    if threshold is not None and report.metrics["accuracy"] < threshold:
        print(
            f"{PROGRAM}: accuracy {report.metrics['accuracy']:.4f} is below "
            f"--assert_accuracy_at_least={threshold}"
        )
        return 1
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = (*common.DATA_FLAGS, "model", "batch_size", "strategy", "output_dir")
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
