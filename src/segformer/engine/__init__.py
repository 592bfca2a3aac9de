"""Training and evaluation engine: losses, optimizer/schedules, the training loop and evaluation."""
