"""Micro-batching: concurrent single-encounter requests share one model call.

Requests queue their record; one drain task takes everything queued (up to
``max_rows``), scores it with one call on the model current at that moment, and
answers each request. While a call runs, new requests gather for the next one, so
at low load a request is scored at once, and under load calls grow to amortise the
per-call cost of the estimator.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np

from . import metrics
from .model import LoadedModel, ModelHolder


class NoModelError(RuntimeError):
    """No model is loaded yet."""


def score(model: LoadedModel, records: list[dict[str, Any]]) -> np.ndarray:
    """One model call, timed."""
    started = time.perf_counter()
    probabilities = model.predict(records)
    metrics.INFERENCE_DURATION.observe(time.perf_counter() - started)
    metrics.INFERENCE_ROWS.observe(len(records))
    return probabilities


class MicroBatcher:
    def __init__(self, holder: ModelHolder, executor: Executor, max_rows: int) -> None:
        self.holder = holder
        self.executor = executor
        self.max_rows = max_rows
        self._queue: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._draining = False

    async def predict(self, record: dict[str, Any]) -> tuple[float, LoadedModel]:
        if self.holder.current is None:
            raise NoModelError("no model loaded yet")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((record, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_rows], self._queue[self.max_rows :]
                model = self.holder.current
                try:
                    probabilities = await loop.run_in_executor(self.executor, score, model, [r for r, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), probability in zip(batch, probabilities.tolist(), strict=True):
                    if not future.done():
                        future.set_result((probability, model))
        finally:
            self._draining = False
