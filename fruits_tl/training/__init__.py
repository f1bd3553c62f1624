"""Training one phase: the compiled loop under a strategy, checkpoints, Keras callbacks, the
learning-rate finder, and the training curves."""
