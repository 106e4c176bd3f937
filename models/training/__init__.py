"""Training: the trainer and its objective, the dataset loader, checkpoints, and distillation
into the CPU student."""
