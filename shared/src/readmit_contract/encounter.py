"""The pydantic model of one encounter, as the API receives it, derived from ``COLUMNS``.

Fields carry the raw clinical values a clinician knows (``"[70-80)"``, ``"Steady"``,
``"250.83"``), never pre-encoded numbers. Closed sets become ``Literal`` types,
counts become bounded ints, ICD-9 codes and open categories are checked by shape,
and ``?`` (the source's missing marker) or NaN is read as ``None``. Dashed column names
(``glyburide-metformin``) are the JSON names; the Python attribute uses ``_``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from .columns import COLUMNS, ICD9_PATTERN, MISSING, OPEN_CATEGORY_PATTERN, Column


def _missing_to_none(value: Any) -> Any:
    """``?`` (the source's marker) and NaN (a missing value in a frame) mean missing."""
    if value == MISSING or (isinstance(value, float) and value != value):
        return None
    return value


def _number_not_text(value: Any) -> Any:
    """Counts and ids are JSON numbers (5 or 5.0), never text ("5"): what the schema says."""
    if isinstance(value, str | bytes | bool):
        raise ValueError("must be a number, not text or a boolean")
    return value


def _annotation(col: Column) -> Any:
    if col.kind in ("id", "integer"):
        base: Any = Annotated[int, Field(ge=col.minimum, le=col.maximum), BeforeValidator(_number_not_text)]
    elif col.kind in ("code", "category"):
        base = Literal[tuple(col.allowed or ())]  # type: ignore[misc]
    elif col.kind == "open_category":
        base = Annotated[str, Field(pattern=OPEN_CATEGORY_PATTERN.pattern)]
    elif col.kind == "icd9":
        base = Annotated[str, Field(pattern=ICD9_PATTERN.pattern)]
    else:  # pragma: no cover - the outcome is not part of an encounter
        raise ValueError(col.kind)
    if col.nullable:  # null or the source's "?" (documented in the schema; read as null)
        return Annotated[base | Literal[MISSING] | None, BeforeValidator(_missing_to_none)]
    if col.kind == "id":
        return Annotated[base | None, BeforeValidator(_missing_to_none)]
    return base


def _field(col: Column) -> tuple[Any, Any]:
    description = col.description
    if col.labels:
        description += ": " + "; ".join(f"{k} = {v}" for k, v in col.labels.items())
    kwargs: dict[str, Any] = {"alias": col.name, "description": description}
    if not col.required:
        kwargs["default"] = col.default
    if col.kind == "integer":
        kwargs["examples"] = [col.minimum]
    elif col.allowed:
        kwargs["examples"] = [col.allowed[0]]
    return _annotation(col), Field(**kwargs)


class _EncounterBase(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
        title="Encounter",
    )

    def to_record(self) -> dict[str, Any]:
        """The encounter as a mapping of contract column name -> value (missing: None)."""
        return self.model_dump(by_alias=True)


ENCOUNTER_COLUMNS: tuple[Column, ...] = tuple(c for c in COLUMNS if c.kind != "outcome")

Encounter: type[_EncounterBase] = create_model(  # type: ignore[call-overload]
    "Encounter",
    __base__=_EncounterBase,
    __doc__="One hospital encounter of a diabetic patient, with the raw clinical fields of the source data.",
    **{c.python_name: _field(c) for c in ENCOUNTER_COLUMNS},
)


def json_encounters(valid: Any) -> list[dict[str, Any]]:
    """Rows typed by ``validate`` (a DataFrame) as API request bodies: feature columns only, null for missing."""
    import json

    from .columns import FEATURE_COLUMNS

    return json.loads(valid[list(FEATURE_COLUMNS)].replace(MISSING, None).to_json(orient="records"))


def example_encounter() -> dict[str, Any]:
    """A valid encounter (JSON names), built from the contract's first allowed values and minima."""
    record: dict[str, Any] = {}
    for col in ENCOUNTER_COLUMNS:
        if col.kind == "id":
            continue
        if col.kind == "integer":
            record[col.name] = col.minimum
        elif col.kind == "icd9":
            record[col.name] = "250.83"
        elif col.allowed:
            record[col.name] = col.allowed[0]
    return record
