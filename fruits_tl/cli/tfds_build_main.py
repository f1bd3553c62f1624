"""fruits-tl-tfds-build: TFDS's own `tfds build` command, with fruits360 registered.

`tfds build` of tensorflow-datasets 4.9.10 imports Apache Beam at start-up (for its
`convert_format` command) and fails without it; Beam cannot be installed beside this
project's pinned TensorFlow stack. This runs the same `build` command class
(`tensorflow_datasets.scripts.cli.build.Args`), with the same arguments, after importing
`fruits_tl.tfds_fruits360`. Where Beam is installed, `tfds build fruits360 --imports
fruits_tl.tfds_fruits360 ...` is equivalent.

Example:
  fruits-tl-tfds-build fruits360 --manual_dir=/data/fruits-360 --data_dir=/data/tfds
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(argv: list[str] | None = None) -> None:
    """Parses `tfds build` arguments and executes TFDS's build command."""
    from fruits_tl.cli import native_log

    native_log.import_tensorflow_quietly()  # Its start-up lines, before TFDS imports it.
    from absl import app
    from tensorflow_datasets.scripts.cli import build, cli_utils

    import fruits_tl.tfds_fruits360  # noqa: F401  (registers the fruits360 builder)

    parse = cli_utils.make_flags_parser(
        build.Args, description="tfds build, with the fruits360 builder registered"
    )

    def main(args):
        args.execute()

    app.run(main, argv=argv or sys.argv, flags_parser=parse)


if __name__ == "__main__":
    run()
