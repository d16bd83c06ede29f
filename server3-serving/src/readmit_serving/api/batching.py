"""Inference scheduling: one worker thread runs every model call, single requests first.

- Micro-batching: single-encounter requests queue their record; when the worker is free, everything
  queued (up to ``MICROBATCH_MAX_ROWS``) is scored by one call on the model current at that moment. At
  low load a request is scored at once; under load calls grow and amortise the estimator's per-call cost.
- Batch requests are cut into slices of ``BATCH_SLICE_ROWS``; before each slice the queued singles go
  first, so a single waits for at most one slice however large the batches. Encounters of batch requests
  waiting are bounded (``MAX_QUEUED_BATCH_ROWS``): a batch that would pass the bound is refused
  (``Overloaded("batch_queue")``), unless none waits.
- Deadlines: a request whose deadline passed before its record was scored is refused
  (``Overloaded("deadline")``) and its record dropped before the call (no inference is wasted on it).
- Isolation: when a call on a micro-batch raises, the micro-batch is split in halves and each scored again
  (recursively), so every other request gets its answer and only the failing record's request gets
  ``RecordFailed``; so does a record whose probability is not finite (it must never reach the JSON encoder).
  A batch request owns all its records: a failure in one of its slices fails that request only.
- Explanations (``explain``): a single request asking why is queued apart; after each micro-batch of singles
  the worker takes one, and scores and explains its record in one call on the model current at that moment
  (the explanation is of the model that gave the probability, and must give the same probability within
  ``explanations.PROBABILITY_TOLERANCE``). It waits like a single (deadline, in-flight limit of ``/predict``);
  singles still go first, so an explanation (a few ms) delays them by at most one call.
- The worker's current call is timed (``running_for``): /health reports a worker stuck on one call.
- A call of at most ``INLINE_MAX_ROWS`` encounters on a model whose trees Treelite evaluates (``trees``: C code,
  bounded time) runs on the event loop, without the hop to the inference thread; a slow model (scikit-learn,
  an explanation, a batch slice) keeps the thread. Micro-batching is the same: everything queued while the
  loop was busy is one call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from readmit_contract.explanation import Explanation
from threadpoolctl import threadpool_limits

from . import metrics
from .admission import Overloaded
from .explanations import PROBABILITY_TOLERANCE, finite
from .model import INTERPRETED_MAX_ROWS, LoadedModel, ModelHolder

log = logging.getLogger(__name__)


INLINE_MAX_ROWS = INTERPRETED_MAX_ROWS
"""Model calls of at most this many encounters on a model evaluated by Treelite run on the event loop itself
(Treelite evaluates every call of this size, interpreted or compiled: ``LoadedModel.predict``)."""


class NoModelError(RuntimeError):
    """No model is loaded yet."""


class RecordFailed(RuntimeError):
    """The model could not score this request's encounter(s) (the cause is chained; never shown to callers)."""


class NotExplainable(RuntimeError):
    """The model served has no explainer (``version``: its version)."""

    def __init__(self, version: str) -> None:
        super().__init__(f"version {version} cannot be explained")
        self.version = version


class _ExplanationFailed(RuntimeError):
    """The explainer (not the model) raised on a record."""


def score(model: LoadedModel, records: list[dict[str, Any]]) -> np.ndarray:
    """One model call, timed: one float per record (anything else raises)."""
    started = time.perf_counter()
    probabilities = np.asarray(model.predict(records), dtype=float)
    metrics.INFERENCE_DURATION.observe(time.perf_counter() - started)
    metrics.INFERENCE_ROWS.observe(len(records))
    if probabilities.shape != (len(records),):
        raise ValueError(f"the model gave {probabilities.shape} results for {len(records)} encounters")
    return probabilities


def score_and_explain(model: LoadedModel, record: dict[str, Any]) -> tuple[float, Explanation]:
    """One model call on one record and its explanation by the same model (``_ExplanationFailed`` when only the
    explainer raised)."""
    (probability,) = score(model, [record]).tolist()
    started = time.perf_counter()
    try:
        (explanation,) = model.explainer.explain([record])
    except Exception as exc:
        raise _ExplanationFailed(f"{type(exc).__name__} from the explainer") from exc
    metrics.EXPLANATION_DURATION.observe(time.perf_counter() - started)
    return probability, explanation


@dataclass(eq=False)
class _Single:
    record: dict[str, Any]
    future: asyncio.Future
    deadline: float


@dataclass(eq=False)
class _Batch:
    records: list[dict[str, Any]]
    model: LoadedModel
    future: asyncio.Future
    deadline: float
    done_rows: int = 0
    results: list[np.ndarray] = field(default_factory=list)


class InferenceScheduler:
    """Owns the inference thread; every model call of the API goes through it."""

    def __init__(self, holder: ModelHolder, max_rows: int, slice_rows: int = 256,
                 max_queued_batch_rows: int = 4000) -> None:
        self.holder = holder
        self.max_rows = max_rows
        self.slice_rows = slice_rows
        self.max_queued_batch_rows = max_queued_batch_rows
        # one thread, its OpenMP/BLAS pools limited to 1 thread: tiny calls stay ~2 ms instead of contending
        # with the event loop for the cores (throughput comes from micro-batching)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference",
                                           initializer=threadpool_limits, initargs=(1,))
        self._singles: deque[_Single] = deque()
        self._explains: deque[_Single] = deque()
        self._batches: deque[_Batch] = deque()
        self._batch_rows = 0
        self._draining = False
        self._call_started: float | None = None
        self._queued_single = metrics.QUEUED_ROWS.labels(kind="single")
        self._queued_batch = metrics.QUEUED_ROWS.labels(kind="batch")
        self._queued_explain = metrics.QUEUED_ROWS.labels(kind="explain")
        self._queued_single.set(0)
        self._queued_batch.set(0)
        self._queued_explain.set(0)

    # -- requests ------------------------------------------------------------------------------------

    async def predict(self, record: dict[str, Any], deadline: float) -> tuple[float, LoadedModel]:
        """The probability of one encounter and the model that gave it (micro-batched with other singles)."""
        if self.holder.current is None:
            raise NoModelError("no model loaded yet")
        if time.monotonic() > deadline:
            raise Overloaded("deadline")
        future = asyncio.get_running_loop().create_future()
        self._singles.append(_Single(record, future, deadline))
        self._queued_single.set(len(self._singles))
        self._wake()
        return await future

    async def explain(self, record: dict[str, Any], deadline: float) -> tuple[float, Explanation, LoadedModel]:
        """The probability of one encounter, its explanation and the model that gave both (``NotExplainable``
        when the model current when its turn comes has no explainer)."""
        model = self.holder.current
        if model is None:
            raise NoModelError("no model loaded yet")
        if model.explainer is None:
            raise NotExplainable(model.version)
        if time.monotonic() > deadline:
            raise Overloaded("deadline")
        future = asyncio.get_running_loop().create_future()
        self._explains.append(_Single(record, future, deadline))
        self._queued_explain.set(len(self._explains))
        self._wake()
        return await future

    async def predict_many(self, records: list[dict[str, Any]], model: LoadedModel, deadline: float) -> np.ndarray:
        """The probabilities of a batch request's encounters, all from ``model``, scored slice by slice."""
        if self._batch_rows and self._batch_rows + len(records) > self.max_queued_batch_rows:
            raise Overloaded("batch_queue")
        if time.monotonic() > deadline:
            raise Overloaded("deadline")
        future = asyncio.get_running_loop().create_future()
        self._batches.append(_Batch(records, model, future, deadline))
        self._batch_rows += len(records)
        self._queued_batch.set(self._batch_rows)
        self._wake()
        return await future

    def running_for(self) -> float:
        """Seconds the worker has spent on its current model call (0: idle). Someone always waits for it."""
        started = self._call_started
        return 0.0 if started is None else time.monotonic() - started

    @property
    def queued_batch_rows(self) -> int:
        return self._batch_rows

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)

    # -- the drain task -------------------------------------------------------------------------------

    def _wake(self) -> None:
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._singles or self._explains or self._batches:
                # singles first, then one explanation, then one slice of the oldest batch: a single waits for at
                # most one explanation and one slice, and the others still advance under a steady stream of singles
                if self._singles:
                    items = self._take_singles()
                    model = self.holder.current
                    if model is not None:
                        await self._score_singles(model, items)
                    else:  # never once a model is in (the holder only swaps), but no request may hang
                        for item in items:
                            item.future.set_exception(NoModelError("no model loaded"))
                if self._explains:
                    await self._explain_next()
                if self._batches:
                    await self._score_slice(self._batches[0])
        finally:
            self._draining = False

    async def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the inference thread, timed for /health."""
        self._call_started = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._call_started = None

    async def _call(self, model: LoadedModel, records: list[dict[str, Any]]) -> np.ndarray:
        if getattr(model, "trees", None) is not None and len(records) <= INLINE_MAX_ROWS:
            # Treelite's trees (C, bounded) after the contract's transform: ~20 us per encounter, less than the
            # hop to the inference thread and back, and no contention for the GIL with it
            self._call_started = time.monotonic()
            try:
                return score(model, records)
            finally:
                self._call_started = None
        return await self._run(score, model, records)

    @staticmethod
    def _take(queue: deque[_Single], most: int) -> list[_Single]:
        """Up to ``most`` queued requests still awaited and within their deadline; the late ones refused."""
        now = time.monotonic()
        items: list[_Single] = []
        while queue and len(items) < most:
            item = queue.popleft()
            if item.future.done():  # the caller went away
                continue
            if now > item.deadline:
                item.future.set_exception(Overloaded("deadline"))
                continue
            items.append(item)
        return items

    def _take_singles(self) -> list[_Single]:
        items = self._take(self._singles, self.max_rows)
        self._queued_single.set(len(self._singles))
        return items

    async def _explain_next(self) -> None:
        """Score and explain the oldest queued explain request still awaited, on the current model."""
        items = self._take(self._explains, 1)
        self._queued_explain.set(len(self._explains))
        if not items:
            return
        (item,) = items
        model = self.holder.current
        if model is None:  # never once a model is in
            item.future.set_exception(NoModelError("no model loaded"))
            return
        if model.explainer is None:  # swapped for a version without an explainer while it waited
            item.future.set_exception(NotExplainable(model.version))
            return
        try:
            probability, explanation = await self._run(score_and_explain, model, item.record)
        except _ExplanationFailed as exc:
            self._fail(item.future, "explanation", exc.__cause__)
            return
        except Exception as exc:  # noqa: BLE001 - the model failed on the record: its request alone fails
            self._fail(item.future, "exception", exc)
            return
        if not (math.isfinite(probability) and finite(explanation)):
            self._fail(item.future, "non_finite")
            return
        if not abs(explanation.probability - probability) <= PROBABILITY_TOLERANCE:
            log.warning("an explanation of v%s gives %.9f, the model %.9f: not answered", model.version,
                        explanation.probability, probability)
            self._fail(item.future, "explanation")
            return
        if not item.future.done():
            item.future.set_result((probability, explanation, model))

    async def _score_singles(self, model: LoadedModel, items: list[_Single]) -> None:
        if not items:
            return
        try:
            probabilities = await self._call(model, [item.record for item in items])
        except Exception as exc:  # noqa: BLE001 - isolate the failing record(s); the others get answers
            if len(items) == 1:
                self._fail(items[0].future, "exception", exc)
                return
            log.warning("a model call on %d encounters failed (%s): scoring them in halves to isolate the "
                        "failing one", len(items), type(exc).__name__)
            middle = len(items) // 2
            await self._score_singles(model, items[:middle])
            await self._score_singles(model, items[middle:])
            return
        for item, probability in zip(items, probabilities.tolist(), strict=True):
            if item.future.done():
                continue
            if math.isfinite(probability):
                item.future.set_result((probability, model))
            else:
                self._fail(item.future, "non_finite")

    async def _score_slice(self, batch: _Batch) -> None:
        size = len(batch.records)
        if batch.future.done() or (batch.done_rows == 0 and time.monotonic() > batch.deadline):
            self._finish(batch)
            if not batch.future.done():
                batch.future.set_exception(Overloaded("deadline"))
            return
        rows = batch.records[batch.done_rows: batch.done_rows + self.slice_rows]
        try:
            probabilities = await self._call(batch.model, rows)
        except Exception as exc:  # noqa: BLE001 - the batch request fails; nothing else does
            self._finish(batch)
            self._fail(batch.future, "exception", exc, f"encounters {batch.done_rows}-"
                                                       f"{batch.done_rows + len(rows) - 1} of a batch of {size}")
            return
        if not np.isfinite(probabilities).all():
            self._finish(batch)
            self._fail(batch.future, "non_finite")
            return
        batch.results.append(probabilities)
        batch.done_rows += len(rows)
        self._batch_rows -= len(rows)
        self._queued_batch.set(self._batch_rows)
        if batch.done_rows == size:
            self._finish(batch)
            if not batch.future.done():
                batch.future.set_result(np.concatenate(batch.results))

    def _finish(self, batch: _Batch) -> None:
        """Take ``batch`` (the head of the queue) off the queue with its rows not scored yet."""
        self._batches.popleft()
        self._batch_rows -= len(batch.records) - batch.done_rows
        batch.done_rows = len(batch.records)
        self._queued_batch.set(self._batch_rows)

    def _fail(self, future: asyncio.Future, reason: str, cause: BaseException | None = None,
              where: str = "one encounter") -> None:
        metrics.RECORD_FAILURES.labels(reason=reason).inc()
        if future.done():
            return
        what = {"exception": "raised an exception",
                "explanation": "could not be explained (its explainer failed or disagreed with it)",
                }.get(reason, "gave a probability that is not a finite number")
        error = RecordFailed(f"the model {what} on {where}")
        error.__cause__ = cause
        future.set_exception(error)
