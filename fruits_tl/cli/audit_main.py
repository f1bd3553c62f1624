"""fruits-tl-audit: decode every image and report what is wrong with a data folder.

Example:
  fruits-tl-audit --data_dir=/data/fruits-360 --output_json=audit.json \
      --write_exclude_list=exclude.txt
  fruits-tl-train --data_dir=/data/fruits-360 --exclude_list=exclude.txt ...

With --store_dir (a --features_dir, or a model_dir's features/), it checks every stored array
(decoded pixels, features, labels) against the checksums of its chunks instead, and exits 1
when a chunk is damaged (a job that reuses the store writes those chunks again).
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_string(
    "write_exclude_list", "", "Write the undecodable files here, one per line, for --exclude_list."
)
flags.DEFINE_integer(
    "min_images_per_class", 10, "Classes with fewer decodable images than this are reported."
)

flags.DEFINE_string(
    "store_dir",
    "",
    "Check the store in this folder (and the folders below it) against its checksums instead "
    "of auditing --data_dir.",
)

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-audit"


def _verify_store(directory: str) -> int:
    from fruits_tl.core import files
    from fruits_tl.data import store

    if not os.path.isdir(directory):
        raise common.UserInputError(f"The store folder '{directory}' does not exist (--store_dir).")
    start = time.perf_counter()
    results = store.verify(directory)
    seconds = time.perf_counter() - start
    if not results:
        raise common.UserInputError(f"'{directory}' holds no stored array (--store_dir).")
    for result in results:
        name = os.path.relpath(result.manifest, directory)
        if result.problem:
            print(f"{name}: {result.problem}")
        elif result.damaged:
            chunks = ", ".join(map(str, result.damaged))
            print(f"{name}: DAMAGED chunk(s) {chunks} of {result.chunks} ({result.rows} rows)")
        else:
            print(f"{name}: ok, {result.chunks} chunk(s), {result.rows} rows")
    total = sum(r.nbytes for r in results)
    bad = [r for r in results if r.problem or r.damaged]
    print(
        f"{len(results)} stored array(s), {total / 1e6:,.1f} MB checked in {seconds:.1f} s "
        f"({total / 1e6 / max(seconds, 1e-9):,.0f} MB/s); {len(bad)} with problems"
    )
    if FLAGS.output_json:
        files.write_json(
            FLAGS.output_json,
            {"seconds": seconds, "arrays": [dataclasses.asdict(r) for r in results]},
        )
    return 1 if bad else 0


def _main(argv):
    common.reject_arguments(argv)
    if FLAGS.store_dir:
        return _verify_store(FLAGS.store_dir)
    common.require(["data_dir"])
    from fruits_tl.core import files
    from fruits_tl.jobs import audit

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
