"""fruits-tl-predict: top-k classes for image files or folders.

Example:
  fruits-tl-predict --model=runs/mobilenet photo1.jpg photos/ --top_k=3 --output=json

Unreadable files are reported on their own line and the rest are still classified; the exit
code is 1 when any file failed.
"""

from __future__ import annotations

import json

from absl import flags

from fruits_tl.cli import common

flags.DEFINE_enum(
    "output",
    "table",
    ["table", "json"],
    "table: aligned text; json: one JSON object per line per image.",
)

FLAGS = flags.FLAGS
PROGRAM = "fruits-tl-predict"


def format_table(predictions) -> str:
    width = max((len(p.path) for p in predictions), default=4)
    lines = []
    for p in predictions:
        if p.error:
            lines.append(f"{p.path.ljust(width)}  ERROR {p.error}")
        else:
            lines.append(
                f"{p.path.ljust(width)}  " + "  ".join(f"{name} {prob:.4f}" for name, prob in p.top)
            )
    return "\n".join(lines)


def _main(argv):
    inputs = argv[1:]
    common.require(["model"])
    if not inputs:
        raise common.UserInputError("give one or more image files or folders after the flags.")
    if FLAGS.top_k < 1:
        raise common.UserInputError(f"top_k must be >= 1, got {FLAGS.top_k}.")
    from fruits_tl.data import loading
    from fruits_tl.jobs import evaluate

    strategy = common.strategy(multi_worker=False)
    predictions = evaluate.predict_paths(
        FLAGS.model,
        inputs,
        strategy=strategy,
        top_k=FLAGS.top_k,
        batch_size=FLAGS.batch_size,
        exclude_files=loading.load_exclude_list(FLAGS.exclude_list),
    )
    if not predictions:
        raise common.UserInputError(f"no image files found in: {', '.join(inputs)}.")
    if FLAGS.output == "json":
        for p in predictions:
            item = {"path": p.path}
            if p.error:
                item["error"] = p.error
            else:
                item["top"] = [{"class": name, "probability": prob} for name, prob in p.top]
            print(json.dumps(item))
    else:
        print(format_table(predictions))
    return 1 if any(p.error for p in predictions) else 0


# The shared flags (cli/common.py) this binary uses; --help lists them with its own.
USES = ("batch_size", "exclude_list", "model", "strategy", "top_k")
main = common.guarded(PROGRAM, _main, module_name=__name__, uses=USES)
run = common.main_runner(main)

if __name__ == "__main__":
    run()
