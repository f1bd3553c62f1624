"""fruits_tl: image folders to a trained MobileNet transfer-learning classifier, fast.

Importing the package is cheap and touches no device: TensorFlow is imported by the
submodules that need it, and nothing runs at import time. The public entry points are
`fruits_tl.data.pipeline.make_datasets` and `fruits_tl.data.pipeline.make_input_fn` for
embedding the input pipeline, and `fruits_tl.jobs.train.train` for the whole job.

The folders are the layers, lowest first: `core` (what every layer uses), `data` (the input
pipeline and its store), `models`, `training` (one phase of training), `jobs` (one module per
job) and `cli` (the binaries). Imports point down only, and a job never imports another job
(tests/architecture_test.py).
"""

__version__ = "0.1.0"
