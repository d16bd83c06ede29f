"""The app's shared objects as FastAPI dependencies (built once, at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ..settings import ServingSettings
from .batching import InferenceScheduler
from .history import HistoryLookup
from .model import ModelHolder
from .prediction_log import PredictionLog
from .watcher import ModelWatcher


@dataclass
class Services:
    settings: ServingSettings
    holder: ModelHolder
    scheduler: InferenceScheduler
    watcher: ModelWatcher
    history: HistoryLookup
    predictions: PredictionLog


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool (a thread hop per request)
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
