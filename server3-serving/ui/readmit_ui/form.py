"""The one-encounter form, generated from the contract: one input per encounter field, none listed here.

Each field carries the contract's words for people: ``Column.label`` as its label, ``description`` and ``hint`` as
its help (with its range and the column's name in a CSV), and starts from ``Column.typical``, the most common
value in the real data (the starting patient is the typical encounter, not the first value of every list).

Widgets follow the column's kind:

- ``category`` / ``code``: a select box of the allowed values (codes shown with their
  description, ``1 — Emergency``); a nullable column offers "unknown" (sent as null)
- ``integer``: a number input bounded by the contract's range
- ``open_category``: a select box of the known values, "unknown" and "other…" (then the
  free text beside it is sent, checked against the contract's pattern)
- ``icd9``: a text input checked against the contract's ICD-9 pattern (empty: unknown)

Sections are derived from the kinds and the contract's order (see ``sections``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from readmit_contract.columns import BY_NAME, ICD9_PATTERN, MEDICATIONS, MISSING, OPEN_CATEGORY_PATTERN, Column
from readmit_contract.encounter import ENCOUNTER_COLUMNS

from .client import FieldError

UNKNOWN = MISSING
"""Option value of "unknown" (sent as null); the contract's own missing marker, never an allowed value."""
OTHER = "other…"
"""Option value of an open category's free text (no legal category name contains "…")."""

FORM_COLUMNS: tuple[Column, ...] = tuple(c for c in ENCOUNTER_COLUMNS if c.kind != "id")
"""The fields a user fills in: the encounter's features (identifiers do not change a prediction)."""

Widget = Literal["select", "number", "text"]


@dataclass(frozen=True)
class Section:
    title: str
    columns: tuple[Column, ...]
    in_expander: bool = False


SECTION_TITLES = ("Demographics", "Admission", "Utilisation", "Diagnoses", "Lab results", "Medications",
                  "Status of each medication")


def _section_title(col: Column, seen_other_kind: bool, seen_diagnosis: bool, seen_medication: bool) -> str:
    if col.kind == "icd9" or (col.kind == "integer" and seen_diagnosis):
        return "Diagnoses"  # the codes and the count of diagnoses entered
    if col.kind in ("code", "open_category"):
        return "Admission"
    if col.kind == "integer":
        return "Utilisation"
    if col.name in MEDICATIONS:
        return "Status of each medication"
    if not seen_other_kind:
        return "Demographics"  # the categories the contract declares before any hospital field
    return "Medications" if seen_medication else "Lab results"  # after the drugs: change, diabetesMed


def sections() -> list[Section]:
    """The form's sections, each with its columns in contract order (empty sections dropped)."""
    members: dict[str, list[Column]] = {title: [] for title in SECTION_TITLES}
    seen_other_kind = seen_diagnosis = seen_medication = False
    for col in FORM_COLUMNS:
        members[_section_title(col, seen_other_kind, seen_diagnosis, seen_medication)].append(col)
        seen_other_kind |= col.kind != "category"
        seen_diagnosis |= col.kind == "icd9"
        seen_medication |= col.name in MEDICATIONS
    return [Section(title, tuple(cols), in_expander=title == "Status of each medication")
            for title, cols in members.items() if cols]


def widget(col: Column) -> Widget:
    if col.kind == "integer":
        return "number"
    if col.kind == "icd9":
        return "text"
    return "select"


def key(col: Column) -> str:
    """Widget key of a field (tests address widgets by it)."""
    return f"field:{col.name}"


def other_key(col: Column) -> str:
    """Widget key of an open category's free text."""
    return f"other:{col.name}"


def options(col: Column) -> list[Any]:
    """Options of a select box: the allowed values, "unknown" first when nullable, "other…" last when open."""
    values: list[Any] = list(col.allowed or ())
    if col.nullable:
        values.insert(0, UNKNOWN)
    if col.kind == "open_category":
        values.append(OTHER)
    return values


def default(col: Column) -> Any:
    """Initial widget value: the column's typical value (``Column.typical``; missing: "unknown" or empty)."""
    typical = col.typical
    if widget(col) == "number":
        return typical if isinstance(typical, int) else col.minimum
    if widget(col) == "text":
        return typical if isinstance(typical, str) else ""
    if typical is None and col.nullable:
        return UNKNOWN
    if typical in options(col):
        return typical
    return (col.allowed or options(col))[0]


def label(col: Column) -> str:
    """The field's label: the contract's words for it."""
    return col.label or col.name


def format_option(col: Column, option: Any) -> str:
    if option == UNKNOWN:
        return "unknown"
    if col.labels and option in col.labels:
        return f"{option} — {col.labels[option]}"
    return str(option)


def help_text(col: Column) -> str:
    """The field's help: what it holds, how to fill it in, and its column in a CSV."""
    text = col.description
    if col.kind == "integer":
        text += f" ({col.minimum}–{col.maximum})"
    elif col.kind == "icd9":
        text += ". An ICD-9 code such as 250.83, V57 or E888; empty: unknown"
    if col.hint:
        text += f". {col.hint}"
    return f"{text}.  \nCSV column: `{col.name}`"


def field_label(name: str) -> str:
    """How an error names a field: its label for a contract column (``time_in_hospital`` -> ``Length of stay
    (days)``), the name as given otherwise (``request``; ``encounters.3.age`` -> ``Age (encounters.3.age)``)."""
    column = BY_NAME.get(name)
    if column is not None:
        return label(column)
    last = name.rsplit(".", 1)[-1]
    return f"{label(BY_NAME[last])} ({name})" if last in BY_NAME else name


def to_value(col: Column, raw: Any, other: str = "") -> Any:
    """The JSON value of a field from its widget value; ValueError with a message when malformed."""
    if widget(col) == "number":
        if raw is None:
            raise ValueError("a number is required")
        return int(raw)
    if widget(col) == "text":
        text = (raw or "").strip()
        if not text:
            if col.nullable:
                return None
            raise ValueError("a value is required")
        if not ICD9_PATTERN.fullmatch(text.upper()):
            raise ValueError(f"{text!r} is not an ICD-9 code (e.g. 250.83, V57, E888)")
        return text.upper()
    if raw == UNKNOWN:
        return None
    if raw == OTHER:
        text = (other or "").strip()
        if not text:
            raise ValueError(f"type the value in the box under “{OTHER}”")
        if not OPEN_CATEGORY_PATTERN.fullmatch(text):
            raise ValueError(f"{text!r} is not a category name (a letter, then letters, digits, &, / or -)")
        return text
    return raw


def build_encounter(values: Mapping[str, Any], others: Mapping[str, str] | None = None
                    ) -> tuple[dict[str, Any], list[FieldError]]:
    """The encounter (contract names) from widget values keyed by column name, and the fields in error."""
    others = others or {}
    encounter: dict[str, Any] = {}
    errors: list[FieldError] = []
    for col in FORM_COLUMNS:
        try:
            encounter[col.name] = to_value(col, values.get(col.name, default(col)), others.get(col.name, ""))
        except ValueError as exc:
            errors.append(FieldError(col.name, str(exc)))
    return encounter, errors
