import pandas as pd
import pytest
from readmit_contract.columns import COLUMN_NAMES
from readmit_contract.dataset import read_raw_csv
from readmit_contract.reader import open_path
from readmit_contract.validate import canonical_ids
from readmit_data.loading import (
    LoadError,
    SourceMismatchError,
    SplitPlan,
    assign_splits,
    class_balance,
    load,
    loaded_batches,
    open_source,
    raw_counts,
    read_source,
)
from readmit_data.stores import engines, raw_batches, raw_encounters
from sqlalchemy import func, select

from .conftest import BATCH_SIZE, SOURCE, refusing


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
    """A row the database refuses in the middle of the batch undoes the whole batch; once the database takes
    it, the same batch loads whole."""
    raw, _ = stores
    plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
    _load(raw, source_frame)  # validation, test, train-0001
    victim = plan.train_batch(2)["encounter_id"].iloc[1499]  # the 1500th row of train-0002
    with refusing(raw, "raw_encounters", victim), pytest.raises(LoadError, match="refused by the test trigger") as err:
        _load(raw, source_frame)
    assert "train-0002 not loaded" in str(err.value) and "re-running the load completes it" in str(err.value)
    with raw.connect() as conn:
        in_train = conn.execute(select(func.count()).where(raw_encounters.c.split == "train")).scalar_one()
        batches = set(conn.execute(select(raw_batches.c.batch_id)).scalars())
    assert in_train == BATCH_SIZE
    assert "train-0002" not in batches
    (report,) = _load(raw, source_frame)
    assert report.batch_id == "train-0002" and report.rows_added == BATCH_SIZE


def _stored_train_ids(raw) -> list[str]:
    with raw.connect() as conn:
        query = select(raw_encounters.c.encounter_id).where(raw_encounters.c.split == "train")
        return list(conn.execute(query.order_by(raw_encounters.c.row_id)).scalars())


def test_a_changed_batch_size_never_skips_or_repeats_rows(stores, source_frame):
    """1,500 then 3,000 then all the rest (at 2,000): every train row exactly once, in source order."""
    raw, _ = stores
    train = SplitPlan.of(source_frame, BATCH_SIZE, 42).rows("train")
    load(raw, source_frame, source=SOURCE, batch_size=1_500, progress=False)
    load(raw, source_frame, source=SOURCE, batch_size=3_000, progress=False)
    rest = load(raw, source_frame, source=SOURCE, batch_size=2_000, batch="all", progress=False)
    assert _stored_train_ids(raw) == list(train["encounter_id"])
    table = loaded_batches(raw)
    table = table[table["split"] == "train"].sort_values("batch_number")
    first_rows, sizes = list(table["first_row"].astype(int)), list(table["rows"].astype(int))
    assert sizes[:2] == [1_500, 3_000] and all(n == 2_000 for n in sizes[2:-1]) and 0 < sizes[-1] <= 2_000
    assert first_rows == [sum(sizes[:i]) for i in range(len(sizes))] and sum(sizes) == len(train)
    assert list(table["batch_id"]) == [f"train-{n:04d}" for n in range(1, len(sizes) + 1)]
    assert [r.batch_id for r in rest] == list(table["batch_id"])[2:]

    # an explicit number names a recorded batch; there is no batch after the last row
    (again,) = load(raw, source_frame, source=SOURCE, batch=2, batch_size=500, progress=False)
    assert again.already_loaded and again.batch_id == "train-0002"
    with pytest.raises(ValueError, match="does not exist"):
        load(raw, source_frame, source=SOURCE, batch=len(sizes) + 1, progress=False)
    assert _stored_train_ids(raw) == list(train["encounter_id"])


def test_an_explicit_batch_number_is_the_next_or_a_recorded_one(tmp_path, source_frame):
    with engines(f"sqlite:///{tmp_path / 'raw.db'}", f"sqlite:///{tmp_path / 'clean.db'}") as (raw, _):
        with pytest.raises(ValueError, match="numbered in load order"):
            _load(raw, source_frame, batch=3)
        assert [r.batch_id for r in _load(raw, source_frame, batch=1)] == ["validation", "test", "train-0001"]
        (second,) = _load(raw, source_frame, batch="2")
        assert second.batch_id == "train-0002" and second.rows_added == BATCH_SIZE
        assert raw_counts(raw)["train"] == 2 * BATCH_SIZE


def test_the_patient_split_hashes_the_normalised_patient_id(tmp_path, source_frame):
    """456, 0456 and 000456 are one patient: one split, at the raw load too."""
    ids = pd.Series(["456", "0456", "000456", "457", "0457"])
    splits = assign_splits(ids, seed=42)
    assert len(set(splits[:3])) == 1 and splits[3] == splits[4]
    frame = source_frame.copy()
    repeat = frame["patient_nbr"].duplicated(keep="first")  # later encounters of a patient get leading zeros
    frame.loc[repeat, "patient_nbr"] = "00" + frame.loc[repeat, "patient_nbr"]
    assert repeat.sum() > 500
    with engines(f"sqlite:///{tmp_path / 'raw.db'}", f"sqlite:///{tmp_path / 'clean.db'}") as (raw, _):
        load(raw, frame, source="zeros", batch="all", batch_size=BATCH_SIZE, seed=42, progress=False)
        with raw.connect() as conn:
            stored = pd.read_sql(select(raw_encounters.c.patient_nbr, raw_encounters.c.split), conn)
    assert len(stored) == len(frame) and stored["patient_nbr"].str.startswith("00").sum() == repeat.sum()
    assert stored.groupby(canonical_ids(stored["patient_nbr"]))["split"].nunique().max() == 1


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


ODD_BUT_LEGAL = ["tab\there", "back\\slash", "ctrl\x1aZ", "é中😀", "NA", "null", "", "  spaced  ", "unit\x1fsep",
                 "N/A", "nan", "\\N", "'single'"]


def test_a_file_with_odd_but_legal_values_loads_what_pandas_reads(stores, tmp_path, source_frame):
    """Streamed (Arrow splits the chunks without quotes, pandas parses the others), the file gives the rows pandas
    reads whole, and the load stores exactly those."""
    frame = source_frame.head(600).reset_index(drop=True).copy()
    for i, value in enumerate(ODD_BUT_LEGAL):
        frame.loc[i, COLUMN_NAMES[3 + i]] = value
    frame.loc[400, "medical_specialty"] = "Surgery, General"  # written quoted: pandas parses that chunk
    path = tmp_path / "odd.csv"
    frame.to_csv(path, index=False)
    expected = read_raw_csv(path)[list(COLUMN_NAMES)]
    for chunk_rows in (7, 1_000):
        streamed = pd.concat([c.rows for c in open_path(path).chunks(chunk_rows)], ignore_index=True)
        pd.testing.assert_frame_equal(streamed[list(COLUMN_NAMES)], expected)
    raw, _ = stores
    load(raw, open_source(str(path)), source="odd", batch="all", batch_size=BATCH_SIZE, progress=False)
    with raw.connect() as conn:
        stored = pd.read_sql(select(*(raw_encounters.c[name] for name in COLUMN_NAMES))
                             .order_by(raw_encounters.c.source_line), conn)
    pd.testing.assert_frame_equal(stored, expected)
