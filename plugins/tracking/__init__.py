"""Built-in tracking plugins: mirror recorded runs to experiment trackers (MLflow)."""
