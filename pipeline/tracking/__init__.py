"""MLflow: a parent run per DAG run and a child per stage (runs), the model registry, how the UI opens (ui)."""
