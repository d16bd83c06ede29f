"""ICD-9 diagnosis codes grouped into clinical categories (Strack et al., 2014)."""

from __future__ import annotations

from functools import lru_cache

from .columns import MISSING

DIAGNOSIS_GROUPS: tuple[str, ...] = (
    "circulatory",
    "respiratory",
    "digestive",
    "diabetes",
    "injury",
    "musculoskeletal",
    "genitourinary",
    "neoplasms",
    "other",
    "missing",
)

_RANGES: tuple[tuple[float, float, str], ...] = (
    (390, 459.99, "circulatory"),
    (785, 785.99, "circulatory"),
    (460, 519.99, "respiratory"),
    (786, 786.99, "respiratory"),
    (520, 579.99, "digestive"),
    (787, 787.99, "digestive"),
    (250, 250.99, "diabetes"),
    (800, 999.99, "injury"),
    (710, 739.99, "musculoskeletal"),
    (580, 629.99, "genitourinary"),
    (788, 788.99, "genitourinary"),
    (140, 239.99, "neoplasms"),
)


@lru_cache(maxsize=4096)
def diagnosis_group(code: str | None) -> str:
    """Clinical category of one ICD-9 code; ``missing`` for ``?``/None, ``other`` for V/E codes."""
    if code is None or code == MISSING or code != code:  # code != code: NaN
        return "missing"
    text = str(code)
    if text[:1] in ("V", "E"):
        return "other"
    try:
        value = float(text)
    except ValueError:
        return "other"
    for low, high, group in _RANGES:
        if low <= value <= high:
            return group
    return "other"
