"""Training: config tree, the loop, checkpoints, logging, optimizer."""
