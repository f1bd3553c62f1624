"""fruits-tl-export: a trained model as a serving SavedModel and TFLite files, with a report.

Examples:
  fruits-tl-export --model=runs/mobilenet --output_dir=runs/mobilenet/export \
      --data_dir=/data/fruits-360
  fruits-tl-export --model=runs/mobilenet --output_dir=exported --formats=saved_model

With --data_dir, the report (export_report.json and the printed table) gives every format's
size, test accuracy, top-1 agreement with the Keras model and latency per image, and int8
is calibrated on --representative_images seeded training images and its head fine-tuned on
the int8 backbone's features (--int8_head_epochs); without it, only the
artifacts are written (int8 then needs --data_dir).
"""

from __future__ import annotations

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_list("formats", ["saved_model", "tflite"], "Formats to write: saved_model, tflite.")
flags.DEFINE_list(
    "quantize",
    ["none", "dynamic", "float16", "int8"],
    "TFLite variants: none (float32), dynamic (dynamic-range int8 weights), float16, int8 "
    "(full integer, int8 input and output; needs --data_dir).",
)
flags.DEFINE_integer(
    "representative_images",
    300,
    "Training images (seeded by --seed) that calibrate the int8 model.",
)
flags.DEFINE_integer(
    "int8_head_epochs",
    25,
    "Before the int8 conversion, epochs of fine-tuning the head (from its trained weights) on "
    "the features the int8 backbone computes for the training split; 0 keeps the trained head "
    "(plain post-training quantization, several points less accurate at alpha 0.25).",
)
flags.DEFINE_float("int8_head_learning_rate", 1e-3, "RMSprop learning rate of that fine-tuning.")
flags.DEFINE_integer(
    "latency_images", 100, "Test images predicted one at a time to measure each format's latency."
)

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-export"


def _main(argv):
    common.reject_arguments(argv)
    common.require(["model", "output_dir"])
    from fruits_tl.jobs import export

    has_data = bool(FLAGS.data_dir) or FLAGS.data_source == "tfds"
    config = export.ExportConfig(
        model=FLAGS.model,
        output_dir=FLAGS.output_dir,
        formats=tuple(FLAGS.formats),
        quantize=tuple(FLAGS.quantize),
        top_k=FLAGS.top_k,
        representative_images=FLAGS.representative_images,
        latency_images=FLAGS.latency_images,
        int8_head_epochs=FLAGS.int8_head_epochs,
        int8_head_learning_rate=FLAGS.int8_head_learning_rate,
        data=common.data_config() if has_data else None,
    )
    result = export.export_model(config)
    print(export.format_table(result))
    print(f"report: {FLAGS.output_dir}/{export.REPORT_FILE}")
    return 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = (*common.DATA_FLAGS, "model", "output_dir", "top_k")
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
