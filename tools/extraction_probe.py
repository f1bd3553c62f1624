"""The extractor's compiled forward rate at several batches against the package's extraction
from the pixel store, side by side in one process, with the anonymous memory each batch adds.

Usage: python tools/extraction_probe.py --data_dir=DIR --weights=FILE.h5 [--repeats=5]
  [--batches=32,64,128,256] [--memory_batch=B]

The training split of DIR (at 128x128) is decoded into a temporary pixel store first. Per
repeat: the compiled call (`tf.function` of the extractor) on one resident batch, 1,024 images
per timing, at each batch; then `backbone_features.extract_stored` over the whole stored split
at the package's batch. Prints medians and the per-repeat ratio of the package's extraction to
the best compiled batch (BENCHMARKS.md 15). With --memory_batch=B it measures only RssAnon
before and after one `extract_stored` pass at batch B, in a process that has run nothing else
(TensorFlow's allocator keeps what a larger batch took, so each batch needs its own process).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from fruits_tl.core import distribute
from fruits_tl.data import loading, store
from fruits_tl.models import backbone_features, model


def _rss_anon_mb() -> int:
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="32,64,128,256")
    parser.add_argument("--memory_batch", type=int, default=0)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    folder = loading.load_dataset(args.data_dir, image_size=128).train
    strategy = distribute.get_strategy("default")
    backbone = model.build_backbone(image_size=128, alpha=0.25, weights=args.weights)
    extractor = model.build_feature_extractor(backbone, image_size=128)
    images = store.store_pixels(folder, directory=tempfile.mkdtemp()).examples
    if args.memory_batch:
        before = _rss_anon_mb()
        backbone_features.extract_stored(
            images, extractor, strategy=strategy, batch_size=args.memory_batch
        )
        print(f"RssAnon added by a pass at batch {args.memory_batch}: {_rss_anon_mb() - before} MB")
        return
    package_batch = backbone_features.EXTRACTION_BATCH_PER_REPLICA
    compiled = {batch: [] for batch in batches}
    package = []
    step = tf.function(lambda x: extractor(x, training=False))
    for _ in range(args.repeats):
        for batch in batches:
            x = tf.constant(np.asarray(images.numpy()[:batch]))
            step(x).numpy()  # Traced (once per shape) and warm.
            calls = max(1, 1024 // batch)
            start = time.perf_counter()
            for _ in range(calls):
                out = step(x)
            out.numpy()
            compiled[batch].append(calls * batch / (time.perf_counter() - start))
        start = time.perf_counter()
        backbone_features.extract_stored(
            images, extractor, strategy=strategy, batch_size=package_batch
        )
        package.append(len(images) / (time.perf_counter() - start))
    for batch, rates in compiled.items():
        print(f"compiled, batch {batch}: median {statistics.median(rates):,.0f} images/s")
    print(
        f"extract_stored, batch {package_batch}, {len(images)} images: median "
        f"{statistics.median(package):,.0f} images/s"
    )
    ratios = [rate / max(compiled[b][i] for b in batches) for i, rate in enumerate(package)]
    print("extract_stored / best compiled batch, per repeat:", [round(r, 2) for r in ratios])


if __name__ == "__main__":
    main()
