"""The floor for the serving benchmark: a FastAPI endpoint that parses the same JSON body and returns a
constant, served by the same uvicorn settings as the API.

    uvicorn noop_app:app --app-dir bench --port PORT
"""

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> dict:
    await request.json()
    return {"probability": 0.1, "risk_band": "low"}
