import pandas as pd
import pytest
from sqlalchemy import func, select

from readmit_data.loading import (
    SourceMismatchError,
    SplitPlan,
    assign_splits,
    class_balance,
    load,
    loaded_batches,
    raw_counts,
    read_source,
)
from readmit_data.stores import raw_batches, raw_encounters

from .conftest import BATCH_SIZE, SOURCE


def _load(raw, frame, **kwargs):
    return load(raw, frame, source=SOURCE, batch_size=BATCH_SIZE, seed=42, progress=False, **kwargs)


def test_patient_split_is_deterministic_and_about_70_15_15(source_frame):
    splits = assign_splits(source_frame["patient_nbr"], seed=42)
    again = assign_splits(source_frame["patient_nbr"], seed=42)
    assert (splits == again).all()
    assert (splits != assign_splits(source_frame["patient_nbr"], seed=43)).any()
    share = pd.Series(splits).value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.03)
    assert share["validation"] == pytest.approx(0.15, abs=0.03)
    assert share["test"] == pytest.approx(0.15, abs=0.03)
    per_patient = pd.DataFrame({"p": source_frame["patient_nbr"], "s": splits}).groupby("p")["s"].nunique()
    assert per_patient.max() == 1


def test_batches_one_per_run_then_nothing(stores, source_frame):
    raw, _ = stores
    plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
    n = plan.n_train_batches
    assert n == -(-plan.counts()["train"] // BATCH_SIZE) and n >= 2

    first = _load(raw, source_frame)
    assert [r.batch_id for r in first] == ["validation", "test", "train-0001"]
    assert raw_counts(raw) == {"validation": plan.counts()["validation"], "test": plan.counts()["test"],
                               "train": BATCH_SIZE}
    for number in range(2, n + 1):
        (report,) = _load(raw, source_frame)
        assert report.batch_id == f"train-{number:04d}" and not report.already_loaded
    assert report.rows_added == plan.counts()["train"] - (n - 1) * BATCH_SIZE  # the last one smaller
    assert raw_counts(raw) == plan.counts()

    (again,) = _load(raw, source_frame)
    assert again.already_loaded and again.rows_added == 0 and "0 rows added" in again.message
    (explicit,) = _load(raw, source_frame, batch=1)
    assert explicit.already_loaded and explicit.message == "train-0001: already loaded, 0 rows added"
    assert raw_counts(raw) == plan.counts()

    # rows are the source's rows, in source order, with their split and batch
    with raw.connect() as conn:
        stored = pd.read_sql(select(raw_encounters).order_by(raw_encounters.c.row_id), conn)
    assert set(stored["encounter_id"]) == set(source_frame["encounter_id"])
    train = stored[stored["split"] == "train"]
    assert list(train["encounter_id"]) == list(plan.rows("train")["encounter_id"])
    assert stored.groupby("patient_nbr")["split"].nunique().max() == 1
    assert stored["loaded_at"].notna().all()
    balance = class_balance(raw)
    assert balance.to_numpy().sum() == len(source_frame) and "<30" in balance.columns


def test_load_all_at_once(stores, source_frame):
    raw, _ = stores
    reports = _load(raw, source_frame, batch="all")
    assert sum(r.rows_added for r in reports) == len(source_frame)
    assert list(loaded_batches(raw)["rows"].astype(int)).count(BATCH_SIZE) >= 2


def test_failure_mid_batch_leaves_no_partial_batch(stores, source_frame):
    raw, _ = stores
    _load(raw, source_frame)  # validation, test, train-0001

    def crash_after_first_chunk(rows_done: int) -> None:
        raise ConnectionError(f"connection lost after {rows_done} rows")

    with pytest.raises(ConnectionError):
        _load(raw, source_frame, on_chunk=crash_after_first_chunk)
    counts = raw_counts(raw)
    assert counts["train"] == BATCH_SIZE
    assert "train-0002" not in set(loaded_batches(raw)["batch_id"])
    (report,) = _load(raw, source_frame)  # the same batch loads whole afterwards
    assert report.batch_id == "train-0002" and report.rows_added == BATCH_SIZE


def test_database_error_mid_batch_rolls_back(stores, source_frame):
    """A row the database refuses (a duplicate key in the middle of the batch) undoes the whole batch."""
    raw, _ = stores
    broken = source_frame.copy()
    plan = SplitPlan.of(broken, BATCH_SIZE, 42)
    train_ids = plan.rows("train")["encounter_id"]
    # in batch 1, the 1500th train row repeats the id of the 10th
    broken.loc[train_ids.index[1499], "encounter_id"] = train_ids.iloc[9]
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        load(raw, broken, source=SOURCE, batch_size=BATCH_SIZE, seed=42, progress=False)
    with raw.connect() as conn:
        in_train = conn.execute(select(func.count()).where(raw_encounters.c.split == "train")).scalar_one()
        batches = set(conn.execute(select(raw_batches.c.batch_id)).scalars())
    assert in_train == 0
    assert "train-0001" not in batches


def test_another_source_is_refused(stores, source_frame):
    raw, _ = stores
    _load(raw, source_frame)
    with pytest.raises(SourceMismatchError):
        _load(raw, read_source("synthetic:8000:6"))
    with pytest.raises(SourceMismatchError):
        load(raw, source_frame, source=SOURCE, batch_size=BATCH_SIZE, seed=7, progress=False)


def test_unknown_batch_number(stores, source_frame):
    raw, _ = stores
    with pytest.raises(ValueError, match="does not exist"):
        _load(raw, source_frame, batch=99)
