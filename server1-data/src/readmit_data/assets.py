"""Names shared by the DAGs (kept free of Airflow imports so the library imports anywhere)."""

CLEAN_ENCOUNTERS_ASSET = "clean_encounters"
"""Airflow Asset updated when preprocess_incremental adds clean rows; train_and_register is scheduled on it."""
