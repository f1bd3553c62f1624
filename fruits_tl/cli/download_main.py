"""fruits-tl-download: fetch and safely extract the Fruits-360 archive.

Examples:
  fruits-tl-download --dest=data/fruits-360
  fruits-tl-download --dest=data/fruits-360 --archive=/media/usb/fruits-360.zip
"""

from __future__ import annotations

import os
import sys

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_string(
    "url", None, "Archive URL; default: the Fruits-360 public release (fruits_tl.data.download)."
)
flags.DEFINE_string(
    "sha256", None, "Expected sha256 of the archive; a mismatch deletes it and fails."
)
flags.DEFINE_string("archive", None, "Extract this local archive instead of downloading.")
flags.DEFINE_float("timeout", 60.0, "Network timeout in seconds.")

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-download"


def _main(argv):
    common.reject_arguments(argv)
    common.require(["dest"])
    from fruits_tl.data import download

    archive = FLAGS.archive
    if archive is None:
        url = FLAGS.url or download.FRUITS360_ARCHIVE_URL
        name = os.path.basename(url.split("?")[0]) or "archive.zip"
        archive = os.path.join(FLAGS.dest, name)

        def progress(done, total):
            if sys.stderr.isatty():
                shown = f"{done / 2**20:.1f} MB" + (f" of {total / 2**20:.1f} MB" if total else "")
                print(f"\r{PROGRAM}: {shown}", end="", file=sys.stderr)

        download.download(
            url,
            archive,
            sha256=FLAGS.sha256 or download.FRUITS360_ARCHIVE_SHA256,
            timeout=FLAGS.timeout,
            progress=progress,
        )
    elif not os.path.isfile(archive):
        raise common.UserInputError(f"The archive '{archive}' does not exist (--archive).")
    extracted = os.path.join(FLAGS.dest, "extracted")
    download.extract(archive, extracted)
    data_dir = download.find_data_dir(extracted, train_subdir=FLAGS.train_subdir)
    if data_dir is None:
        raise common.UserInputError(
            f"The archive '{archive}' holds no '{FLAGS.train_subdir}' folder; is it Fruits-360?"
        )
    print(data_dir)
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = ("dest", "train_subdir")
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
