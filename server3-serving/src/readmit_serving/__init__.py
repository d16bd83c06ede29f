"""Node 3: serving predictions of 30-day readmission."""
