"""Rows/s of node 1's raw load and preprocessing, on SQLite and MariaDB.

Uses the real diabetic_data.csv ($READMIT_REAL_DATA or ../shared/data beside the checkout)
when present, else 101,766 synthetic rows (written to a temporary CSV for the file load).
Baselines in the same run, on the same rows, each measured beside what it is the baseline of, in ``--runs``
runs on fresh stores: rows/s are the best run's, ratios the median of the runs' own ratios (pandas' to_sql
baselines: the first run only):
- load (a frame) and file load (streaming the CSV: every line checked, split, fingerprinted, in batches);
  - MariaDB: the server's own ``LOAD DATA LOCAL INFILE`` of the same rows and columns (a CSV written to a
    temporary file beforehand) into a fresh RawData store's raw_encounters, one transaction;
  - both: pandas ``DataFrame.to_sql`` of the frame, and ``read_csv`` of the whole file + ``to_sql``;
- preprocess: the contract's validate + clean of the same rows in memory (no database at all).

    python bench/data_pipeline.py [--backends sqlite,mariadb] [--mysql-url URL] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sqlalchemy
from readmit_contract import clean, synthetic, validate
from readmit_contract.columns import COLUMN_NAMES
from readmit_contract.dataset import read_raw_csv
from readmit_data.loading import load, open_source
from readmit_data.preprocessing import preprocess_pending
from readmit_data.stores import create_raw_schema, db_timestamp, engines, make_engine, raw_batches, utcnow

REPO = Path(__file__).resolve().parents[1]
LOAD_COLUMNS = [*COLUMN_NAMES, "source_line", "split", "batch_id", "loaded_at"]


def source_frame(scratch: Path):
    """(frame, path of the same rows as CSV, label)."""
    path = Path(os.environ.get("READMIT_REAL_DATA", REPO.parent / "shared" / "data" / "diabetic_data.csv"))
    if path.exists():
        return read_raw_csv(path), path, f"real file ({path.name})"
    frame = synthetic.generate(101_766, seed=0)
    frame.to_csv(scratch / "diabetic_data.csv", index=False)
    return frame, scratch / "diabetic_data.csv", "synthetic (real file absent)"


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def load_data_local_infile(url: str, frame, scratch: Path) -> float:
    """Seconds of MariaDB's own LOAD DATA LOCAL INFILE of ``frame`` (the columns a load writes) into a fresh
    raw_encounters, in one transaction; the CSV is written before the clock starts."""
    rows = frame.assign(source_line=np.arange(2, len(frame) + 2), split="train", batch_id="baseline",
                        loaded_at=db_timestamp(utcnow()))[LOAD_COLUMNS]
    path = scratch / "load_data_baseline.csv"
    rows.to_csv(path, index=False, header=False, lineterminator="\n")
    engine = sqlalchemy.create_engine(url, connect_args={"local_infile": True})
    columns = ", ".join(f"`{name}`" for name in LOAD_COLUMNS)
    try:
        create_raw_schema(engine)
        with engine.begin() as conn:
            conn.execute(raw_batches.insert().values(
                batch_id="baseline", split="train", batch_number=1, rows=0, source="bench", source_fingerprint="",
                split_seed=0, loaded_at=utcnow()))
        started = time.perf_counter()
        with engine.begin() as conn:
            loaded = conn.exec_driver_sql(
                "LOAD DATA LOCAL INFILE %s INTO TABLE raw_encounters CHARACTER SET utf8mb4 "
                f"FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' LINES TERMINATED BY '\\n' ({columns})",
                (str(path),)).rowcount
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
        path.unlink()
    assert loaded == len(frame), loaded
    return seconds


def run_once(urls: dict[str, str], frame, path: Path, scratch: Path, to_sql: bool) -> dict[str, float]:
    """Rows/s of one run on fresh stores: the LOAD DATA baseline (MariaDB), the load, the file load, then the
    in-memory baseline and preprocessing; pandas' to_sql baselines when asked."""
    n = len(frame)
    result: dict[str, float] = {}
    if urls["raw"].startswith("mysql"):
        result["load_data"] = n / load_data_local_infile(urls["load_data"], frame, scratch)
    with engines(urls["raw"], urls["clean"]) as (raw, clean_store):
        reports, load_s = timed(lambda: load(raw, frame, source="bench", batch="all", progress=False))
        assert sum(r.rows_added for r in reports) == n
        with engines(urls["file"], urls["clean"]) as (file_raw, _):
            reports, file_s = timed(lambda: load(file_raw, open_source(str(path)), source=str(path), batch="all",
                                                 progress=False))
            assert sum(r.rows_added for r in reports) == n
        _, mem_s = timed(lambda: clean(validate(frame).valid))
        lineages, pre_s = timed(lambda: preprocess_pending(raw, clean_store))
        assert sum(item.rows_in for item in lineages) == n
    result.update(load=n / load_s, file=n / file_s, in_memory=n / mem_s, preprocess=n / pre_s)
    if to_sql:
        baseline = make_engine(urls["base"])
        try:
            _, to_sql_s = timed(lambda: frame.to_sql("baseline_raw", baseline, index=False, chunksize=2000))
            _, csv_sql_s = timed(lambda: read_raw_csv(path).to_sql("baseline_csv", baseline, index=False,
                                                                   chunksize=2000))
        finally:
            baseline.dispose()
        result.update(to_sql=n / to_sql_s, csv_sql=n / csv_sql_s)
    return result


@contextmanager
def fresh_stores(backend: str, mysql_url: str) -> Iterator[dict[str, str]]:
    """URLs of new, empty stores (SQLite files or MariaDB databases), removed afterwards."""
    kinds = ("raw", "file", "clean", "base", "load_data")
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield {k: f"sqlite:///{tmp}/{k}.db" for k in kinds}
        return
    server = sqlalchemy.create_engine(mysql_url, isolation_level="AUTOCOMMIT")
    names = {k: f"readmit_bench_{k}_{uuid.uuid4().hex[:8]}" for k in kinds}
    try:
        with server.connect() as conn:
            for db in names.values():
                conn.execute(sqlalchemy.text(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
        yield {k: f"{mysql_url}/{db}" for k, db in names.items()}
    finally:
        with server.connect() as conn:
            for db in names.values():
                conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS `{db}`"))
        server.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,mariadb")
    parser.add_argument("--mysql-url", default=os.environ.get("TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306"))
    parser.add_argument("--runs", type=int, default=3, help="runs per backend; the best of each figure is shown")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-data-"))
    frame, path, label = source_frame(scratch)
    n = len(frame)
    print(f"data: {label}, {n:,} rows; {args.runs} runs per backend, each figure measured beside its baseline: "
          "rows/s of the best run, ratios the median of the runs' ratios")

    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for backend in args.backends.split(","):
            runs[backend] = []
            for run in range(args.runs):
                with fresh_stores(backend, args.mysql_url) as urls:
                    runs[backend].append(run_once(urls, frame, path, scratch, to_sql=run == 0))
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    results = {backend: {key: max(r[key] for r in each if key in r) for key in each[0]}
               for backend, each in runs.items()}

    def ratio(backend: str, a: str, b: str, width: int) -> str:
        ratios = [r[a] / r[b] for r in runs[backend] if b in r]
        return f"{statistics.median(ratios):{width}.2f}" if ratios else f"{'-':>{width}}"

    def rate(r: dict[str, float], key: str, width: int) -> str:
        return f"{r[key]:{width},.0f}" if key in r else f"{'-':>{width}}"

    print("\nloads (rows/s; LOAD DATA = the server's own LOAD DATA LOCAL INFILE of the same rows)")
    print(f"{'backend':8} {'load':>9} {'file load':>10} {'LOAD DATA':>10} {'load/LOAD DATA':>15} "
          f"{'file/LOAD DATA':>15} {'to_sql':>9} {'load/to_sql':>12} {'read_csv+to_sql':>16} {'file/that':>10}")
    for backend, r in results.items():
        print(f"{backend:8} {r['load']:9,.0f} {r['file']:10,.0f} {rate(r, 'load_data', 10)} "
              f"{ratio(backend, 'load', 'load_data', 15)} {ratio(backend, 'file', 'load_data', 15)} "
              f"{r['to_sql']:9,.0f} {ratio(backend, 'load', 'to_sql', 12)} {r['csv_sql']:16,.0f} "
              f"{ratio(backend, 'file', 'csv_sql', 10)}")
    print("\npreprocessing (rows/s; in memory = the contract's validate + clean of the same rows, no database)")
    print(f"{'backend':8} {'preprocess':>11} {'in memory':>10} {'preprocess/in memory':>21}")
    for backend, r in results.items():
        print(f"{backend:8} {r['preprocess']:11,.0f} {r['in_memory']:10,.0f} "
              f"{ratio(backend, 'preprocess', 'in_memory', 21)}")


if __name__ == "__main__":
    main()
