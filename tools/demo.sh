#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: sets up .venv, writes the synthetic
# Fruits-360-like dataset once (demo_data/), trains fruits-tl-train on it and prints test
# accuracy and images/s.
#
#   tools/demo.sh                         # synthetic data, best weights this machine can have
#   DATA_DIR=/data/fruits-360 tools/demo.sh   # real data (Training/ and Test/ inside)
#   WEIGHTS=/path/no_top.h5 ALPHA=0.25 tools/demo.sh
# Extra arguments are passed to fruits-tl-train (e.g. --epochs=5).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
user_log_level="${TF_CPP_MIN_LOG_LEVEL-}"
source "$repo/tools/setup_venv.sh"
# The binaries' own default log level (3: TensorFlow's start-up lines, such as the failed
# cuInit on a machine without a GPU, are dropped), unless the caller set one.
[ -n "$user_log_level" ] || unset TF_CPP_MIN_LOG_LEVEL
cd "$repo"

data_dir="${DATA_DIR:-}"
if [ -z "$data_dir" ]; then
  data_dir="$repo/demo_data/synthetic-fruits"
  fruits-tl-synthetic --dest="$data_dir" --num_classes=8 --train_per_class=40 --test_per_class=12 >/dev/null
  echo "demo: synthetic dataset in $data_dir (8 classes, 40 training and 12 test images each)"
fi

# Weights: ImageNet where they can be had (Keras's download and cache), else the real
# alpha-0.25 ImageNet file from ../shared/weights if this checkout has it, else random.
weights="${WEIGHTS:-}"
alpha="${ALPHA:-}"
shared_weights="$repo/../shared/weights/mobilenet_2_5_128_tf_no_top.h5"
if [ -z "$weights" ]; then
  if python - <<'PY' >/dev/null 2>&1
import socket
socket.setdefaulttimeout(20)
from fruits_tl.models import model
model.fetch_imagenet_weights(alpha=1.0, image_size=128)
PY
  then
    weights=imagenet; alpha="${alpha:-1.0}"
    echo "demo: weights: ImageNet MobileNet 1.0 (Keras download/cache)"
  elif [ -f "$shared_weights" ]; then
    weights="$shared_weights"; alpha="${alpha:-0.25}"
    echo "demo: weights: ImageNet MobileNet 0.25 from $shared_weights (the ImageNet download is not reachable here)"
  else
    weights=none; alpha="${alpha:-0.25}"
    echo "demo: weights: RANDOM. ImageNet weights could not be downloaded and no local file was found."
    echo "demo: Keras's random initialisation shrinks MobileNet's features to almost nothing, so a"
    echo "demo: frozen random backbone gives near-chance accuracy. Set WEIGHTS=/path/to/no_top.h5."
  fi
fi
alpha="${alpha:-1.0}"

model_dir="${MODEL_DIR:-$repo/runs/demo}"
# lr 1e-3: the tutorial's 1e-4 underfits 320 images in 25 epochs (250 steps). Flags after
# tools/demo.sh override these (absl keeps the last value).
fruits-tl-train --data_dir="$data_dir" --model_dir="$model_dir" --weights="$weights" --alpha="$alpha" \
  --learning_rate=1e-3 "$@"
python - "$model_dir/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"demo: test accuracy {m['test_accuracy']:.4f} (top-5 {m['test_top5_accuracy']:.4f}) on {m['num_test_images']} "
      f"test images, {m['num_classes']} classes; training {m['train_images_per_second']:.0f} images/s "
      f"({m['strategy']} strategy, {m['num_replicas']} replica(s)); weights {m['weights']}")
PY
echo "demo: model and reports in $model_dir"
