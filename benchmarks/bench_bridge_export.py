"""Shard export: mapInArrow -> Arrow IPC (ours) vs Spark's native Parquet writer.

Both read the same Delta table (as training does) and run side by side, interleaved;
a no-op write times the scan alone. The Parquet path also times reading its files back
with pyarrow, which it needs before the torch side can use them.
Usage: python benchmarks/bench_bridge_export.py [rows] [repeats]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

import pyarrow.dataset as ds

from sparkml_ext.bridge import export_shards
from sparkml_ext.session import get_spark

NUMERIC = [f"f{i}" for i in range(13)]
CATEGORICAL = [f"c{i}" for i in range(26)]


def training_frame(spark, rows: int):
    """13 float, 26 integer id columns and a 0/1 label, already in training types."""
    floats = [f"CAST(rand({i}) AS FLOAT) AS f{i}" for i in range(13)]
    ids = [f"CAST(hash(id, {i}) % 100000 AS BIGINT) AS c{i}" for i in range(26)]
    label = "CAST(rand(99) < 0.25 AS FLOAT) AS label"
    return spark.range(rows, numPartitions=4).selectExpr(*floats, *ids, label)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(rows: int, repeats: int) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = get_spark("bench-bridge-export", {"spark.master": "local[2]"})
    spark.sparkContext.setLogLevel("ERROR")
    work = tempfile.mkdtemp(prefix="bench-bridge-")
    training_frame(spark, rows).write.format("delta").save(f"{work}/table")
    df = spark.read.format("delta").load(f"{work}/table")
    scan, ipc, parquet, read = [], [], [], []
    try:
        for run in range(repeats):
            scan.append(timed(lambda: df.write.format("noop").mode("overwrite").save()))
            out = f"{work}/ipc{run}"
            ipc.append(
                timed(
                    lambda: export_shards(
                        df, out, numeric=NUMERIC, categorical=CATEGORICAL, label="label"
                    )
                )
            )
            out = f"{work}/parquet{run}"
            parquet.append(timed(lambda: df.write.parquet(out)))
            read.append(timed(lambda: ds.dataset(out, format="parquet").to_table()))
    finally:
        shutil.rmtree(work)
    scan_s, ipc_s, parquet_s, read_s = (statistics.median(t) for t in (scan, ipc, parquet, read))
    print(f"rows={rows} repeats={repeats} (medians)")
    print(f"scan only (noop write):            {rows / scan_s:,.0f} rows/s ({scan_s:.2f} s)")
    print(f"export_shards (mapInArrow -> IPC): {rows / ipc_s:,.0f} rows/s ({ipc_s:.2f} s)")
    print(f"df.write.parquet:                  {rows / parquet_s:,.0f} rows/s ({parquet_s:.2f} s)")
    print(f"pyarrow read of that parquet:      {rows / read_s:,.0f} rows/s ({read_s:.2f} s)")
    print(f"RATIO parquet_write_over_ipc_export {ipc_s / parquet_s:.2f}")
    print(f"RATIO parquet_write_and_read_over_ipc_export {ipc_s / (parquet_s + read_s):.2f}")
    spark.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000,
         int(sys.argv[2]) if len(sys.argv) > 2 else 3)
