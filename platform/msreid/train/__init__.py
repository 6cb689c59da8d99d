"""Training on Ray: Ray Data input pipeline, Ray Train loop, checkpoints (orchestration layer)."""
