"""The inference API: FastAPI app, model holder and watcher, micro-batching, metrics."""
