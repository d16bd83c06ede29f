"""CleanData's patient_history: after every cleaned batch, in any order of batches, it equals the contract's
history of the clean encounters; a failed batch leaves it as it was; a store from before it is filled; and
training reads each encounter with its history."""

from __future__ import annotations

import pandas as pd
import pytest
from readmit_contract import clean, validate
from readmit_contract.history import HISTORY_INPUTS, HISTORY_NAMES, history_table
from readmit_data.loading import SplitPlan, load
from readmit_data.preprocessing import PreprocessError, preprocess_batch
from readmit_data.stores import clean_encounters, create_clean_schema, patient_history
from readmit_data.training import read_split
from sqlalchemy import delete, func, select

from .conftest import BATCH_SIZE, SOURCE, refusing


def _stored(clean_store) -> pd.DataFrame:
    with clean_store.connect() as conn:
        stored = pd.read_sql(select(patient_history), conn)
    return stored.sort_values("encounter_id").reset_index(drop=True)


def _expected(clean_store) -> pd.DataFrame:
    with clean_store.connect() as conn:
        encounters = pd.read_sql(select(*(clean_encounters.c[n] for n in HISTORY_INPUTS)), conn)
    return history_table(encounters).sort_values("encounter_id").reset_index(drop=True)


def _assert_in_step(clean_store) -> pd.DataFrame:
    stored, expected = _stored(clean_store), _expected(clean_store)
    assert len(stored) == len(expected)
    pd.testing.assert_frame_equal(stored, expected, check_dtype=False)
    return stored


def _loaded_and_cleaned(stores, source_frame, *batches: str):
    """Every batch of the source loaded into RawData, then ``batches`` cleaned in that order."""
    raw, clean_store = stores
    load(raw, source_frame, source=SOURCE, batch="all", batch_size=BATCH_SIZE, seed=42, progress=False)
    for batch in batches:
        preprocess_batch(raw, clean_store, batch)
    return raw, clean_store


def test_history_follows_batches_in_any_order(stores, source_frame):
    """Train batches cleaned out of order (a patient's later encounter first): each time the table is
    recomputed for the batch's patients and matches the contract's history of what is clean so far."""
    raw, clean_store = _loaded_and_cleaned(stores, source_frame)
    for batch in ("train-0003", "validation", "train-0001", "test", "train-0002"):
        preprocess_batch(raw, clean_store, batch)
        stored = _assert_in_step(clean_store)
    assert (stored["hist_encounters"] > 0).sum() > 100  # patients with earlier encounters were seen


def test_a_failed_batch_leaves_history_as_it_was(stores, source_frame):
    """The database refuses a history row of the batch: the batch's clean rows and every history row stay as
    before (one transaction), and the re-run brings the table in step."""
    raw, clean_store = _loaded_and_cleaned(stores, source_frame, "train-0001")
    before = _stored(clean_store)
    plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
    victim = int(clean(validate(plan.train_batch(2)).valid).clean["encounter_id"].iloc[-1])
    with refusing(clean_store, "patient_history", victim), pytest.raises(PreprocessError):
        preprocess_batch(raw, clean_store, "train-0002")
    pd.testing.assert_frame_equal(_stored(clean_store), before)
    with clean_store.connect() as conn:
        kept = conn.execute(select(func.count()).where(clean_encounters.c.batch_id == "train-0002")).scalar_one()
    assert kept == 0
    preprocess_batch(raw, clean_store, "train-0002")
    _assert_in_step(clean_store)


def test_a_store_from_before_history_is_filled(stores, source_frame):
    _, clean_store = _loaded_and_cleaned(stores, source_frame, "validation", "train-0001")
    with clean_store.begin() as conn:
        conn.execute(delete(patient_history))
    assert _stored(clean_store).empty
    create_clean_schema(clean_store)  # what every command does on start: the migration fills the table
    _assert_in_step(clean_store)


def test_training_reads_each_encounter_with_its_history(stores, source_frame):
    _, clean_store = _loaded_and_cleaned(stores, source_frame, "train-0001", "train-0002")
    train = read_split(clean_store, "train", ["train-0001"])
    expected = _stored(clean_store).set_index("encounter_id").loc[train["encounter_id"], list(HISTORY_NAMES)]
    assert train["encounter_id"].is_monotonic_increasing and set(train["batch_id"]) == {"train-0001"}
    pd.testing.assert_frame_equal(train[list(HISTORY_NAMES)].reset_index(drop=True),
                                  expected.reset_index(drop=True), check_dtype=False)
