"""The input pipeline and its store: listing, checking and decoding image folders (and the TFDS
builder), the one uint8 store each split is decoded into once, the one tf.data pipeline that
reads it by TensorFlow ops (training, extraction, evaluation and the public `pipeline` API),
in-graph augmentation, and the tf.data service."""
