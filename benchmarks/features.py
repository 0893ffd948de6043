"""Features job vs row-at-a-time Python UDFs vs DuckDB, on the same bronze rows.

Usage: python benchmarks/features.py [--rows 5000000] [--reuse] [--udf-rows N] [--parts]

Builds (or, with --reuse, reuses) a bronze Delta table of generated click events under
data/generated/bench/features/ (parquet landing → ``ingest_batch``, timed), then times,
one after the other in this one process:

* ours: ``engineer`` into Parquet (compute without the MERGE) and ``build_features`` into
  a fresh feature table (the whole job: version check, duplicate-key check, Delta write);
  with --parts also into a no-op sink, whole and by parts (scan, row transforms, windows);
* the same features with one row-at-a-time (pickled, non-Arrow) Python ``@udf`` per
  column transform — log1p/clip and null indicator per numeric, a hash per categorical —
  while the per-user window aggregates stay the library's native ones
  (``entity_aggregates``). By default it runs on every row. With --udf-rows it runs on a
  sample made of whole users (so every sampled row keeps its full history and its
  aggregates equal the full run's) and is extrapolated linearly to the full row count, as
  the output says; a user sample can miss the heaviest users, so the output also gives the
  estimate "ours at full size + the UDFs' extra seconds on the sample, scaled linearly";
* DuckDB SQL over the bronze table's Parquet files at its current version (window
  functions with RANGE frames on epoch seconds), written to Parquet: a single-node
  reference with the same thread count.

Outputs are checked to agree on random event ids before any ratio is printed. The last
two lines are ``RATIO features_vs_python_udf`` and ``RATIO features_vs_duckdb``: the
seconds of ours (``engineer`` → Parquet, the same sink as the others) over theirs;
below 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
import zlib
from pathlib import Path
from urllib.parse import unquote, urlparse

from sparkkit import remove

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "conf" / "pipelines" / "clicks.yaml"
WORK = ROOT / "data" / "generated" / "bench" / "features"
# Relative; the library sums window means in fixed point (units of 2^-24, features.py), so
# its means may differ from a floating-point average by up to 3e-8.
TOLERANCE = 1e-7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="generated events (bronze rows)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the bronze table of an earlier run with the same --rows/--seed")
    parser.add_argument("--udf-rows", type=int, default=None,
                        help="run the Python UDFs on about this many rows (whole users) and "
                             "extrapolate; default: every row, no extrapolation")
    parser.add_argument("--parts", action="store_true",
                        help="also time our scan, row transforms and windows separately (4 more passes)")
    parser.add_argument("--check-rows", type=int, default=1000, help="event ids compared across engines")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    if args.rows < 1000:
        parser.error("--rows must be at least 1000")
    return args


# ----------------------------------------------------------------------------- helpers

class Clock:
    """Wall-clock timings of named phases, with the 1-minute load average around each."""

    def __init__(self, spark):
        self.spark = spark
        self.rows: list[dict] = []

    def run(self, name: str, rows: int | None, fn, group: str | None = None):
        sc = self.spark.sparkContext
        sc.setJobGroup(group or name, name)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        try:
            result = fn()
        finally:
            seconds = time.perf_counter() - started
            sc.setJobGroup("bench-idle", "idle")
        entry = {"name": name, "rows": rows, "seconds": seconds,
                 "load": (load_before, os.getloadavg()[0]), "group": group or name}
        self.rows.append(entry)
        print(f"  .. {name}: {seconds:.1f} s (load {entry['load'][0]:.1f}→{entry['load'][1]:.1f})",
              flush=True)
        return result

    def add(self, name: str, rows: int, seconds: float, note: str = "") -> None:
        self.rows.append({"name": name, "rows": rows, "seconds": seconds, "load": None, "note": note})

    def seconds(self, name: str) -> float:
        return next(r["seconds"] for r in self.rows if r["name"] == name)


def stage_report(spark, group: str, limit: int = 12) -> list[str]:
    """Completed stages of one job group from Spark's status store (no UI needed)."""
    from py4j.protocol import Py4JJavaError

    sc = spark.sparkContext
    store = sc._jsc.sc().statusStore()
    lines = []
    for job in sorted(sc.statusTracker().getJobIdsForGroup(group)):
        info = sc.statusTracker().getJobInfo(job)
        for stage_id in sorted(info.stageIds if info else []):
            try:
                s = store.lastStageAttempt(stage_id)
            except Py4JJavaError:  # a skipped stage (its shuffle output was reused) has no attempt
                continue
            if s.status().toString() != "COMPLETE" or not s.submissionTime().isDefined():
                continue
            wall = (s.completionTime().get().getTime() - s.submissionTime().get().getTime()) / 1000
            lines.append((wall, (
                f"stage {stage_id:>4} job {job:>4} {wall:7.1f} s wall {s.executorRunTime() / 1000:7.1f} s task "
                f"{s.numTasks():>4} tasks  in {s.inputRecords():>10,}  shuffle-read "
                f"{s.shuffleReadRecords():>10,}  shuffle-write {s.shuffleWriteRecords():>10,}  "
                f"out {s.outputRecords():>10,}  spill {s.diskBytesSpilled() / 2**20:6.0f} MiB  "
                f"{s.name()[:60]}")))
    total = sum(w for w, _ in lines)
    shown = [line for _, line in sorted(lines, key=lambda x: -x[0])[:limit]]
    return [f"  {len(lines)} stages, {total:.1f} s summed wall (largest first):"] + ["  " + x for x in shown]


def plan_summary(df) -> tuple[str, str]:
    """Operator counts of the physical plan (before adaptive execution) and the plan text."""
    text = df._jdf.queryExecution().executedPlan().toString()
    names = re.findall(r"(?m)^[\s:+\-|*]*(?:\(\d+\)\s*)?([A-Z][A-Za-z]+)", text)
    counted: dict[str, int] = {}
    for name in names:
        counted[name] = counted.get(name, 0) + 1
    keep = ["Exchange", "Sort", "Window", "SortMergeJoin", "ShuffledHashJoin", "BroadcastHashJoin",
            "HashAggregate", "BatchEvalPython", "ArrowEvalPython", "Project", "Filter", "FileScan"]
    return ", ".join(f"{k}×{counted[k]}" for k in keep if k in counted), text


# ------------------------------------------------------------------------ bronze

def the_entity(spec) -> str:
    """The click spec's one entity: the references below compute one entity's counts, label
    rates and means (what clicks.yaml declares), not every statistic."""
    (entity, history), = spec.entities.items()
    if any(set(s) != {"mean"} for s in history.aggregates.values()):
        raise SystemExit("benchmarks/features.py: the references compute window means only")
    return entity


def configs(work: Path, features_table: Path):
    from sparkml_ext.config import load_config

    overrides = [f"lakehouse={work / 'lakehouse'}", f"source.path={work / 'landing'}",
                 "source.format=parquet", f"tables.features={features_table}"]
    return load_config(PIPELINE, overrides)


def prepare_bronze(spark, cfg, args, clock: Clock) -> None:
    from sparkml_ext import lake
    from sparkml_ext.cli import seed_lakehouse
    from sparkml_ext.config import GenerateConfig

    marker = args.work / "bronze.json"
    wanted = {"rows": args.rows, "seed": args.seed, "fmt": "parquet"}
    bronze = cfg.table_path("bronze")
    if args.reuse and marker.exists() and lake.is_delta(spark, bronze):
        known = json.loads(marker.read_text())
        if {k: known.get(k) for k in wanted} == wanted:
            print(f"reusing bronze {bronze} ({known['accepted']:,} rows; generate "
                  f"{known['generate_s']:.0f} s and ingest {known['ingest_s']:.0f} s when built)")
            clock.add("generate (earlier run, reused)", args.rows, known["generate_s"], "reused")
            clock.add("ingest_batch → bronze (earlier run, reused)", known["accepted"], known["ingest_s"],
                      "reused")
            return
        print(f"--reuse: {marker} holds {known}, not {wanted}: rebuilding")
    elif args.reuse:
        print(f"--reuse: no bronze table from an earlier run under {args.work}: building it")
    remove(*(args.work / sub for sub in ("landing", "lakehouse", "bronze.json")))
    named = {"generate": "generate (parquet landing)", "ingest": "ingest_batch → bronze"}
    seeded = seed_lakehouse(spark, cfg, GenerateConfig(rows=args.rows, seed=args.seed, format="parquet"),
                            through="ingest", step=lambda name, run: clock.run(named[name], args.rows, run))
    gen, (report,) = seeded["generate"], seeded["ingest"]
    print(f"  {report.summary()}")
    if report.accepted < args.rows:
        print(f"  note: bronze holds {report.accepted:,} of {args.rows:,} generated rows")
    marker.write_text(json.dumps({**wanted, "accepted": report.accepted, "generate_s": gen["seconds"],
                                  "ingest_s": clock.seconds("ingest_batch → bronze")}))


# ------------------------------------------------------------------- the baselines

def python_udf_features(events, spec, key: str, event_time: str):
    """Per-row transforms as row-at-a-time Python UDFs (pickled rows, no Arrow).

    The hash is zlib.crc32 (C, fast): Spark's xxhash64 has no stdlib twin, and a pure-Python
    XXH64 would only make this baseline slower. So the ``*_id`` values differ from ours by
    design; their null pattern (0 = null) is still compared.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.functions import udf

    from sparkml_ext.features import entity_aggregates

    clip, buckets = float(spec.clip), int(spec.hash_buckets)

    @udf(returnType="double", useArrow=False)
    def log_clip(value):  # signed log1p bounded by ±clip (the spec's numerics are all log1p)
        return 0.0 if value is None else math.copysign(min(math.log1p(abs(value)), clip), value)

    @udf(returnType="int", useArrow=False)
    def is_null(value):
        return 1 if value is None else 0

    @udf(returnType="int", useArrow=False)
    def hashed(value):
        return 0 if value is None else zlib.crc32(value.encode("utf-8")) % buckets + 1

    entity = the_entity(spec)
    windows, aggregates = entity_aggregates(spec, entity, key, event_time, dict(events.dtypes)[spec.label])
    return events.select("*", *windows).select(
        key, entity, event_time, F.to_date(event_time).alias("event_date"), F.col(spec.label),
        *[log_clip(F.col(c).cast("double")).alias(f"log_{c}") for c in spec.numeric],
        *[is_null(F.col(c)).alias(f"isnull_{c}") for c in spec.numeric],
        *aggregates,
        *[hashed(F.col(c)).alias(f"{c}_id") for c in spec.categorical],
        *spec.categorical,
    )


def duckdb_sql(spec, key: str, event_time: str, files: list[str]) -> str:
    """The same features in DuckDB SQL, on epoch seconds; DuckDB's own hash for the ids."""
    from sparkml_ext.feature_spec import aggregate_name

    def signed_log(c: str) -> str:  # sign(x) * log1p(|x|) bounded by ±clip, null → 0
        value = f"coalesce(CAST({c} AS DOUBLE), 0.0)"
        return f"least(greatest(sign({value}) * ln(1 + abs({value})), {-float(spec.clip)}), {float(spec.clip)})"

    entity = the_entity(spec)
    history = spec.entities[entity]
    windows, aggregates = [], []
    for name, width in history.window_seconds().items():
        windows.append(f"w_{name} AS (PARTITION BY {entity} ORDER BY _ts "
                       f"RANGE BETWEEN {width} PRECEDING AND 1 PRECEDING)")
        aggregates.append(f"CAST(count(_label) OVER w_{name} AS INTEGER) AS {aggregate_name(entity, 'events', name)}")
        aggregates.append(f"coalesce(avg(_label) OVER w_{name}, 0.0) AS {aggregate_name(entity, 'label_rate', name)}")
        aggregates += [f"coalesce(avg({signed_log(c)}) OVER w_{name}, 0.0) "
                       f"AS {aggregate_name(entity, 'mean', name, c)}"
                       for c in history.aggregates]
    horizon = history.horizon()
    gap = f"(_ts - lag(_ts) OVER (PARTITION BY {entity} ORDER BY _ts, {key}))"
    recent = f"coalesce({gap} <= {horizon}, false)"
    columns = [
        key, entity, event_time, f"CAST({event_time} AS DATE) AS event_date", spec.label,
        *[f"{signed_log(c)} AS log_{c}" for c in spec.numeric],
        *[f"CAST({c} IS NULL AS INTEGER) AS isnull_{c}" for c in spec.numeric],
        *aggregates,
        f"CASE WHEN {recent} THEN ln(1 + {gap}) ELSE -1.0 END AS {aggregate_name(entity, 'log_seconds_since_prev')}",
        f"CAST(NOT {recent} AS INTEGER) AS {aggregate_name(entity, 'no_recent_event')}",
        *[f"CAST(CASE WHEN {c} IS NULL THEN 0 ELSE hash({c}) % {spec.hash_buckets} + 1 END AS INTEGER) "
          f"AS {c}_id" for c in spec.categorical],
        *spec.categorical,
    ]
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return (
        f"SELECT {', '.join(columns)}\n"
        f"FROM (SELECT *, CAST(epoch({event_time}) AS BIGINT) AS _ts, CAST({spec.label} AS DOUBLE) AS _label "
        f"FROM read_parquet([{file_list}]))\n"
        f"WINDOW {', '.join(windows)}"
    )


# ------------------------------------------------------------------- agreement

def compare(reference, other, key: str, columns: list[str], ids_only: list[str]) -> tuple[int, list[str]]:
    """Rows matched and the columns that disagree (numbers within TOLERANCE; ids: null pattern)."""
    merged = reference.merge(other, on=key, suffixes=("", "__other"))
    problems = []
    for c in columns:
        a, b = merged[c].astype("float64"), merged[f"{c}__other"].astype("float64")
        bad = ~(((a - b).abs() <= TOLERANCE * a.abs().clip(lower=1.0)) | (a.isna() & b.isna()))
        if bad.any():
            row = merged[bad].iloc[0]
            problems.append(f"{c}: {int(bad.sum())} rows differ, e.g. {row[key]}: {row[c]} vs {row[c + '__other']}")
    for c in ids_only:
        bad = (merged[c] == 0) != (merged[f"{c}__other"] == 0)
        if bad.any():
            problems.append(f"{c}: null pattern differs on {int(bad.sum())} rows")
    return len(merged), problems


def agreement(con, spark, cfg, out: Path, sample_ids: list[str], udf_ids: list[str],
              features_table: str) -> list[tuple[bool | None, str]]:
    import pandas as pd
    from pyspark.sql import functions as F

    from sparkml_ext.feature_spec import aggregate_name, entity_columns, feature_columns

    key, spec = cfg.source.key, cfg.features
    cols = feature_columns(spec)
    numeric = cols["numeric"]
    ids = cols["categorical_ids"]
    window_cols = entity_columns(spec, the_entity(spec))

    def read(path: Path, wanted: list[str]):
        con.register("wanted_ids", pd.DataFrame({key: wanted}))
        glob = str(path / "*.parquet") if path.is_dir() else str(path)
        frame = con.execute(f"SELECT o.* FROM read_parquet('{glob}') o JOIN wanted_ids USING ({key})").df()
        con.unregister("wanted_ids")
        return frame

    lines = []
    ours = read(out / "ours.parquet", sample_ids)
    duck = read(out / "duckdb.parquet", sample_ids)
    matched, problems = compare(ours, duck, key, numeric, ids)
    lines.append(verdict(f"ours vs duckdb on {matched}/{len(sample_ids)} random event ids, {len(numeric)} numeric "
                         f"columns (incl. {', '.join(window_cols[:3])}, ...) + null pattern of {len(ids)} ids",
                         matched == len(sample_ids), problems))
    table = (spark.read.format("delta").load(features_table)
             .where(F.col(key).isin(sample_ids)).select(key, *numeric, *ids).toPandas())
    matched, problems = compare(ours, table, key, numeric + ids, [])
    lines.append(verdict(f"ours (engineer → parquet) vs build_features' Delta table on {matched}/{len(sample_ids)} "
                         "ids, all numeric and id columns", matched == len(sample_ids), problems))
    udf = read(out / "udf.parquet", udf_ids)
    ours_for_udf = read(out / "ours.parquet", udf_ids)
    matched, problems = compare(ours_for_udf, udf, key, numeric, ids)
    lines.append(verdict(f"ours (full table) vs python UDF (user sample) on {matched}/{len(udf_ids)} sampled event "
                         f"ids, {len(numeric)} numeric columns + null pattern of ids (crc32 ≠ xxhash64 values)",
                         matched == len(udf_ids), problems))
    u = udf[window_cols].describe().loc[["mean", "max"]]
    events = aggregate_name(the_entity(spec), "events", "1d")
    sanity = (f"sample sanity: mean/max {events} on the checked ids "
              f"{ours[events].mean():.1f}/{ours[events].max()}; UDF sample "
              f"{u.loc['mean', events]:.1f}/{u.loc['max', events]:.0f}")
    lines.append((None, sanity))
    return lines


def verdict(what: str, complete: bool, problems: list[str]) -> tuple[bool, str]:
    ok = complete and not problems
    return ok, f"{what}: " + ("AGREE" if ok else "DISAGREE " + "; ".join(problems or ["rows missing"]))


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import duckdb
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from sparkml_ext import lake
    from sparkml_ext.feature_spec import entity_columns, feature_columns
    from sparkml_ext.features import build_features, engineer
    from sparkml_ext.session import WIDE_STAGE_CONF, get_spark, session_settings

    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    features_table = out / "features_table"
    spark = get_spark("bench-features")
    spark.sparkContext.setLogLevel("ERROR")
    cores = spark.sparkContext.defaultParallelism
    cfg = configs(args.work, features_table)
    spec, key, event_time = cfg.features, cfg.source.key, cfg.source.event_time
    clock = Clock(spark)
    print(f"benchmarks/features.py: rows={args.rows:,} seed={args.seed} work={args.work}")
    print(f"spark {spark.version} master={spark.sparkContext.master} cores(os)={os.cpu_count()} "
          f"shuffle.partitions={spark.conf.get('spark.sql.shuffle.partitions')} "
          f"duckdb {duckdb.__version__}; load at start {os.getloadavg()}", flush=True)

    prepare_bronze(spark, cfg, args, clock)
    bronze_path = cfg.table_path("bronze")
    bronze, version = lake.read_version(spark, bronze_path)
    n = bronze.count()
    print(f"bronze {bronze_path} v{version}: {n:,} rows, {len(bronze.inputFiles())} files", flush=True)

    cols = feature_columns(spec)
    row_cols = [c for c in cols["numeric"] if c.startswith(("log_", "isnull_"))] + cols["categorical_ids"]
    window_cols = entity_columns(spec, the_entity(spec))

    def noop(df):
        df.write.format("noop").mode("overwrite").save()

    features = engineer(bronze, spec, key, event_time)
    plans = {"engineer": plan_summary(features)}
    # --- ours, by parts, then whole; with the settings build_features computes under
    with session_settings(spark, WIDE_STAGE_CONF, override=False):
        if args.parts:
            clock.run("ours: scan only (bronze → noop)", n, lambda: noop(bronze))
            clock.run("ours: row transforms only → noop", n, lambda: noop(features.select(key, *row_cols)))
            clock.run("ours: windows only → noop", n, lambda: noop(features.select(key, *window_cols)))
            clock.run("ours: engineer → noop", n, lambda: noop(features))
        clock.run("ours: engineer → parquet", n, lambda: features.write.parquet(str(out / "ours.parquet")))
    job = clock.run("ours: build_features (fresh table)", n, lambda: build_features(spark, cfg),
                    group="build_features")
    print(f"  {job.summary()}")

    # --- Python UDFs on whole users, materialized first (untimed) so both sides read the same files
    every = max(1, round(n / args.udf_rows)) if args.udf_rows and args.udf_rows < n else 1
    if every > 1:
        (bronze.where(F.pmod(F.xxhash64(the_entity(spec)), F.lit(every)) == 0)
         .write.parquet(str(out / "udf_sample_input")))
        sample = spark.read.parquet(str(out / "udf_sample_input"))
    else:
        sample = bronze
    m = sample.count()
    udf_frame = python_udf_features(sample, spec, key, event_time)
    plans["python_udf"] = plan_summary(udf_frame)
    scope = f"users with xxhash64 % {every} == 0" if every > 1 else "all rows"
    clock.run(f"python UDF → parquet ({scope})", m, lambda: udf_frame.write.parquet(str(out / "udf.parquet")),
              group="python_udf")
    udf_s = clock.seconds(f"python UDF → parquet ({scope})")
    if every > 1:
        with session_settings(spark, WIDE_STAGE_CONF, override=False):
            clock.run("ours: engineer → parquet on the same sample", m,
                      lambda: engineer(sample, spec, key, event_time).write.parquet(str(out / "ours_sample.parquet")))
        udf_full = udf_s * n / m
        clock.add(f"python UDF extrapolated ×{n / m:.2f} (linear)", n, udf_full, "extrapolated")
        ours_sample_s = clock.seconds("ours: engineer → parquet on the same sample")
        udf_marginal = clock.seconds("ours: engineer → parquet") + (udf_s - ours_sample_s) * n / m
        clock.add("python UDF est. = ours full + extra UDF s × n/m", n, udf_marginal, "estimated")
    else:
        udf_full = udf_s

    # --- DuckDB over the bronze version's data files
    files = [unquote(urlparse(f).path) if f.startswith("file:") else f
             for f in DeltaTable.forPath(spark, bronze_path).toDF().inputFiles()]
    con = duckdb.connect()
    con.execute(f"SET threads = {cores}").fetchall()
    con.execute("SET TimeZone = 'UTC'").fetchall()
    con.execute("SET memory_limit = '4GB'").fetchall()  # = the embedded Spark driver's heap
    con.execute(f"SET temp_directory = '{out / 'duckdb_tmp'}'").fetchall()
    con.execute("SET preserve_insertion_order = false").fetchall()
    sql = duckdb_sql(spec, key, event_time, files)
    clock.run("duckdb: same SQL → parquet", n,
              lambda: con.execute(f"COPY ({sql}) TO '{out / 'duckdb.parquet'}' (FORMAT parquet)").fetchall())
    duck_rows = con.execute(f"SELECT count(*) FROM read_parquet('{out / 'duckdb.parquet'}')").fetchall()[0][0]

    # --- agreement on random event ids (off the clock)
    fraction = min(1.0, 3.0 * args.check_rows / n)
    sample_ids = [r[0] for r in bronze.select(key).where(F.rand(args.seed) < fraction)
                  .limit(args.check_rows).collect()]  # driver-ok: ~1,000 ids
    udf_ids = [r[0] for r in spark.read.parquet(str(out / "udf.parquet")).select(key)
               .where(F.rand(args.seed + 1) < min(1.0, 3.0 * args.check_rows / m))
               .limit(args.check_rows).collect()]  # driver-ok
    checks = agreement(con, spark, cfg, out, sample_ids, udf_ids, str(features_table))
    agree = all(ok for ok, _ in checks if ok is not None)

    # --- report
    print()
    print(f"{'phase':<62} {'rows':>11} {'seconds':>9} {'rows/s':>12}  load(1m) before→after")
    for r in clock.rows:
        load = f"{r['load'][0]:.1f}→{r['load'][1]:.1f}" if r["load"] else r.get("note", "")
        print(f"{r['name']:<62} {r['rows']:>11,} {r['seconds']:>9.1f} {r['rows'] / r['seconds']:>12,.0f}  {load}")
    print(f"(duckdb wrote {duck_rows:,} rows; spark.sql.execution.pythonUDF.arrow.enabled="
          f"{spark.conf.get('spark.sql.execution.pythonUDF.arrow.enabled')}, UDFs pinned useArrow=False)")
    print()
    print("agreement:")
    for _, line in checks:
        print("  " + line)
    print()
    print("physical plans (before adaptive execution):")
    for name, (summary, text) in plans.items():
        print(f"  {name}: {summary}")
    (out / "plans.txt").write_text("\n\n".join(f"== {k}\n{t}" for k, (_, t) in plans.items()))
    print(f"  (full text in {out / 'plans.txt'})")
    print()
    print("build_features stages (Spark status store):")
    for line in stage_report(spark, "build_features"):
        print(line)
    print("python UDF stages:")
    for line in stage_report(spark, "python_udf", limit=4):
        print(line)
    print()
    ours_s = clock.seconds("ours: engineer → parquet")
    job_s = clock.seconds("ours: build_features (fresh table)")
    duck_s = clock.seconds("duckdb: same SQL → parquet")
    if every > 1:
        print(f"RATIO features_vs_python_udf_on_sample {ours_sample_s / udf_s:.4f}")
        print(f"RATIO features_vs_python_udf_marginal_estimate {ours_s / udf_marginal:.4f}")
    print(f"RATIO build_features_vs_engineer_parquet {job_s / ours_s:.4f}")
    print(f"RATIO build_features_vs_duckdb {job_s / duck_s:.4f}")
    if not agree:
        print("WARNING: outputs disagree (see above); the ratios below compare different results")
    note = " (python UDF extrapolated linearly from the sample)" if every > 1 else ""
    print(f"ours = engineer → parquet; python UDF and duckdb also → parquet{note}")
    print(f"RATIO features_vs_python_udf {ours_s / udf_full:.4f}")
    print(f"RATIO features_vs_duckdb {ours_s / duck_s:.4f}")
    con.close()
    spark.stop()
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
