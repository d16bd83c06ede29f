"""Node 1 logic: stores, raw loads, preprocessing. The DAGs and the notebook call into it."""
