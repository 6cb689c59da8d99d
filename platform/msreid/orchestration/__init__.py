"""Ray Tune experiments: the paper's grids, alpha tuning (orchestration layer)."""
