"""How the ingest, features and bridge stages scale with rows, in time and in driver memory.

Usage: python benchmarks/scaling.py [--sizes 1000000 4000000 16000000] [--warmup 2000] [--work DIR]

For each size, in a fresh work folder under data/generated/bench/scaling/ that is deleted
afterwards, runs the library's own stages in this one process (as benchmarks/quality.py
does): generate (Parquet landing, 2 batches; timed but not counted as a stage) → ingest
both batches → features → bridge export of the feature table's training columns (all
rows, the numeric and categorical-id columns of ``feature_columns`` plus the label) as
Arrow shards. One SparkSession serves every size; users grow with rows (``GenerateConfig``:
50 events per user), so the work per row should stay the same. An unreported warm-up
round (--warmup rows) comes first: in a fresh JVM the first round pays for class loading
and JIT compilation (a 5,000-row generate took 277 s first and 69 s as the second round
on the loaded machine), which would make the smallest size look slow and the ratio kind.

Time: seconds per stage and per million rows; ``RATIO scaling_<largest>_vs_<smallest>`` is
the total (ingest + features + bridge) seconds per million rows of the largest size over
the smallest's (goal ≤ 1.3: cost grows linearly). Fixed costs (job planning, Delta
commits, Python worker start) dominate tiny sizes, so there the ratio is well below 1.

Driver memory: the driver is this Python process plus its JVM, and in local mode that
JVM also runs the executors' tasks, so its heap holds task memory as well as the
driver's. Per size the script resets and reads (peaks cover ingest, features and bridge):

* the Python driver's peak RSS (VmHWM, reset through /proc/self/clear_refs): what a
  driver-side ``collect``/``toPandas`` of data-sized frames would inflate (mapInArrow's
  Python workers are separate processes and are not in it);
* the JVM heap: the sum of the heap pools' peak usage (an upper bound of the peak, as
  the pools peak at different moments; in local mode mostly young-generation churn of
  tasks, sized by the heap, not by rows) and the heap used after a full ``System.gc()``
  at the end of the size, which is what the driver and executors still hold;
* the JVM process's peak RSS (VmHWM, reset the same way), printed for information.

``RATIO driver_memory_<largest>_vs_<smallest>`` uses Python peak RSS + post-GC JVM heap
(goal: flat, about 1): both grow only if something data-sized reaches or stays in the
driver, while the heap peaks mostly show how much of its heap the JVM chose to use.
Sizes run smallest first, so anything retained across sizes counts against the largest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from features import Clock

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "conf" / "pipelines" / "clicks.yaml"
WORK = ROOT / "data" / "generated" / "bench" / "scaling"
BATCHES = 2  # landing batches, each ingested in turn
STAGES = ("ingest", "features", "bridge")
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000],
                        help="generated rows per size, run smallest first")
    parser.add_argument("--warmup", type=int, default=2000,
                        help="rows of an unreported first round, so that the smallest size does not "
                             "pay for class loading and JIT warm-up; 0: none")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    args.sizes = sorted(set(args.sizes))
    if len(args.sizes) < 2 or args.sizes[0] < 1000:
        parser.error("--sizes needs at least two different sizes of at least 1000 rows")
    if args.warmup and args.warmup < 1000:
        parser.error("--warmup must be 0 or at least 1000 rows")
    return args


def short(rows: int) -> str:
    """1000000 -> 1m, 20000 -> 20k: the size's name in the RATIO lines."""
    for unit, suffix in ((1_000_000, "m"), (1000, "k")):
        if rows % unit == 0:
            return f"{rows // unit}{suffix}"
    return str(rows)


# ------------------------------------------------------------------------- memory

def reset_peak_rss(pid: int | str = "self") -> None:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int | str = "self") -> int:
    """A process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM line")


class JvmMemory:
    """The driver JVM's heap pools and process id, through py4j."""

    def __init__(self, spark):
        management = spark._jvm.java.lang.management.ManagementFactory
        self.heap = management.getMemoryMXBean()
        self.pools = [p for p in management.getMemoryPoolMXBeans() if p.getType().name() == "HEAP"]
        self.pid = spark._jvm.java.lang.ProcessHandle.current().pid()

    def collect_garbage(self) -> int:
        """Heap bytes in use after a full collection."""
        self.heap.gc()
        return self.heap.getHeapMemoryUsage().getUsed()

    def reset_peaks(self) -> None:
        for pool in self.pools:
            pool.resetPeakUsage()
        reset_peak_rss(self.pid)

    def peak_heap(self) -> int:
        return sum(pool.getPeakUsage().getUsed() for pool in self.pools)


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# -------------------------------------------------------------------------- one size

def run_size(spark, rows: int, work: Path, jvm: JvmMemory) -> dict:
    """Generate, then time ingest → features → bridge and read the driver's memory peaks."""
    from sparkml_ext.bridge import export_table
    from sparkml_ext.cli import seed_lakehouse
    from sparkml_ext.config import GenerateConfig, load_config
    from sparkml_ext.feature_spec import feature_columns

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = load_config(PIPELINE, [f"lakehouse={work / 'lakehouse'}", f"source.path={work / 'landing'}",
                                 "source.format=parquet", "source.options={}"])
    clock = Clock(spark)

    def step(name: str, run):
        if name == "ingest":  # the memory peaks cover ingest, features and bridge, not generate
            jvm.collect_garbage()
            jvm.reset_peaks()
            reset_peak_rss()
        return clock.run(name, rows, run)

    spec = GenerateConfig(rows=rows, seed=7, batches=BATCHES, format="parquet")
    seeded = seed_lakehouse(spark, cfg, spec, step=step)
    features = seeded["features"]
    for report in (*seeded["ingest"], features):
        print(f"     {report.summary()}")
    columns = feature_columns(cfg.features)
    manifest = clock.run("bridge", rows, lambda: export_table(
        spark, cfg.table_path("features"), version=features.feature_version,
        numeric=columns["numeric"], categorical=columns["categorical_ids"], label=cfg.features.label,
        cache_root=str(work / "lakehouse" / "shards")))
    shard_rows = sum(f.rows for f in manifest.files)
    print(f"     bridge: {len(manifest.files)} shards, {shard_rows:,} rows, "
          f"{sum(f.bytes for f in manifest.files) / MIB:,.0f} MiB")
    if shard_rows != rows:
        print(f"     note: the shards hold {shard_rows:,} of {rows:,} generated rows")

    return {
        "rows": rows,
        "seconds": {s: clock.seconds(s) for s in ("generate", *STAGES)},
        "load": max(r["load"][1] for r in clock.rows),
        "python_peak": peak_rss(),
        "heap_peak": jvm.peak_heap(),
        "jvm_rss_peak": peak_rss(jvm.pid),
        "heap_after_gc": jvm.collect_garbage(),
        "disk": disk_bytes(work),
    }


def measure(spark, rows: int, root: Path, jvm: JvmMemory) -> dict:
    """`run_size` in `root/rows-<rows>`, deleted afterwards whatever happens."""
    work = root / f"rows-{rows}"
    print(f"\n== {rows:,} rows in {work}", flush=True)
    started = time.perf_counter()
    try:
        r = run_size(spark, rows, work, jvm)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"   {time.perf_counter() - started:.0f} s for this size; MiB: python peak RSS "
          f"{r['python_peak'] / MIB:,.0f}, JVM heap after GC {r['heap_after_gc'] / MIB:,.0f}, heap pools peak "
          f"{r['heap_peak'] / MIB:,.0f}, JVM peak RSS {r['jvm_rss_peak'] / MIB:,.0f}", flush=True)
    return r


def driver_memory(result: dict) -> int:
    return result["python_peak"] + result["heap_after_gc"]


# ---------------------------------------------------------------------------- report

def report(results: list[dict]) -> None:
    print()
    print(f"{'rows':>11} {'generate s':>10} " + " ".join(f"{s + ' s':>10}" for s in STAGES)
          + f" {'total s':>9} | " + " ".join(f"{s + ' s/M':>12}" for s in STAGES)
          + f" {'total s/M':>10} | {'load max':>8} {'disk GiB':>8}")
    for r in results:
        per_m = 1e6 / r["rows"]
        stages = [r["seconds"][s] for s in STAGES]
        print(f"{r['rows']:>11,} {r['seconds']['generate']:>10.1f} " + " ".join(f"{s:>10.1f}" for s in stages)
              + f" {sum(stages):>9.1f} | " + " ".join(f"{s * per_m:>12.1f}" for s in stages)
              + f" {sum(stages) * per_m:>10.1f} | {r['load']:>8.1f} {r['disk'] / 2**30:>8.2f}")
    print()
    print("peak driver memory (MiB) over ingest + features + bridge; local mode: the JVM also runs "
          "the executors' tasks")
    print(f"{'rows':>11} {'python peak RSS':>15} {'JVM heap after GC':>17} {'driver (sum)':>12} "
          f"{'JVM heap pools peak':>19} {'JVM peak RSS':>12}")
    for r in results:
        print(f"{r['rows']:>11,} {r['python_peak'] / MIB:>15,.0f} {r['heap_after_gc'] / MIB:>17,.0f} "
              f"{driver_memory(r) / MIB:>12,.0f} {r['heap_peak'] / MIB:>19,.0f} {r['jvm_rss_peak'] / MIB:>12,.0f}")

    small, large = results[0], results[-1]

    def per_million(r: dict) -> float:
        return sum(r["seconds"][s] for s in STAGES) * 1e6 / r["rows"]

    scaling = per_million(large) / per_million(small)
    memory = driver_memory(large) / driver_memory(small)
    names = f"{short(large['rows'])}_vs_{short(small['rows'])}"
    print()
    print(f"total seconds per million rows, {large['rows']:,} vs {small['rows']:,} rows: "
          f"{scaling:.3f} (goal ≤ 1.3)")
    print(f"driver memory (python peak RSS + JVM heap after GC), {large['rows']:,} vs {small['rows']:,} rows: "
          f"{memory:.3f} (goal: flat, ≈ 1); heap pools peak {large['heap_peak'] / small['heap_peak']:.3f}, "
          f"JVM peak RSS {large['jvm_rss_peak'] / small['jvm_rss_peak']:.3f}")
    print(f"RATIO scaling_{names} {scaling:.4f}")
    print(f"RATIO driver_memory_{names} {memory:.4f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # `timeout` sends SIGTERM: exit through the `finally` below, which deletes the work folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from sparkml_ext.config import load_config
    from sparkml_ext.session import get_spark

    spark = get_spark("sparkml_ext-scaling", load_config(PIPELINE).spark)
    spark.sparkContext.setLogLevel("ERROR")
    jvm = JvmMemory(spark)
    print(f"benchmarks/scaling.py: sizes {', '.join(f'{n:,}' for n in args.sizes)}; spark {spark.version} "
          f"master={spark.sparkContext.master} driver.memory={spark.conf.get('spark.driver.memory')} "
          f"cores(os)={os.cpu_count()}; load at start {os.getloadavg()}", flush=True)
    if args.warmup:
        print("\n== warm-up (not reported): loads classes and warms the JIT for the first size", flush=True)
        measure(spark, args.warmup, args.work.resolve(), jvm)
    results = [measure(spark, rows, args.work.resolve(), jvm) for rows in args.sizes]
    report(results)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
