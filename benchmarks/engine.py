"""Our jobs beside the engine's own cost for the same rows: ingest against a plain CSV →
Delta write of the same files, features against a plain copy of bronze to a new Delta table.

Usage: python benchmarks/engine.py [--rows 4000000] [--rounds 3] [--work DIR]

Generates the click demo's landing once (one CSV batch of `--rows` events, untimed), then
runs `--rounds` rounds in one SparkSession, each into a fresh lakehouse: `ingest_batch` of
the batch into an empty bronze and `spark.read.schema(...).csv(...)` → `write.format("delta")`
of the same files; `build_features` over that bronze (a first run) and bronze read →
written to a new Delta table. The order of ours and the reference alternates per round, so
that a warm cache or a busy neighbour does not favour one side. Prints each round's seconds
and the median ratios:

* ``RATIO ingest_vs_plain_write``: ingest ÷ plain write (goal ≤ 1.5, issue 20);
* ``RATIO features_vs_plain_copy``: features ÷ plain copy (goal ≤ 2).

The machine's load average is printed with each round: quote it with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sparkkit import plain_write, scratch_run

from sparkml_ext.config import GenerateConfig, PipelineConfig, load_config
from sparkml_ext.features import build_features
from sparkml_ext.generate import generate_clicks
from sparkml_ext.ingest import ingest_batch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "data" / "generated" / "bench" / "engine"
BATCH = "batch-00000"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000, help="events in the one landing batch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--work", type=Path, default=WORK)
    return parser.parse_args(argv)


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def plain_copy(spark, cfg: PipelineConfig, target: str) -> None:
    """The reference for features: bronze read and written to a new Delta table."""
    spark.read.format("delta").load(cfg.table_path("bronze")).write.format("delta").save(target)


def one_round(spark, landing: Path, lake: Path, ours_first: bool) -> dict[str, float]:
    cfg = load_config(ROOT / "conf" / "pipelines" / "clicks.yaml",
                      [f"lakehouse={lake}", f"source.path={landing}"])
    pairs = [("ingest", lambda: timed(lambda: ingest_batch(spark, cfg, BATCH))),
             ("plain write", lambda: plain_write(spark, cfg, BATCH, f"{lake}/plain_write"))]
    seconds = {name: run() for name, run in (pairs if ours_first else pairs[::-1])}
    pairs = [("features", lambda: build_features(spark, cfg)),
             ("plain copy", lambda: plain_copy(spark, cfg, f"{lake}/plain_copy"))]
    seconds.update({name: timed(run) for name, run in (pairs if ours_first else pairs[::-1])})
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_run("bench-engine", args.work) as (spark, work):
        landing = work / "landing"
        generate_clicks(spark, GenerateConfig(rows=args.rows, batches=1), str(landing), str(work / "truth"))
        print(f"engine benchmark: {args.rows:,} click events in one CSV batch, {args.rounds} rounds", flush=True)
        rounds = []
        for i in range(args.rounds):
            lake = work / f"lake-{i}"
            rounds.append(one_round(spark, landing, lake, ours_first=i % 2 == 0))
            shutil.rmtree(lake, ignore_errors=True)
            shown = ", ".join(f"{name} {s:.1f} s" for name, s in rounds[-1].items())
            print(f"round {i + 1}: {shown} (load {os.getloadavg()[0]:.2f})", flush=True)
        median = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        print(f"RATIO ingest_vs_plain_write {median['ingest'] / median['plain write']:.2f}")
        print(f"RATIO features_vs_plain_copy {median['features'] / median['plain copy']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
