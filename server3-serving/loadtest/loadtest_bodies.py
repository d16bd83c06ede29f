"""Request bodies of the load test: encounters from the feature contract's synthetic generator.

The generator writes rows as the source file does (text, ``?`` for missing); the API takes
JSON with the contract's names: feature columns only, ``null`` for missing, numbers and
hospital codes as integers. Hospice and expired encounters stay in the pool, as in real
traffic (about 3 %): the API answers them ``scored: false``.
"""

from __future__ import annotations

from typing import Any

from readmit_contract import COLUMNS, FEATURE_COLUMNS, MISSING, Encounter, synthetic

INTEGER_COLUMNS = frozenset(c.name for c in COLUMNS if c.is_integer)


def to_body(row: dict[str, str]) -> dict[str, Any]:
    """One generated row (text) -> the JSON body of POST /predict."""
    body: dict[str, Any] = {}
    for name in FEATURE_COLUMNS:
        value = row[name]
        if value == MISSING:
            body[name] = None
        elif name in INTEGER_COLUMNS:
            body[name] = int(value)
        else:
            body[name] = value
    return body


def encounter_bodies(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` realistic encounters as JSON bodies, each checked against the contract's ``Encounter``."""
    rows = synthetic.generate(n, seed=seed)[list(FEATURE_COLUMNS)].to_dict("records")
    bodies = [to_body(row) for row in rows]
    for body in bodies:
        Encounter.model_validate(body)  # a generator/contract mismatch fails here, not as 422s under load
    return bodies
