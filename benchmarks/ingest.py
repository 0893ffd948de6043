"""What one ingest costs, step by step, beside a plain Delta write of the same files.

Usage: python benchmarks/ingest.py [--rows 200000] [--work DIR]

Generates the click demo's CSV landing (2 batches) in a fresh work folder under
data/generated/bench/ingest/ (deleted afterwards), then in one SparkSession:

1. ingests batch-00000 into an empty lakehouse (no key lookup: there is no bronze yet);
2. writes batch-00001 with a plain ``spark.read.schema(...).csv(...)`` →
   ``write.format("delta")`` (the reference: no checks, no quarantine, no ledger);
3. ingests batch-00001 (its keys are looked up in a bronze of batch-00000's rows);
4. ingests batch-00000's files again under a new batch id (a re-delivery: every key is
   found, 0 rows land).

Each ingest prints its report's ``timings`` (count: the independent line count and, in the
same read, a CSV or JSON batch's fingerprint; stage: parse, type, check and write the
staged Parquet; lookup: the batch's repeated keys and those bronze already holds; check:
fail modes and the per-file reconciliation; commit: ledger claim, bronze and quarantine
appends) and its total, which also holds the ledger's reads and final commit. Ratios:

* ``RATIO ingest_vs_plain_delta_write``: step 3's total over step 2's;
* ``RATIO key_lookup_share``: step 3's lookup over its total;
* ``RATIO redelivery_vs_first_ingest``: step 4's total over step 3's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sparkkit import plain_write, scratch_run

from sparkml_ext.config import GenerateConfig, load_config
from sparkml_ext.generate import generate_clicks
from sparkml_ext.ingest import IngestReport, ingest_batch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "data" / "generated" / "bench" / "ingest"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="events over both batches")
    parser.add_argument("--work", type=Path, default=WORK)
    return parser.parse_args(argv)


def timed_ingest(spark, cfg, batch: str) -> IngestReport:
    report = ingest_batch(spark, cfg, batch)
    steps = ", ".join(f"{step} {seconds:.1f}" for step, seconds in report.timings.items())
    print(f"  {report.summary()}")
    print(f"  .. ingest {batch}: {report.seconds:.1f} s ({steps})", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_run("bench-ingest", args.work) as (spark, work):
        cfg = load_config(ROOT / "conf" / "pipelines" / "clicks.yaml",
                          [f"lakehouse={work}/lake", f"source.path={work}/landing"])
        generate_clicks(spark, GenerateConfig(rows=args.rows, batches=2), f"{work}/landing", cfg.table_path("truth"))
        print(f"ingest benchmark: {args.rows} generated click events in 2 CSV batches", flush=True)
        timed_ingest(spark, cfg, "batch-00000")
        plain = plain_write(spark, cfg, "batch-00001", f"{work}/plain")
        print(f"  .. plain read.csv → Delta of batch-00001: {plain:.1f} s", flush=True)
        second = timed_ingest(spark, cfg, "batch-00001")
        shutil.copytree(f"{work}/landing/batch-00000", f"{work}/landing/redelivered")
        again = timed_ingest(spark, cfg, "redelivered")
        assert again.accepted == 0, "a re-delivered batch must land nothing"
        print(f"RATIO ingest_vs_plain_delta_write {second.seconds / plain:.2f}")
        print(f"RATIO key_lookup_share {second.timings['lookup'] / second.seconds:.3f}")
        print(f"RATIO redelivery_vs_first_ingest {again.seconds / second.seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
