"""Rows/s of node 1's raw load and preprocessing, on SQLite and MariaDB.

Uses the real diabetic_data.csv ($READMIT_REAL_DATA or ../shared/data beside the checkout)
when present, else 101,766 synthetic rows (written to a temporary CSV for the file load).
Baselines in the same run, on the same rows:
- load: pandas ``DataFrame.to_sql`` of the same rows into a fresh table (one transaction);
- file load: the load streaming the CSV (every line checked, split, fingerprinted, in batches) against
  ``read_csv`` of the whole file + ``to_sql``;
- preprocess: the contract's validate + clean in memory (no database at all).

    python bench/data_pipeline.py [--backends sqlite,mariadb] [--mysql-url URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy
from readmit_contract import clean, synthetic, validate
from readmit_contract.dataset import read_raw_csv
from readmit_data.loading import load, open_source
from readmit_data.preprocessing import preprocess_pending
from readmit_data.stores import engines, make_engine

REPO = Path(__file__).resolve().parents[1]


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


def bench_backend(urls: dict[str, str], frame, path: Path) -> dict[str, float]:
    n = len(frame)
    with engines(urls["raw"], urls["clean"]) as (raw, clean_store):
        reports, load_s = timed(lambda: load(raw, frame, source="bench", batch="all", progress=False))
        assert sum(r.rows_added for r in reports) == n
        lineages, pre_s = timed(lambda: preprocess_pending(raw, clean_store))
        assert sum(item.rows_in for item in lineages) == n
    with engines(urls["file"], urls["clean"]) as (raw, _):
        reports, file_s = timed(lambda: load(raw, open_source(str(path)), source=str(path), batch="all",
                                             progress=False))
        assert sum(r.rows_added for r in reports) == n
    baseline = make_engine(urls["base"])
    try:
        _, to_sql_s = timed(lambda: frame.to_sql("baseline_raw", baseline, index=False, chunksize=2000))
        _, csv_sql_s = timed(lambda: read_raw_csv(path).to_sql("baseline_csv", baseline, index=False, chunksize=2000))
    finally:
        baseline.dispose()
    return {"load": n / load_s, "to_sql": n / to_sql_s, "file": n / file_s, "csv_sql": n / csv_sql_s,
            "preprocess": n / pre_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,mariadb")
    parser.add_argument("--mysql-url", default=os.environ.get("TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-data-"))
    frame, path, label = source_frame(scratch)
    n = len(frame)
    print(f"data: {label}, {n:,} rows")
    _, mem_s = timed(lambda: clean(validate(frame).valid))
    print(f"in-memory contract validate + clean: {n / mem_s:,.0f} rows/s (preprocess baseline)")

    kinds = ("raw", "file", "clean", "base")
    results: dict[str, dict[str, float]] = {}
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                results[backend] = bench_backend({k: f"sqlite:///{tmp}/{k}.db" for k in kinds}, frame, path)
        elif backend == "mariadb":
            server = sqlalchemy.create_engine(args.mysql_url, isolation_level="AUTOCOMMIT")
            names = {k: f"readmit_bench_{k}_{uuid.uuid4().hex[:8]}" for k in kinds}
            try:
                with server.connect() as conn:
                    for db in names.values():
                        conn.execute(sqlalchemy.text(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
                results[backend] = bench_backend({k: f"{args.mysql_url}/{db}" for k, db in names.items()}, frame, path)
            finally:
                with server.connect() as conn:
                    for db in names.values():
                        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS `{db}`"))
                server.dispose()
    print(f"{'backend':8} {'load rows/s':>12} {'to_sql rows/s':>14} {'load/to_sql':>12} {'file load rows/s':>17} "
          f"{'read_csv+to_sql':>16} {'file/baseline':>14} {'preprocess rows/s':>18} {'preprocess/in-memory':>21}")
    for backend, r in results.items():
        print(f"{backend:8} {r['load']:12,.0f} {r['to_sql']:14,.0f} {r['load'] / r['to_sql']:12.2f} "
              f"{r['file']:17,.0f} {r['csv_sql']:16,.0f} {r['file'] / r['csv_sql']:14.2f} "
              f"{r['preprocess']:18,.0f} {r['preprocess'] / (n / mem_s):21.2f}")
    for leftover in scratch.iterdir():
        leftover.unlink()
    scratch.rmdir()


if __name__ == "__main__":
    main()
