"""Flags shared by several binaries, defined once; the error handling every binary uses; and
the filter of TensorFlow's early C++ log lines (below).

absl flags live in one global registry, so a flag used by two binaries is defined here, once;
each binary module defines only its own. `run_main` turns UserInputError into one clear
paragraph on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import textwrap

# Quiet TensorFlow's C++ log lines (CUDA probing and the failed cuInit on a CPU-only machine,
# the oneDNN notice, rendezvous aborts on a deliberately undecodable file) unless the user
# asked for them: real failures reach the user as the binary's own message. native_log
# applies the level to the lines TensorFlow 2.21 prints before its logging starts.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib
import re
import threading

from absl import app, flags
from absl import logging as absl_logging  # noqa: E402

from fruits_tl.core.config import UserInputError, WorkerLost  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "data_dir", None, "Folder holding <train_subdir>/<class>/* and <test_subdir>/<class>/*."
)
flags.DEFINE_string(
    "train_subdir",
    "Training",
    "Training folder inside --data_dir; its class folders define the labels.",
)
flags.DEFINE_string(
    "test_subdir", "Test", "Test folder inside --data_dir; checked against the training classes."
)
flags.DEFINE_float(
    "validation_split",
    0.0,
    "Fraction of each training class held out (seeded) for validation; 0 validates on the test "
    "folder.",
)
flags.DEFINE_integer("image_size", 128, "Images are resized to image_size x image_size.")
flags.DEFINE_integer("batch_size", 32, "Global batch size, split across replicas.")
flags.DEFINE_float(
    "alpha", 1.0, "MobileNet width multiplier (ImageNet weights exist for 0.25, 0.5, 0.75, 1.0)."
)
flags.DEFINE_string(
    "weights",
    "imagenet",
    "Backbone weights: 'imagenet' (Keras download and cache), 'none' (random), or a path to a "
    "MobileNet no-top .h5 weights file for this alpha.",
)
flags.DEFINE_enum(
    "strategy",
    "auto",
    ["auto", "default", "one_device", "mirrored", "multi_worker_mirrored"],
    "tf.distribute strategy; auto: multi_worker_mirrored when TF_CONFIG names several workers, "
    "mirrored on several GPUs, one_device on one, default on CPU. multi_worker_mirrored starts "
    "a TensorFlow server on this worker's TF_CONFIG port that listens on every network "
    'interface without authentication or encryption (docs/many-machines.md, "Security").',
)
flags.DEFINE_float(
    "collective_timeout",
    300.0,
    "multi_worker_mirrored: seconds a worker waits for the others before failing (a dead worker "
    "then stops the rest with an error instead of a hang).",
)
flags.DEFINE_integer(
    "seed", 42, "Seed for the validation split, the shuffle and the head initialisation."
)
flags.DEFINE_string(
    "features_dir",
    "",
    "Where the store keeps what is computed once: each split's decoded pixels (pixels/), its "
    "backbone features and labels (<split>.features.json, <split>.labels.json and their .rows "
    "files, <split>.files.txt, labels.txt), reused while their fingerprints match. Train "
    "defaults to <model_dir>/features and keeps there the record of the decode check too; "
    "jobs read the store through a memory map.",
)
flags.DEFINE_enum(
    "feature_dtype",
    "float32",
    ["float32", "float16"],
    "dtype of stored features (float16 halves their size).",
)
flags.DEFINE_string(
    "model",
    None,
    "A trained model: its model_dir or a .keras file; fruits-tl-evaluate and fruits-tl-predict "
    "also take an exported SavedModel folder or .tflite file (labels.txt beside it).",
)
flags.DEFINE_integer(
    "epochs",
    25,
    "Passes over the training images (fruits-tl-bench: epochs per repeat, 5 when not given).",
)
flags.DEFINE_string(
    "learning_rate",
    "1e-4",
    "The head's learning rate, or 'auto': a learning-rate range test on the training data "
    "chooses it (fastai's valley rule; the curve goes to lr_find.csv and lr_find.png).",
)
flags.DEFINE_string("output_dir", "", "Where a binary's report files go (see each binary's help).")
flags.DEFINE_enum(
    "data_source",
    "folder",
    ["folder", "tfds"],
    "folder: --data_dir; tfds: the fruits360 TFDS dataset in --tfds_data_dir (prepared from "
    "--manual_dir first if needed).",
)
flags.DEFINE_string(
    "tfds_data_dir",
    "",
    "Where the prepared fruits360 TFDS records live ('' for TFDS's default, "
    "~/tensorflow_datasets).",
)
flags.DEFINE_string(
    "manual_dir",
    "",
    "Where the extracted Fruits-360 folder or its archive lies, to prepare the TFDS dataset from.",
)
flags.DEFINE_string(
    "dest",
    None,
    "Destination folder: fruits-tl-download downloads and extracts under it; "
    "fruits-tl-synthetic writes Training/ and Test/ into it.",
)
flags.DEFINE_string(
    "exclude_list",
    "",
    "A file of image paths to leave out, one per line (fruits-tl-audit --write_exclude_list "
    "writes one).",
)
flags.DEFINE_string("output_json", "", "Also write the full report or figures to this JSON file.")
flags.DEFINE_integer(
    "top_k",
    5,
    "How many classes per image: shown by fruits-tl-predict, returned by the exported "
    "serve_jpeg signature.",
)
flags.DEFINE_string(
    "data_service_address",
    "",
    "grpc://host:port of a tf.data service dispatcher (fruits-tl-data-service) whose workers "
    "decode the images, each exactly once; empty decodes in this process.",
)
flags.DEFINE_float(
    "data_service_timeout",
    120.0,
    "Seconds without an image from the tf.data service before the job decides a service worker "
    "or the dispatcher is lost and stops with a message (what it stored is kept; rerun to "
    "resume).",
)
flags.DEFINE_integer(
    "extract_chunk_images",
    2048,
    "Extraction, and the pixel store of images mode, store their work in chunks of about this "
    "many images: a killed run's rerun reuses the complete chunks.",
)
flags.DEFINE_integer(
    "decode_parallelism",
    0,
    "Parallel calls of the decode pass that fills the pixel store (0: twice the cores this "
    "process may run on). fruits-tl-bench --recommend says what this machine wants.",
)
flags.DEFINE_bool(
    "skip_bad_images",
    False,
    "Leave out undecodable images (listed in model_dir/skipped_images.txt) instead of stopping.",
)


def error_paragraph(program: str, message: str) -> str:
    """One wrapped paragraph `program: error: message`."""
    return textwrap.fill(
        f"{program}: error: {message}", width=100, break_long_words=False, break_on_hyphens=False
    )


def fail(program: str, message: str) -> None:
    """Prints one wrapped paragraph `program: error: message` to stderr and exits with 2."""
    print(error_paragraph(program, message), file=sys.stderr)
    sys.exit(2)


# The flags `data_config` reads.
DATA_FLAGS = (
    "data_dir",
    "train_subdir",
    "test_subdir",
    "validation_split",
    "image_size",
    "seed",
    "skip_bad_images",
    "exclude_list",
    "data_source",
    "tfds_data_dir",
    "manual_dir",
)
QUIET_NOTE = (
    "\nTensorFlow's C++ log lines are hidden: the binaries set TF_CPP_MIN_LOG_LEVEL=3 unless it "
    "is set. Run with TF_CPP_MIN_LOG_LEVEL=0 to see them all (2: errors only).\n"
)


def binary_flag_names(module_name: str, uses: tuple[str, ...]) -> tuple[str, ...]:
    """A binary's flags: the ones its module defines plus the shared ones it `uses`."""
    # Run as `python -m fruits_tl.cli.x_main`, absl files the module's flags under
    # sys.argv[0] (its name for the __main__ module).
    key = sys.argv[0] if module_name == "__main__" else module_name
    own = [flag.name for flag in FLAGS.get_flags_for_module(key)]
    return tuple(sorted(set(own) | set(uses)))


def _reject_foreign_flags(program: str, allowed: tuple[str, ...]) -> None:
    """A flag set on the command line that this binary does not use is an error naming it."""
    foreign = []
    for name in FLAGS:
        flag = FLAGS[name]
        if name != flag.name or not flag.present or name in allowed:
            continue
        if (FLAGS.find_module_defining_flag(name) or "").startswith("absl"):
            continue  # absl's own (--flagfile, --verbosity, --logtostderr, ...).
        foreign.append(f"--{name}")
    if foreign:
        raise UserInputError(
            f"{program} does not use {', '.join(sorted(foreign))}; its flags are listed by "
            f"{program} --help."
        )


def guarded(program: str, main, *, module_name: str, uses: tuple[str, ...] = ()):
    """Wraps a binary's main: refuses flags it does not use, and turns UserInputError into one
    clear message and exit code 2.

    Args:
      program: The binary's name, for messages.
      main: The binary's main(argv).
      module_name: The binary's module (its own flags are the ones it defines).
      uses: The shared flags (defined here) that the binary uses.
    """

    def wrapped(argv):
        from fruits_tl.core import stopping

        try:
            _reject_foreign_flags(program, binary_flag_names(module_name, uses))
            return main(argv)
        except WorkerLost as error:
            # At once: the interpreter's teardown would wait on the lost peer (WorkerLost).
            stopping.exit_now(2, error_paragraph(program, str(error)))
        except UserInputError as error:
            fail(program, str(error))
        except stopping.StopRequested as stopped:
            print(f"{program}: {stopped}", file=sys.stderr)
            sys.exit(stopped.exit_code)

    wrapped.module_name = module_name
    wrapped.uses = uses
    return wrapped


def learning_rate() -> float | str:
    """--learning_rate: a number, or "auto"."""
    from fruits_tl.core.config import parse_learning_rate

    return parse_learning_rate(FLAGS.learning_rate)


def data_config(**overrides):
    """The DataConfig of the shared data flags (validated), with per-binary overrides."""
    from fruits_tl.core.config import DataConfig

    values = dict(
        data_dir=FLAGS.data_dir or "",
        train_subdir=FLAGS.train_subdir,
        test_subdir=FLAGS.test_subdir,
        validation_split=FLAGS.validation_split,
        image_size=FLAGS.image_size,
        seed=FLAGS.seed,
        skip_bad_images=FLAGS.skip_bad_images,
        exclude_list=FLAGS.exclude_list,
        data_source=FLAGS.data_source,
        tfds_data_dir=FLAGS.tfds_data_dir,
        manual_dir=FLAGS.manual_dir,
        data_service_address=FLAGS.data_service_address,
        data_service_timeout=FLAGS.data_service_timeout,
        decode_parallelism=FLAGS.decode_parallelism,
    )
    values.update(overrides)
    return DataConfig(**values)


def strategy(*, multi_worker: bool = True):
    """The --strategy the binary runs under (create it before any other TensorFlow op).

    Args:
      multi_worker: The binary runs on several workers (train, extract, evaluate); the others
        run on one machine: `auto` then ignores TF_CONFIG and multi_worker_mirrored is refused.
    """
    from fruits_tl.core import distribute

    if not multi_worker:
        if FLAGS.strategy == "multi_worker_mirrored":
            raise UserInputError(
                "--strategy=multi_worker_mirrored is for fruits-tl-train, fruits-tl-extract and "
                "fruits-tl-evaluate; "
                "run this binary on one machine."
            )
        return distribute.get_strategy(FLAGS.strategy, allow_multi_worker=False)
    return distribute.get_strategy(FLAGS.strategy)


def reject_arguments(argv: list[str]) -> None:
    """Fails clearly on positional arguments, for binaries that take only --flags."""
    if len(argv) > 1:
        raise UserInputError(
            f"unexpected arguments: {' '.join(argv[1:])} (all options are --flags)."
        )


def require_data(flag_names: list[str]) -> None:
    """Requires `flag_names`, plus --data_dir unless the data comes from TFDS."""
    require(flag_names if FLAGS.data_source == "tfds" else ["data_dir", *flag_names])


def require(flag_names: list[str]) -> None:
    """Fails with a clear message if a required flag was not given."""
    missing = [f"--{name}" for name in flag_names if getattr(FLAGS, name) in (None, "")]
    if missing:
        raise UserInputError(f"missing required flag(s): {', '.join(missing)}.")


def resolved_flags_text(module_names: list[str]) -> str:
    """The resolved values of the flags of the given modules, as a reusable --flagfile."""
    lines = []
    for module_name in module_names:
        for flag in FLAGS.get_flags_for_module(module_name):
            lines.append(flag.serialize())
    return "\n".join(line for line in lines if line) + "\n"


def value_or(name: str, default):
    """A flag's value if given on the command line, else `default` (a binary's own default)."""
    return getattr(FLAGS, name) if FLAGS[name].present else default


_TENSORFLOW_SOURCE = f"{os.sep}tensorflow{os.sep}"


def _no_tensorflow_info(record: std_logging.LogRecord) -> bool:
    """A log filter: False for INFO (and lower) records logged from TensorFlow's own code."""
    return record.levelno >= std_logging.WARNING or _TENSORFLOW_SOURCE not in record.pathname


def main_runner(main):
    """The console-script entry point: parse flags with absl and run `main`.

    absl's `--help` lists the key flags of the `__main__` module, which for a console script is
    the generated wrapper: the binary's flags are registered as its key flags here, and its
    module docstring (plus how to see TensorFlow's messages) becomes the usage text.
    """

    def run():
        for name in binary_flag_names(main.module_name, main.uses):
            FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
        entry = sys.modules.get("__main__")
        if entry is not None:
            entry.__doc__ = (sys.modules[main.module_name].__doc__ or "") + QUIET_NOTE
        if min_log_level() >= 1:
            # TensorFlow's own Python INFO lines ("Sharding callback duration" after every
            # checkpoint, "Collective all_reduce tensors" per collective; some through absl's
            # logger, some through "tensorflow") are hidden with its C++ ones: the job's log is
            # the job's lines. TF_CPP_MIN_LOG_LEVEL=0 shows them.
            absl_logging.get_absl_handler().addFilter(_no_tensorflow_info)
        app.run(_importing_tensorflow_quietly(main))

    return run


def _importing_tensorflow_quietly(main):
    """`main`, after TensorFlow's start-up lines (after the flags: `--help` imports nothing)."""

    def quiet_main(argv):
        import_tensorflow_quietly()
        return main(argv)

    return quiet_main


# TF_CPP_MIN_LOG_LEVEL for the C++ log lines TensorFlow 2.21 prints before its logging starts.
#
# TensorFlow sets up its C++ logging (absl) only after importing and probing devices, and the
# lines it writes before that ("Could not find cuda drivers", the oneDNN notice, cuInit
# errors, absl's "All log messages before absl::InitializeLog() ..." preamble) ignore
# TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442, open). The binaries therefore import
# TensorFlow and list its devices with file descriptor 2 routed through a pipe that drops those
# lines below the level TF_CPP_MIN_LOG_LEVEL asks for (0 shows everything: I, W, E lines; 2
# drops I and W; 3, the binaries' default, drops E too), and only then: once TensorFlow's logging
# has started, its lines honour the level themselves, so the job runs on the real descriptor 2,
# with no pipe and no thread (a message written just before `os._exit` cannot be lost in a pipe).
#
# absl's C++ log prefix as it is before absl's logging is initialised: the date and clock are
# not set yet ("0000 00:00:<seconds since the epoch>"). Lines logged later carry a real date
# and honour TF_CPP_MIN_LOG_LEVEL themselves; absl's Python logging (the package's own
# warnings) uses the same prefix with a real date, so those lines always pass.
NATIVE_LINE = re.compile(r"^([IWEF])0000 00:00:\d+\.\d+\s+\d+ \S+:\d+\] ")
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def hidden(line: str, level: int) -> bool:
    """Whether TF_CPP_MIN_LOG_LEVEL=`level` hides this stderr line."""
    match = NATIVE_LINE.match(line)
    if match:
        return SEVERITY[match.group(1)] < level
    if line.startswith(PREAMBLE):
        return level >= 2  # It is a warning.
    return False


def min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def filtered_stderr():
    """Within the block, file descriptor 2 goes through a pipe whose reader drops the hidden
    lines; when the block ends, descriptor 2 is the original stream again and the reader has
    forwarded everything and finished: no pipe or thread outlives the block."""
    level = min_log_level()
    if level <= 0:
        yield
        return
    read_end, write_end = os.pipe()
    original = os.dup(2)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as lines:
            for raw in lines:
                if not hidden(raw.decode("utf-8", "replace"), level):
                    os.write(original, raw)

    thread = threading.Thread(target=forward, name="native-log-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # Closes the pipe's only write end: the reader sees its end.
        thread.join()
        os.close(original)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and lists its devices (where its early, unfilterable C++ lines are
    printed) with those lines dropped below TF_CPP_MIN_LOG_LEVEL."""
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
