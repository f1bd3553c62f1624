"""fruits-tl-tfds-build: prepare the fruits360 TFDS records from Fruits-360 images.

Runs the builder's `download_and_prepare` (TFDS's public API) into --tfds_data_dir, from the
extracted Fruits-360 folder or its archive in --manual_dir (or a download when it is empty).
Training with --data_source=tfds prepares the records the same way when they are missing; this
binary does it alone. `tfds build fruits360 --imports fruits_tl.tfds_fruits360` does the same
where Apache Beam is installed (the `tfds` command of tensorflow-datasets 4.9.10 imports it at
start-up, and Beam cannot be installed beside this project's pinned TensorFlow stack).

Example:
  fruits-tl-tfds-build --manual_dir=/data/fruits-360 --tfds_data_dir=/data/tfds
"""

from __future__ import annotations

from absl import flags, logging

from fruits_tl.cli import common

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-tfds-build"


def _main(argv):
    common.reject_arguments(argv)
    from fruits_tl.data import tfds_fruits360

    builder = tfds_fruits360.prepare(tfds_data_dir=FLAGS.tfds_data_dir, manual_dir=FLAGS.manual_dir)
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    logging.info("The %s records are ready in %s: %s", builder.name, builder.data_dir, splits)
    print(builder.data_dir)
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = ("tfds_data_dir", "manual_dir")
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
