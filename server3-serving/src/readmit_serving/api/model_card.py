"""The model card of the version being served (``readmit_contract.card``), read once when the version is loaded.

Training stores the card on the version's run (``model_card/card.json``) and records the sha256 of its bytes
in the version's tag ``model_card_sha256``. The API downloads it, checks the digest and parses it; the card
is served (``GET /model/card``) only when all three succeed. A card that is missing, has no recorded digest,
does not match it or cannot be read never refuses the model: the version serves predictions as usual and
``/model/card`` answers 404 with a sentence saying which (``CardState.message``). The details (exception,
digests) go to the log, never into an answer.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from readmit_contract.card import CARD_DIGEST_TAG, CARD_JSON, ModelCard, card_digest

log = logging.getLogger(__name__)

AVAILABLE, MISSING, NO_CHECKSUM, CHECKSUM_MISMATCH, UNREADABLE = (
    "available", "missing", "no_checksum", "checksum_mismatch", "unreadable")
MAX_CARD_BYTES = 8 * 1024 * 1024
"""A card larger than this is not read (a card is tens of KB)."""


@dataclass(frozen=True)
class CardState:
    status: str
    """One of ``AVAILABLE``, ``MISSING``, ``NO_CHECKSUM``, ``CHECKSUM_MISMATCH``, ``UNREADABLE``."""
    version: str
    card: ModelCard | None = None
    body: bytes = b""
    """The card as the API answers it (JSON, keys by alias: ``schema``), serialised once."""

    @property
    def message(self) -> str:
        """Why there is no card to serve, in a sentence (for a 404)."""
        version = self.version
        return {
            AVAILABLE: f"the model card of version {version} is available",
            MISSING: f"no model card was recorded for version {version}",
            NO_CHECKSUM: f"the model card of version {version} has no checksum recorded at training, so it is "
                         "not served",
            CHECKSUM_MISMATCH: f"the model card of version {version} does not match the checksum recorded at "
                               "training, so it is not served",
            UNREADABLE: f"the model card of version {version} cannot be read (details in the API's log)",
        }[self.status]


def _download(client: Any, run_id: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="readmit-card-") as tmp:
        path = Path(client.download_artifacts(run_id, CARD_JSON, tmp))
        if path.stat().st_size > MAX_CARD_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes, more than {MAX_CARD_BYTES}")
        return path.read_bytes()


def load_card(client: Any, name: str, version: str, run_id: str, tags: dict[str, str]) -> CardState:
    """The card of ``name`` version ``version`` (from run ``run_id``, its tags ``tags``): never raises."""
    expected = tags.get(CARD_DIGEST_TAG)
    try:
        data = _download(client, run_id)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the model serves without its card
        if expected is None:
            log.warning("%s v%s has no model card (run %s): %s", name, version, run_id, type(exc).__name__)
            return CardState(MISSING, version)
        log.warning("the model card of %s v%s cannot be downloaded from run %s: %s: %s", name, version, run_id,
                    type(exc).__name__, str(exc)[:500])
        return CardState(UNREADABLE, version)
    if expected is None:
        log.warning("%s v%s: run %s holds a model card but the version has no %s tag: not served", name, version,
                    run_id, CARD_DIGEST_TAG)
        return CardState(NO_CHECKSUM, version)
    actual = card_digest(data)
    if actual != expected.strip().lower():
        log.error("the model card of %s v%s does not match its checksum: recorded %s, downloaded %s", name, version,
                  expected, actual)
        return CardState(CHECKSUM_MISMATCH, version)
    try:
        card = ModelCard.model_validate_json(data)
    except ValueError as exc:  # pydantic's ValidationError (not JSON, or not a card) is a ValueError
        log.error("the model card of %s v%s cannot be parsed: %s", name, version, str(exc)[:1000])
        return CardState(UNREADABLE, version)
    if card.model.run_id != run_id:
        log.warning("the model card of %s v%s names run %s, the version's run is %s", name, version,
                    card.model.run_id, run_id)
    return CardState(AVAILABLE, version, card, card.model_dump_json(by_alias=True).encode())
