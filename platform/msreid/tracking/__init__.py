"""MLflow: parent / child runs, tables assembled from runs, `msreid report` (orchestration layer)."""
