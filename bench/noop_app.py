"""The floor for the serving benchmark: FastAPI endpoints that parse the same JSON bodies as the API and return a
constant, served by the same uvicorn settings as the API.

POST /predict: one encounter in, one constant prediction out. POST /predict/batch: ``{"encounters": [...]}`` in,
one constant prediction per encounter out (the floor of /predict/batch: reading and parsing a 1000-encounter body
and writing its answer, no validation, no model).

    uvicorn noop_app:app --app-dir bench --port PORT
"""

from fastapi import FastAPI, Request

app = FastAPI()

ANSWER = {"probability": 0.1, "risk_band": "low"}


@app.post("/predict")
async def predict(request: Request) -> dict:
    await request.json()
    return ANSWER


@app.post("/predict/batch")
async def predict_batch(request: Request) -> dict:
    body = await request.json()
    return {"predictions": [ANSWER] * len(body["encounters"])}
