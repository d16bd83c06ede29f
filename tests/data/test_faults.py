"""MariaDB killed (SIGKILL) in the middle of a batch load and of preprocessing: the step fails with a clear
error, nothing partial is in the store once the server is back, and a re-run completes with exact counts.

The server is a private one (``private_mariadb``): the shared test MariaDB is never stopped."""

from __future__ import annotations

import pytest
from readmit_contract import clean, validate
from readmit_data.loading import LoadError, SplitPlan, load, loaded_batches, raw_counts
from readmit_data.preprocessing import (
    PreprocessError,
    clean_counts,
    lineage_table,
    pending_batches,
    preprocess_batch,
    preprocess_pending,
)
from readmit_data.stores import batch_lineage, clean_encounters, engines, raw_encounters, rejected_rows
from sqlalchemy import func, select

from .conftest import BATCH_SIZE, SOURCE
from .private_mariadb import PrivateMariaDB

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    server = PrivateMariaDB(tmp_path_factory.mktemp("private-mariadb"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class KillAfter:
    """An ``on_chunk`` callback that kills the server once ``rows`` rows of the batch are inserted (uncommitted)."""

    def __init__(self, server: PrivateMariaDB, rows: int) -> None:
        self.server, self.rows, self.at = server, rows, None

    def __call__(self, rows_done: int) -> None:
        if self.at is None and rows_done >= self.rows:
            self.at = rows_done
            self.server.kill()


def _load(raw, frame, **kwargs):
    return load(raw, frame, source=SOURCE, batch_size=BATCH_SIZE, seed=42, progress=False, insert_chunk=400, **kwargs)


def test_mariadb_killed_during_batch_loads(mariadb, source_frame):
    plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
    with engines(mariadb.database("raw"), mariadb.database("clean")) as (raw, _):
        # the first load: validation and test in one transaction
        first = KillAfter(mariadb, 1_000)
        with pytest.raises(LoadError, match="not loaded: the RawData store failed .*re-running the load completes it"):
            _load(raw, source_frame, on_chunk=first)
        assert first.at is not None
        mariadb.start()
        assert raw_counts(raw) == {} and loaded_batches(raw).empty

        assert [r.batch_id for r in _load(raw, source_frame)] == ["validation", "test", "train-0001"]
        second = KillAfter(mariadb, 800)
        with pytest.raises(LoadError, match="train-0002 not loaded"):
            _load(raw, source_frame, on_chunk=second)
        assert second.at == 800
        mariadb.start()
        counts = raw_counts(raw)
        assert counts == {"validation": plan.counts()["validation"], "test": plan.counts()["test"],
                          "train": BATCH_SIZE}
        assert set(loaded_batches(raw)["batch_id"]) == {"validation", "test", "train-0001"}

        (again,) = _load(raw, source_frame)
        assert (again.batch_id, again.rows_added) == ("train-0002", BATCH_SIZE)
        _load(raw, source_frame, batch="all")
        assert raw_counts(raw) == plan.counts()
        with raw.connect() as conn:
            train = list(conn.execute(select(raw_encounters.c.encounter_id).where(raw_encounters.c.split == "train")
                                      .order_by(raw_encounters.c.row_id)).scalars())
        assert train == list(plan.rows("train")["encounter_id"])  # each row once, in order


def test_mariadb_killed_during_preprocessing(mariadb, source_frame):
    plan = SplitPlan.of(source_frame, BATCH_SIZE, 42)
    with engines(mariadb.database("raw"), mariadb.database("clean")) as (raw, clean_store):
        _load(raw, source_frame, batch="all")
        preprocess_batch(raw, clean_store, "validation")
        kill = KillAfter(mariadb, 600)
        with pytest.raises(PreprocessError, match="test not cleaned: the CleanData store failed .*stays pending"):
            preprocess_batch(raw, clean_store, "test", on_chunk=kill, insert_chunk=300)
        assert kill.at == 600
        mariadb.start()
        with clean_store.connect() as conn:
            for table in (clean_encounters, rejected_rows, batch_lineage):
                left = conn.execute(select(func.count()).select_from(table).where(table.c.batch_id == "test"))
                assert left.scalar_one() == 0, table.name
        assert pending_batches(raw, clean_store)[0] == "test"

        done = preprocess_pending(raw, clean_store)
        assert [d.batch_id for d in done] == ["test", *(f"train-{n:04d}" for n in range(1, plan.n_train_batches + 1))]
        lineage = lineage_table(clean_store).set_index("batch_id")
        batches = {"validation": plan.rows("validation"), "test": plan.rows("test"),
                   **{f"train-{n:04d}": plan.train_batch(n) for n in range(1, plan.n_train_batches + 1)}}
        for batch_id, rows in batches.items():
            expected = clean(validate(rows).valid)
            assert (lineage.loc[batch_id, "rows_in"], lineage.loc[batch_id, "rows_out"],
                    lineage.loc[batch_id, "rows_excluded"]) == (len(rows), len(expected.clean), len(expected.excluded))
        assert sum(clean_counts(clean_store).values()) == lineage["rows_out"].sum()
