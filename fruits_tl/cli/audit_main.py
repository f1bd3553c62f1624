"""fruits-tl-audit: decode every image and report what is wrong with a data folder.

Example:
  fruits-tl-audit --data_dir=/data/fruits-360 --output_json=audit.json \
      --write_exclude_list=exclude.txt
  fruits-tl-train --data_dir=/data/fruits-360 --exclude_list=exclude.txt ...
"""

from __future__ import annotations

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_string(
    "write_exclude_list", "", "Write the undecodable files here, one per line, for --exclude_list."
)
flags.DEFINE_integer(
    "min_images_per_class", 10, "Classes with fewer decodable images than this are reported."
)

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-audit"


def _main(argv):
    common.reject_arguments(argv)
    common.require(["data_dir"])
    from fruits_tl import audit, files

    report = audit.audit_folder(
        FLAGS.data_dir,
        train_subdir=FLAGS.train_subdir,
        test_subdir=FLAGS.test_subdir,
        min_images_per_class=FLAGS.min_images_per_class,
    )
    print(audit.summary(report))
    if FLAGS.output_json:
        files.write_json(FLAGS.output_json, report)
    if FLAGS.write_exclude_list:
        files.write_lines(
            FLAGS.write_exclude_list, [item["path"] for item in report["undecodable"]]
        )
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = ("data_dir", "train_subdir", "test_subdir", "output_json")
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
