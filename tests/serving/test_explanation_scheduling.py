"""Explanations on the inference thread: queued apart from the singles and behind them, refused past their deadline
before any call, a failing or disagreeing explainer failing only its own request, a swap to a model without
explainer answered 409.

The app in process with the model double of ``test_overload`` (its calls held and released by the test, so
orderings are exact without timing), given an explainer double that answers ``Explanation`` objects of the
contract (the real API's explanations are tested in ``test_explanations``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from readmit_contract.explanation import Contribution, Explanation

from .test_overload import FAILS, DoubleModel, counter, encounter, in_process, no_internals, until

DISAGREES = 11  # time_in_hospital of an encounter whose explanation gives another probability than the model's
UNEXPLAINABLE = 10  # ... of one the explainer raises on (the model scores it)


@dataclass
class DoubleExplainer:
    """Explains the double's 0.25 as a base and one factor (the stay); raises on the stay ``UNEXPLAINABLE`` and
    gives 0.3 for the stay ``DISAGREES``."""

    calls: list[list[dict[str, Any]]] = field(default_factory=list)
    method: str = "double"

    def explain(self, records):
        self.calls.append(list(records))
        out = []
        for record in records:
            stay = record["time_in_hospital"]
            if stay == UNEXPLAINABLE:
                raise RuntimeError("cannot read /srv/models/secret.bin on db.internal:3306")
            log_odds = math.log(0.3 / 0.7) if stay == DISAGREES else math.log(0.25 / 0.75)
            out.append(Explanation(log_odds - 0.5, (Contribution("time_in_hospital", "Days in hospital", str(stay),
                                                                 0.5),)))
        return out


@dataclass
class ExplainedDouble(DoubleModel):
    explainer: Any = None


def explain(client, stay: int):
    return client.post("/predict", json=encounter(stay), params={"explain": "true"})


def test_singles_go_before_a_queued_explanation():
    """While a batch slice is scored, an explain request and then a single arrive: the single is scored first,
    then the explanation, then the batch's next slice; the explanation is of the model that scored it."""

    async def scenario():
        model = ExplainedDouble(turnstile=threading.Semaphore(0), explainer=DoubleExplainer())
        async with in_process(model, BATCH_SLICE_ROWS=2) as (client, services):
            batch = asyncio.create_task(client.post("/predict/batch", json={"encounters": [encounter(2)] * 4}))
            await until(lambda: len(model.calls) == 1, "the batch's first slice is being scored")
            why = asyncio.create_task(explain(client, 5))
            await until(lambda: len(services.scheduler._explains) == 1, "the explain request is queued")
            single = asyncio.create_task(client.post("/predict", json=encounter(4)))
            await until(lambda: len(services.scheduler._singles) == 1, "the single request is queued")
            model.turnstile.release(1000)
            return await batch, await why, await single, model.calls, model.explainer.calls

    batch, why, single, calls, explained = asyncio.run(scenario())
    assert [[r["time_in_hospital"] for r in c] for c in calls] == [[2, 2], [4], [5], [2, 2]]
    assert [[r["time_in_hospital"] for r in c] for c in explained] == [[5]]
    assert batch.status_code == 200 and single.status_code == 200 and "explanation" not in single.json()
    assert why.status_code == 200, why.text
    body = why.json()
    assert body["probability"] == 0.25 and body["model_version"] == "7"
    assert body["explanation"]["factors"] == [{"factor": "time_in_hospital", "label": "Days in hospital", "value": "5",
                                               "text": "Days in hospital: 5", "contribution": 0.5,
                                               "direction": "raises"}]
    assert body["explanation"]["log_odds"] == math.log(0.25 / 0.75)
    assert body["explanation"]["other_factors"] == 0 and body["explanation"]["other_factor_count"] == 0
    assert body["explanation"]["method"] == "double"


def test_an_explain_request_past_its_deadline_is_refused_and_never_explained():
    async def scenario():
        model = ExplainedDouble(turnstile=threading.Semaphore(0), explainer=DoubleExplainer())
        async with in_process(model, REQUEST_DEADLINE_MS=1500) as (client, services):
            first = asyncio.create_task(client.post("/predict", json=encounter(1)))
            await until(lambda: len(model.calls) == 1, "the first call holds the worker")
            late = asyncio.create_task(explain(client, 9))
            await until(lambda: services.scheduler._explains or late.done(), "the explain request is queued")
            await asyncio.sleep(2.0)  # its deadline passes while it waits (1.5 s after its arrival)
            model.turnstile.release(1000)
            return await first, await late, model.calls, model.explainer.calls

    shed = counter("readmit_api_shed_total", route="/predict", reason="deadline")
    first, late, calls, explained = asyncio.run(scenario())
    assert first.status_code == 200
    assert late.status_code == 503 and late.json()["reason"] == "deadline" and late.headers["retry-after"] == "1"
    assert all(r["time_in_hospital"] != 9 for c in calls for r in c) and explained == []
    assert counter("readmit_api_shed_total", route="/predict", reason="deadline") - shed == 1


def test_a_failing_or_disagreeing_explanation_fails_only_its_own_request(caplog):
    """The explainer raising, or giving another probability than the model's, and the model raising: each request
    gets the generic 500 (the reason in the log under its request id), counted; the requests around them are
    answered."""

    async def scenario():
        model = ExplainedDouble(explainer=DoubleExplainer())
        async with in_process(model) as (client, _):
            stays = (3, UNEXPLAINABLE, FAILS, DISAGREES, 6)
            answers = [await explain(client, stay) for stay in stays]
            plain = await client.post("/predict", json=encounter(4))
        return stays, answers, plain

    before = {reason: counter("readmit_api_record_failures_total", reason=reason)
              for reason in ("exception", "explanation")}
    with caplog.at_level(logging.WARNING, logger="readmit_serving"):
        stays, answers, plain = asyncio.run(scenario())
    for stay, answer in zip(stays, answers, strict=True):
        if stay in (3, 6):
            assert answer.status_code == 200 and answer.json()["explanation"]["factors"][0]["value"] == str(stay)
            continue
        assert answer.status_code == 500 and set(answer.json()) == {"detail", "request_id"}, answer.text
        no_internals(answer)
        (logged,) = [r for r in caplog.records if answer.json()["request_id"] in r.getMessage()]
        why = "raised an exception" if stay == FAILS else "could not be explained"
        assert f"RecordFailed: the model {why}" in logged.exc_text
        if stay == UNEXPLAINABLE:  # the explainer's own exception is chained, in the log only
            assert "RuntimeError: cannot read /srv/models/secret.bin" in logged.exc_text
    assert plain.status_code == 200
    assert counter("readmit_api_record_failures_total", reason="exception") - before["exception"] == 1
    assert counter("readmit_api_record_failures_total", reason="explanation") - before["explanation"] == 2
    assert any("gives 0.300000000, the model 0.250000000" in r.getMessage() for r in caplog.records)


def test_a_version_without_explainer_swapped_in_while_waiting_answers_409():
    async def scenario():
        model = ExplainedDouble(turnstile=threading.Semaphore(0), explainer=DoubleExplainer())
        async with in_process(model) as (client, services):
            first = asyncio.create_task(client.post("/predict", json=encounter(1)))
            await until(lambda: len(model.calls) == 1, "the first call holds the worker")
            waiting = asyncio.create_task(explain(client, 5))
            await until(lambda: services.scheduler._explains, "the explain request is queued")
            services.holder.swap(ExplainedDouble(version="8"))  # no explainer
            model.turnstile.release(1000)
            refused = await waiting
            again = await explain(client, 5)
            return await first, refused, again

    first, refused, again = asyncio.run(scenario())
    assert first.status_code == 200
    for answer in (refused, again):
        assert answer.status_code == 409
        assert answer.json() == {"detail": "this model version (8) cannot be explained: ask without explain=true for "
                                           "its prediction"}
