"""fruits-tl-synthetic: write the embedded synthetic Fruits-360-like dataset.

Example:
  fruits-tl-synthetic --dest=demo_data/synthetic-fruits
"""

from __future__ import annotations

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_integer("num_classes", 8, "Number of classes.")
flags.DEFINE_integer("train_per_class", 40, "Training images per class.")
flags.DEFINE_integer("test_per_class", 12, "Test images per class.")

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-synthetic"


def _main(argv):
    common.reject_arguments(argv)
    common.require(["dest"])
    from fruits_tl.jobs import synthetic

    path = synthetic.write_synthetic_dataset(
        FLAGS.dest,
        num_classes=FLAGS.num_classes,
        train_per_class=FLAGS.train_per_class,
        test_per_class=FLAGS.test_per_class,
        seed=FLAGS.seed,
    )
    print(path)
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = ("dest", "seed")
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
