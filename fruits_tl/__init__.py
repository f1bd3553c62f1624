"""fruits_tl: image folders to a trained MobileNet transfer-learning classifier, fast.

Importing the package is cheap and touches no device: TensorFlow is imported by the
submodules that need it, and nothing runs at import time. The public entry points are
`fruits_tl.pipeline.make_datasets` and `fruits_tl.pipeline.make_input_fn` for embedding the
input pipeline, and `fruits_tl.train.train` for the whole job.
"""

__version__ = "0.1.0"
