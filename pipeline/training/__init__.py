"""The train stage's helpers: the Trainer, which parameters train, precision, memory savers, checkpoints, reports."""
