"""Bulk writes on MariaDB: LOAD DATA LOCAL INFILE inside the batch's transaction stores exactly what an INSERT
stores, leaves what an INSERT refuses to the INSERT, leaves nothing when it fails, and gives way to multi-row
INSERTs when the server or client refuses LOCAL INFILE. The joined read of a raw batch returns the plain read's
frame."""

from __future__ import annotations

import logging
import tempfile

import numpy as np
import pandas as pd
import pytest
from readmit_contract.columns import COLUMN_NAMES, RAW_MAX_LENGTH
from readmit_contract.history import HISTORY_NAMES
from readmit_contract.reader import SOURCE_LINE
from readmit_data import preprocessing, stores
from readmit_data.loading import RAW_COLUMNS, load
from readmit_data.preprocessing import preprocess_pending, read_raw_batch
from readmit_data.stores import (
    LOAD_MIN_ROWS,
    LOAD_REFUSED,
    batch_lineage,
    bulk_engine,
    bulk_insert,
    clean_encounters,
    create_clean_schema,
    create_raw_schema,
    frame_rows,
    make_engine,
    patient_history,
    raw_batches,
    raw_encounters,
    rejected_rows,
)
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from .conftest import add_refusal

AT = "2024-05-06 07:08:09.123456"
TRICKY = ['say "hi"', "a,b", "back\\slash", "tab\there", "new\nline", "cr\rhere", "nul\x00byte", "é中😀 ", "?",
          "NULL", "\\N", "", "  spaced  ", "\x1e", "x\x1fy", "\\", "'quote'"]


def _tricky(frame: pd.DataFrame) -> pd.DataFrame:
    """Raw rows with a difficult value in some text field of the first rows, missing values (NULL), and
    source lines (some missing, as in a store migrated from the version before source lines)."""
    rows = frame.head(1_500).reset_index(drop=True).copy()
    for i, value in enumerate(TRICKY):
        rows.loc[i, COLUMN_NAMES[2 + i % 40]] = value
    rows.loc[[20, 21, 900], "weight"] = None
    rows.loc[22, "payer_code"] = np.nan
    rows[SOURCE_LINE] = pd.array(np.arange(2, len(rows) + 2), dtype="Int64")
    rows.loc[[30, 31], SOURCE_LINE] = pd.NA
    rows["split"] = "train"
    return rows


@pytest.fixture
def raw_pair(mysql_databases):
    """Two fresh RawData stores on the test MariaDB, each with the raw batch "b"."""
    engines = [make_engine(mysql_databases.create(label)) for label in ("raw", "raw")]
    for engine in engines:
        create_raw_schema(engine)
        with engine.begin() as conn:
            conn.execute(raw_batches.insert().values(batch_id="b", split="train", batch_number=1, rows=0, source="t",
                                                     source_fingerprint="", split_seed=0, loaded_at=AT))
    yield engines
    for engine in engines:
        engine.dispose()


@pytest.fixture
def inserts(monkeypatch):
    """Rows each bulk write sent as INSERTs, and how many LOAD DATA files it made."""
    seen = {"inserted": 0, "files": 0}
    insert, mkstemp = stores._insert, tempfile.mkstemp

    def counting_insert(conn, table, columns, rows, constants, chunk, on_chunk, start, stop):
        seen["inserted"] += stop - start
        return insert(conn, table, columns, rows, constants, chunk, on_chunk, start, stop)

    def counting_mkstemp(*args, **kwargs):
        seen["files"] += 1
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(stores, "_insert", counting_insert)
    monkeypatch.setattr(tempfile, "mkstemp", counting_mkstemp)
    return seen


def _table(engine, table, order, without=()) -> list[tuple]:
    columns = [c for c in table.columns if c.name not in without]
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(*columns).order_by(order)).all()]


def test_load_data_stores_exactly_what_an_insert_stores(raw_pair, source_frame, inserts, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows = _tricky(source_frame)
    fast, reference = raw_pair
    done = []
    with bulk_engine(fast).begin() as conn:
        bulk_insert(conn, raw_encounters, RAW_COLUMNS, rows, chunk=400, on_chunk=done.append,
                    constants={"batch_id": "b", "loaded_at": AT})
    assert inserts == {"inserted": 0, "files": 1} and done == [400, 800, 1_200, 1_500]
    assert list(tmp_path.iterdir()) == []  # the file is gone
    with reference.begin() as conn:  # the reference: SQLAlchemy's own INSERT of the same values
        names = [*RAW_COLUMNS, "batch_id", "loaded_at"]
        conn.execute(raw_encounters.insert(), [dict(zip(names, (*r, "b", AT), strict=True))
                                              for r in frame_rows(rows[RAW_COLUMNS])])
    # the same rows in the same order; row_id, a surrogate key, may leave gaps between LOAD statements (InnoDB's
    # auto-increment for bulk inserts), so it is compared by order only
    stored = _table(fast, raw_encounters, raw_encounters.c.row_id, without=("row_id",))
    assert stored == _table(reference, raw_encounters, raw_encounters.c.row_id, without=("row_id",))
    assert [row[0] for row in stored] == list(rows["encounter_id"])
    by_id = {row[0]: row for row in stored}
    for i, value in enumerate(TRICKY):
        assert by_id[rows.loc[i, "encounter_id"]][2 + i % 40] == value
    weight, line = COLUMN_NAMES.index("weight"), len(COLUMN_NAMES)
    assert by_id[rows.loc[20, "encounter_id"]][weight] is None and by_id[rows.loc[0, "encounter_id"]][weight] == "?"
    assert by_id[rows.loc[30, "encounter_id"]][line] is None and by_id[rows.loc[32, "encounter_id"]][line] == 34


def test_row_tuples_and_floats_load_exactly(mysql_databases, inserts):
    """What history and rejected rows send: tuples of plain values, floats included, text with JSON escapes."""
    fast, reference = (make_engine(mysql_databases.create("clean")) for _ in range(2))
    rng = np.random.default_rng(3)
    values = rng.standard_normal((600, len(HISTORY_NAMES))) * 10.0 ** rng.integers(-8, 12, (600, len(HISTORY_NAMES)))
    values[:4, 0] = [0.1, 1 / 3, 0.0, 1e20]
    history = [(i, 1_000 + i // 3, *map(float, row)) for i, row in enumerate(values)]
    rejected = [(f"b{i % 3}", None if i % 5 else f"{i}", f"reason {TRICKY[i % len(TRICKY)]}",
                 f'{{"v": "{TRICKY[i % len(TRICKY)]!r}", "n": null}}', AT, None if i % 7 == 0 else i)
                for i in range(400)]
    history_columns = ["encounter_id", "patient_nbr", *HISTORY_NAMES]
    rejected_columns = ["batch_id", "encounter_id", "reason", "row_json", "rejected_at", "source_line"]
    for engine in (fast, reference):
        create_clean_schema(engine)
    with bulk_engine(fast).begin() as conn:
        bulk_insert(conn, patient_history, history_columns, history, chunk=250)
        bulk_insert(conn, rejected_rows, rejected_columns, rejected)
    assert inserts == {"inserted": 0, "files": 2}
    with reference.begin() as conn:
        conn.execute(patient_history.insert(), [dict(zip(history_columns, r, strict=True)) for r in history])
        conn.execute(rejected_rows.insert(), [dict(zip(rejected_columns, r, strict=True)) for r in rejected])
    for table, order in ((patient_history, patient_history.c.encounter_id), (rejected_rows, rejected_rows.c.id)):
        assert _table(fast, table, order) == _table(reference, table, order)
    assert _table(fast, patient_history, patient_history.c.encounter_id)[1][2] == pytest.approx(1 / 3, rel=1e-6)
    for engine in (fast, reference):
        engine.dispose()


def test_what_an_insert_refuses_is_refused_as_by_an_insert(raw_pair, mysql_databases, source_frame, inserts, tmp_path,
                                                           monkeypatch):
    """LOCAL makes the server take a value too long (truncated) or a duplicate key (skipped) with a warning: that
    chunk is rolled back and INSERTed, which refuses it as always, and nothing of the transaction stays."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fast, _ = raw_pair
    rows = _tricky(source_frame)
    rows.loc[700, "medical_specialty"] = "x" * (RAW_MAX_LENGTH + 1)
    with pytest.raises(DBAPIError) as err, bulk_engine(fast).begin() as conn:
        bulk_insert(conn, raw_encounters, RAW_COLUMNS, rows, chunk=500, constants={"batch_id": "b", "loaded_at": AT})
    assert err.value.orig.args[0] == 1406  # Data too long: the INSERT's own error
    assert inserts["inserted"] == 500  # the second chunk, rows 500..999, went again as an INSERT
    assert _table(fast, raw_encounters, raw_encounters.c.row_id) == []
    assert list(tmp_path.iterdir()) == []

    history_columns = ["encounter_id", "patient_nbr", *HISTORY_NAMES]
    twice = [(i % 300, 7, *([1.5] * len(HISTORY_NAMES))) for i in range(400)]  # encounter_id repeats: a duplicate key
    engine = make_engine(mysql_databases.create("clean"))
    create_clean_schema(engine)
    with pytest.raises(DBAPIError) as err, bulk_engine(engine).begin() as conn:
        bulk_insert(conn, patient_history, history_columns, twice)
    assert err.value.orig.args[0] == 1062
    assert _table(engine, patient_history, patient_history.c.encounter_id) == []
    engine.dispose()


def test_a_failure_mid_batch_leaves_nothing_and_no_file(raw_pair, source_frame, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fast, _ = raw_pair
    rows = _tricky(source_frame)
    add_refusal(fast, "raw_encounters", rows.loc[1_100, "encounter_id"])  # in the third chunk of 500
    done: list[int] = []
    with pytest.raises(DBAPIError, match="refused by the test trigger"), bulk_engine(fast).begin() as conn:
        bulk_insert(conn, raw_encounters, RAW_COLUMNS, rows, chunk=500, on_chunk=done.append,
                    constants={"batch_id": "b", "loaded_at": AT})
    assert done == [500, 1_000]  # two chunks were in, uncommitted
    with fast.connect() as conn:
        assert conn.execute(select(func.count()).select_from(raw_encounters)).scalar_one() == 0
    assert list(tmp_path.iterdir()) == []


def test_refused_local_infile_falls_back_to_inserts_and_says_so_once(mysql_databases, source_frame, inserts, caplog):
    """A connection whose local_infile is off (as a server with it off) gets the server's refusal: the load goes
    on with multi-row INSERTs and stores the same rows, with one warning that names neither host nor URL."""
    url = mysql_databases.create("raw")
    refusing, loading = make_engine(f"{url}?local_infile=0"), make_engine(mysql_databases.create("raw"))
    frame = source_frame.head(3_000)
    with caplog.at_level(logging.WARNING, logger="readmit_data.stores"):
        load(refusing, frame, source="s", batch="all", batch_size=1_000, progress=False)
    assert inserts["inserted"] == len(frame)
    (record,) = [r for r in caplog.records if "LOAD DATA LOCAL INFILE" in r.getMessage()]
    message = record.getMessage()
    assert "refused" in message and refusing.url.database in message
    assert any(f"({code}," in message for code in LOAD_REFUSED)
    assert "127.0.0.1" not in message and "mysql+pymysql" not in message and "root" not in message

    before = dict(inserts)
    load(loading, frame, source="s", batch="all", batch_size=1_000, progress=False)
    assert inserts["files"] - before["files"] == 4  # validation, test, train-0001, train-0002 through LOAD DATA
    assert inserts["inserted"] - before["inserted"] < LOAD_MIN_ROWS  # train-0003, a few rows: one INSERT
    without = ("row_id", "loaded_at")
    assert _table(refusing, raw_encounters, raw_encounters.c.row_id, without) == \
        _table(loading, raw_encounters, raw_encounters.c.row_id, without)
    for engine in (refusing, loading):
        engine.dispose()


def test_preprocessing_stores_the_same_through_load_data_and_inserts(mysql_databases, source_frame, inserts):
    """The same raw batches cleaned into a store taking LOAD DATA and one refusing it: the same clean rows (NULL
    for "?"), rejected rows and patient history."""
    raw = make_engine(mysql_databases.create("raw"))
    frame = source_frame.head(2_500).copy()
    frame.loc[3, "time_in_hospital"] = "three"
    frame.loc[4, "race"] = "Martian\t\\"
    load(raw, frame, source="s", batch="all", batch_size=1_000, progress=False)
    fast = make_engine(mysql_databases.create("clean"))
    slow = make_engine(f"{mysql_databases.create('clean')}?local_infile=0")
    preprocess_pending(raw, fast)
    assert inserts["inserted"] < LOAD_MIN_ROWS and inserts["files"] >= 10  # clean rows and history of 5 batches
    preprocess_pending(raw, slow)
    assert inserts["inserted"] > len(frame)  # clean rows and history, all INSERTed
    tables = ((clean_encounters, clean_encounters.c.encounter_id, ("cleaned_at",)),
              (rejected_rows, rejected_rows.c.id, ("id", "rejected_at")),  # id: a surrogate key, by order
              (patient_history, patient_history.c.encounter_id, ()),
              (batch_lineage, batch_lineage.c.batch_id, ("seconds", "processed_at")))
    for table, order, without in tables:
        assert _table(fast, table, order, without) == _table(slow, table, order, without), table.name
    weight = [c.name for c in clean_encounters.columns].index("weight")
    assert any(row[weight] is None for row in _table(fast, clean_encounters, clean_encounters.c.encounter_id))
    for engine in (raw, fast, slow):
        engine.dispose()


def _plain_read(raw, batch_id: str) -> pd.DataFrame:
    query = select(*(raw_encounters.c[name] for name in preprocessing.RAW_READ)).where(
        raw_encounters.c.batch_id == batch_id).order_by(raw_encounters.c.row_id)
    with raw.connect() as conn:
        return pd.read_sql(query, conn)


@pytest.mark.parametrize("case", ["plain", "nulls", "separator", "null mark", "all null"])
def test_the_joined_read_of_a_raw_batch_is_the_plain_read(raw_pair, source_frame, monkeypatch, case):
    """Values holding the separator, being the NULL mark, or a column all NULL: the joined read declines
    and the plain read answers; otherwise the joined read answers, the same frame."""
    fast, _ = raw_pair
    nulls = _tricky(source_frame).replace({"\x1e": "rs", "x\x1fy": "us"})  # NULL in weight, payer_code, source_line
    rows = nulls.fillna({"weight": "?", "payer_code": "?"}).assign(**{SOURCE_LINE: np.arange(2, len(nulls) + 2)})
    if case == "nulls":
        rows = nulls
    elif case == "separator":
        rows.loc[5, "diag_2"] = "x\x1fy"
    elif case == "null mark":
        rows = nulls
        rows.loc[5, "diag_2"], rows.loc[6, "diag_2"] = "\x1e", None
    elif case == "all null":
        rows["weight"] = None
    with bulk_engine(fast).begin() as conn:
        bulk_insert(conn, raw_encounters, RAW_COLUMNS, rows, constants={"batch_id": "b", "loaded_at": AT})
    joined = []
    read_joined = preprocessing._read_joined
    monkeypatch.setattr(preprocessing, "_read_joined",
                        lambda conn, batch_id: joined.append(read_joined(conn, batch_id)) or joined[-1])
    read = read_raw_batch(fast, "b")
    assert (joined[0] is not None) == (case in ("plain", "nulls"))
    pd.testing.assert_frame_equal(read, _plain_read(fast, "b"), check_exact=True)
    assert len(read) == len(rows)
