"""Command line for node 1's jobs (scripts, tests, `make up`):

    readmit-data load [--source SRC] [--batch next|all|N]   one raw batch (the notebook's job)
    readmit-data preprocess                                 clean every pending batch (the DAG's job)
    readmit-data status                                     rows per store and split, lineage
    readmit-data record-checksum [--version N]              tag a version registered before checksums
                                                            existed (default: the champion)

A load streams its source (progress on a terminal, one line per batch otherwise); a malformed line
is set aside with its line number, not a reason to stop. Errors (no data file, another source in
the store, a store failing mid-batch) end the command with a one-line message and exit status 1.

Store URLs and defaults come from the environment (RAW_DB_URL, CLEAN_DB_URL,
DATA_SOURCE, BATCH_SIZE, SPLIT_SEED, DATA_CACHE_DIR; MLFLOW_TRACKING_URI, MODEL_NAME and MLflow's
MLFLOW_TRACKING_USERNAME / _PASSWORD for record-checksum: the training identity).
"""

from __future__ import annotations

import argparse
import sys

from readmit_contract.dataset import DatasetError
from readmit_contract.validate import SchemaMismatchError

from .loading import LoadError, SourceMismatchError, load, open_source, raw_counts, unreadable_lines
from .mlflow_access import RegistryError
from .preprocessing import PreprocessError, clean_counts, lineage_table, preprocess_pending
from .settings import DataSettings
from .stores import StoreMigrationError, engines

EXPECTED_ERRORS = (DatasetError, SchemaMismatchError, SourceMismatchError, LoadError, PreprocessError,
                   StoreMigrationError, RegistryError, ValueError)
"""Failures that end a command with their message (exit status 1) instead of a traceback."""


def _load(args: argparse.Namespace, settings: DataSettings) -> int:
    source = args.source or settings.data_source
    data = open_source(source, settings.data_cache_dir)
    with engines(settings.raw_db_url, settings.clean_db_url) as (raw, _):
        reports = load(
            raw, data, source=source, batch=args.batch, seed=settings.split_seed,
            batch_size=settings.batch_size, progress=not args.quiet,
        )
        for report in reports:
            print(report.message, flush=True)
        print("RawData rows per split:", raw_counts(raw))
    return 0


def _preprocess(args: argparse.Namespace, settings: DataSettings) -> int:
    with engines(settings.raw_db_url, settings.clean_db_url) as (raw, clean_store):
        done = preprocess_pending(raw, clean_store)
        if not done:
            print("nothing new to preprocess")
        for lineage in done:
            print(
                f"{lineage.batch_id}: {lineage.rows_in} in, {lineage.rows_out} clean, "
                f"{lineage.rows_rejected} rejected, {lineage.rows_excluded} excluded ({lineage.seconds:.2f} s)"
            )
        print("CleanData rows per split:", clean_counts(clean_store))
    return 0


def _status(args: argparse.Namespace, settings: DataSettings) -> int:
    with engines(settings.raw_db_url, settings.clean_db_url) as (raw, clean_store):
        print("RawData rows per split:  ", raw_counts(raw))
        unreadable = unreadable_lines(raw)
        if len(unreadable):
            first = unreadable.iloc[0]
            print(f"RawData unreadable source lines: {len(unreadable)} "
                  f"(first: line {first['source_line']}, {first['reason']})")
        print("CleanData rows per split:", clean_counts(clean_store))
        table = lineage_table(clean_store)
        if not table.empty:
            print(table[["batch_id", "rows_in", "rows_out", "rows_rejected", "rows_excluded", "seconds"]].to_string())
    return 0


def _record_checksum(args: argparse.Namespace, settings: DataSettings) -> int:
    """Record the artifact checksum of a version registered before training recorded one (an upgrade):
    the API refuses a version without it. This trusts the artifact as the store holds it now."""
    from readmit_contract.artifact import ArtifactRefused

    from .registry import current_champion, record_artifact_digest

    version = args.version
    if version is None:
        champion = current_champion(settings)
        if champion is None:
            print(f"no {settings.model_name}@{settings.model_alias} in the registry: nothing to record")
            return 1
        version = str(champion.version)
    try:
        digest = record_artifact_digest(settings, version)
    except ArtifactRefused as refused:
        print(f"{settings.model_name} version {version} not recorded: {refused.reason}")
        return 1
    print(f"{settings.model_name} version {version}: artifact_sha256 {digest} recorded")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="readmit-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_load = sub.add_parser("load", help="load validation/test (first time) and one train batch into RawData")
    p_load.add_argument("--source", help='"download", a path to diabetic_data.csv, or "synthetic:ROWS[:SEED]"')
    p_load.add_argument("--batch", default="next", help='"next" (default), "all", or a batch number')
    p_load.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("preprocess", help="validate and clean every raw batch not yet in CleanData")
    sub.add_parser("status", help="rows per store and split, and the lineage table")
    p_record = sub.add_parser("record-checksum",
                              help="tag a version registered before checksums existed (the API refuses it otherwise)")
    p_record.add_argument("--version", help="the registry version (default: the champion)")
    args = parser.parse_args(argv)
    settings = DataSettings()
    handler = {"load": _load, "preprocess": _preprocess, "status": _status,
               "record-checksum": _record_checksum}[args.command]
    try:
        return handler(args, settings)
    except EXPECTED_ERRORS as exc:
        print(f"readmit-data {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
