"""fruits-tl-evaluate: metrics, per-class figures, confusion matrix and top mistakes.

Example:
  fruits-tl-evaluate --model=runs/mobilenet --data_dir=/data/fruits-360 --split=Test \
      --assert_accuracy_at_least=0.9

Under several workers (TF_CONFIG, --strategy=multi_worker_mirrored), each worker predicts its
shard of the split and the chief writes the report.
"""

from __future__ import annotations

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
    from fruits_tl.core import distribute
    from fruits_tl.jobs import evaluate

    config = evaluate.EvaluateConfig(
        model=FLAGS.model,
        data=common.data_config(),
        split=FLAGS.split,
        output_dir=FLAGS.output_dir,
        batch_size=FLAGS.batch_size,
        num_mistakes=FLAGS.num_mistakes,
        collective_timeout=FLAGS.collective_timeout,
    )
    strategy = common.strategy()
    report = evaluate.evaluate(config, strategy=strategy)
    print(evaluate.summary_table(report))
    if distribute.worker_role(strategy).is_chief:
        print(f"report: {config.resolved_output_dir()}")
    else:
        print("report: written by the chief (task 0)")
    threshold = FLAGS.assert_accuracy_at_least
    if threshold is not None and report.metrics.accuracy < threshold:
        print(
            f"{PROGRAM}: accuracy {report.metrics.accuracy:.4f} is below "
            f"--assert_accuracy_at_least={threshold}"
        )
        return 1
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = (
    *common.DATA_FLAGS,
    "model",
    "batch_size",
    "strategy",
    "collective_timeout",
    "output_dir",
)
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
