import json

import pandas as pd
import pytest
from readmit_contract import TARGET, clean, validate
from readmit_data.loading import SplitPlan, load
from readmit_data.preprocessing import (
    PreprocessError,
    clean_counts,
    lineage_table,
    pending_batches,
    preprocess_batch,
    preprocess_pending,
)
from readmit_data.stores import clean_encounters, rejected_rows
from sqlalchemy import func, select

from .conftest import BATCH_SIZE, SOURCE, refusing


def _with_bad_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The source with three rows the contract refuses, one of each kind."""
    bad = frame.copy()
    bad.loc[bad.index[0], "time_in_hospital"] = "three"  # wrong type
    bad.loc[bad.index[1], "race"] = "Martian"  # outside the allowed set
    bad.loc[bad.index[2], "gender"] = "?"  # missing required field
    return bad


def _expected(frame: pd.DataFrame, plan_rows: pd.DataFrame) -> tuple[int, int, int]:
    """(clean, rejected, excluded) the contract predicts for these rows."""
    result = validate(frame.loc[plan_rows.index])
    cleaned = clean(result.valid)
    return len(cleaned.clean), result.n_rejected, len(cleaned.excluded)


def test_counts_match_the_contract_and_reruns_change_nothing(stores):
    raw, clean_store = stores
    from readmit_data.loading import read_source

    source = _with_bad_rows(read_source(SOURCE))
    for _ in range(3):
        load(raw, source, source=SOURCE + "+bad", batch_size=BATCH_SIZE, seed=42, progress=False)
    assert pending_batches(raw, clean_store) == ["validation", "test", "train-0001", "train-0002", "train-0003"]

    lineages = {item.batch_id: item for item in preprocess_pending(raw, clean_store, run_id="test-run")}
    plan = SplitPlan.of(source, BATCH_SIZE, 42)
    batch_rows = {
        "validation": plan.rows("validation"),
        "test": plan.rows("test"),
        **{f"train-{n:04d}": plan.train_batch(n) for n in (1, 2, 3)},
    }
    for batch_id, rows in batch_rows.items():
        expected_clean, expected_rejected, expected_excluded = _expected(source, rows)
        lineage = lineages[batch_id]
        assert lineage.rows_in == len(rows)
        assert (lineage.rows_out, lineage.rows_rejected, lineage.rows_excluded) == (
            expected_clean, expected_rejected, expected_excluded,
        ), batch_id
    assert sum(item.rows_rejected for item in lineages.values()) == 3

    counts = clean_counts(clean_store)
    assert counts["train"] == sum(lineages[f"train-{n:04d}"].rows_out for n in (1, 2, 3))
    with clean_store.connect() as conn:
        stored = pd.read_sql(select(clean_encounters), conn)
        reasons = pd.read_sql(select(rejected_rows), conn)
    assert stored["encounter_id"].is_unique
    assert stored.groupby("patient_nbr")["split"].nunique().max() == 1
    assert stored[TARGET].isin([0, 1]).all()
    assert not stored["discharge_disposition_id"].isin([11, 13, 14, 19, 20, 21]).any()
    assert stored["weight"].isna().mean() > 0.9  # "?" became NULL
    assert (stored == "?").sum().sum() == 0
    assert sorted(r.split(":")[0] for r in reasons["reason"]) == ["gender", "race", "time_in_hospital"]
    assert "wrong type" in " ".join(reasons["reason"])
    assert json.loads(reasons["row_json"].iloc[0])["encounter_id"] in set(source["encounter_id"])

    # a second run with nothing new changes nothing
    before = lineage_table(clean_store)
    assert pending_batches(raw, clean_store) == []
    assert preprocess_pending(raw, clean_store) == []
    assert clean_counts(clean_store) == counts
    pd.testing.assert_frame_equal(lineage_table(clean_store), before)
    # asking for a done batch again returns its lineage and writes nothing
    assert preprocess_batch(raw, clean_store, "train-0001").rows_out == lineages["train-0001"].rows_out
    assert clean_counts(clean_store) == counts


def test_failed_batch_leaves_nothing_and_rerun_completes(stores, source_frame):
    raw, clean_store = stores
    load(raw, source_frame, source=SOURCE, batch_size=BATCH_SIZE, seed=42, progress=False)
    preprocess_batch(raw, clean_store, "validation")
    plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
    # the database refuses a clean row of train-0001 half-way through its insert
    victim = clean(validate(plan.train_batch(1).iloc[1500:]).valid).clean["encounter_id"].iloc[0]
    with refusing(clean_store, "clean_encounters", int(victim)), pytest.raises(PreprocessError) as err:
        preprocess_batch(raw, clean_store, "train-0001", insert_chunk=500)
    assert "train-0001 not cleaned" in str(err.value) and "refused by the test trigger" in str(err.value)
    with clean_store.connect() as conn:
        partial = conn.execute(
            select(func.count()).where(clean_encounters.c.batch_id == "train-0001")
        ).scalar_one()
    assert partial == 0
    assert "train-0001" in pending_batches(raw, clean_store)

    done = preprocess_pending(raw, clean_store)
    assert [d.batch_id for d in done] == ["test", "train-0001"]
    assert pending_batches(raw, clean_store) == []
    assert done[1].rows_out == len(clean(validate(plan.train_batch(1)).valid).clean)
