"""Node 2: the MLflow tracking server and its artifact bucket."""
