"""Synthetic Criteo-like click events with a planted ground truth, generated on the executors.

Why: ingest, features and models need realistic input of any size, with bad records to
quarantine and a known click probability, so a model's AUC can be compared with the
Bayes-optimal AUC. Every random number is a hash of (seed, row id, salt), never ``rand()``,
so the data is the same for a seed whatever the partitioning or the cluster.

The committed sample ``data/sample/clicks/batch-00000/part-00000.tsv`` comes from::

    python -c "from sparkml_ext.session import get_spark; from sparkml_ext.config import \
GenerateConfig; from sparkml_ext.generate import generate_clicks; generate_clicks(get_spark(), \
GenerateConfig(rows=3000, malformed_rate=0.01), 'data/sample/clicks', \
'data/generated/sample-truth')"

Malformed records replace the event they were drawn for; the truth table keeps them with
``planted_probability`` (the click probability) and ``label`` null and ``defect`` naming the kind, so every landed line has
exactly one truth row (read = accepted + quarantined can be checked per kind).
"""

from __future__ import annotations

import dataclasses
import math
import time
from datetime import UTC, datetime

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from sparkml_ext import lake
from sparkml_ext.config import GenerateConfig
from sparkml_ext.holdout import PLANTED
from sparkml_ext.session import WIDE_STAGE_CONF, cached, session_settings

EXTENSIONS = {"csv": "tsv", "json": "json", "parquet": "parquet"}
DEFECTS = {
    "csv": ("too_few_fields", "non_numeric", "empty_event_id", "bad_label", "garbage"),
    "json": ("broken_json", "non_numeric", "missing_event_id", "bad_label"),
    "parquet": ("null_event_id", "bad_label"),
}
# (distribution, a, b): lognormal(mu=a, sigma=b) or Lomax/Pareto(scale=a, alpha=b) counts.
NUMERICS = {
    "i1": ("pareto", 2.0, 1.3), "i2": ("lognormal", 1.5, 1.6), "i3": ("pareto", 8.0, 1.5),
    "i4": ("lognormal", 1.0, 1.0), "i5": ("pareto", 900.0, 1.2), "i6": ("lognormal", 3.0, 1.8),
    "i7": ("pareto", 3.0, 1.4), "i8": ("lognormal", 2.0, 1.0), "i9": ("pareto", 40.0, 1.3),
    "i10": ("lognormal", -0.5, 0.8), "i11": ("pareto", 1.5, 1.6), "i12": ("lognormal", -1.0, 1.5),
    "i13": ("pareto", 6.0, 1.4),
}
# Vocabulary sizes shaped like Criteo's (tens to ~100k values per column).
VOCAB_SIZES = dict(zip(
    [f"c{k}" for k in range(1, 27)],
    (1460, 580, 100_000, 60_000, 300, 24, 12_000, 630, 12, 90_000, 5600, 100_000, 3200,
     27, 15_000, 80_000, 10, 5600, 2200, 16, 100_000, 18, 15, 70_000, 100, 40_000),
))
CATEGORY_SKEW = 1.1  # Zipf exponent of category values
USER_SKEW = 0.6  # Zipf exponent of user activity: a few heavy users, a long tail
# Columns whose values move the click probability, with the effect size of the top value.
CATEGORY_EFFECTS = {"c1": 0.7, "c6": 0.6, "c9": 0.6, "c14": 0.5, "c19": 0.5, "c25": 0.6}
INTERCEPT = -1.6  # calibrated for a mean CTR near 0.25
ROWS_PER_FILE = 1_000_000
SECONDS_PER_DAY = 86_400
# The events are cached for the three outputs, and Spark plans a cached query without
# adaptive execution unless told it may change the cache's partitioning (nothing here
# relies on it): the window's 64 shuffle partitions then stay 64 tasks whatever the rows.
# With it, 100k rows took 6.2-7.9 s instead of 10.6-14.8 s, 1M rows 28-33 s instead of
# 38-42 s (benchmarks/README.md). The rows are wide (see WIDE_STAGE_CONF).
GENERATOR_CONF = {**WIDE_STAGE_CONF, "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true"}


def batch_id(k: int) -> str:
    """Generated batch k's folder under the landing path, which ingest takes as its batch id."""
    return f"batch-{k:05d}"


def generate_clicks(
    spark: SparkSession, spec: GenerateConfig, landing_dir: str, truth_path: str
) -> dict:
    """Land ``spec.batches`` time-sliced folders of raw events and overwrite the truth table.

    Both outputs are pure functions of the spec, so regenerating replaces them with the
    same content: the landing folders are rebuilt, and the truth Delta table is
    overwritten (a new version with identical rows; the spec goes in the commit metadata).
    Returns a small report; nothing data-sized reaches the driver.
    """
    started = time.perf_counter()
    # A value the session has wins. A cached plan keeps the conf of its persist(), so the
    # settings cover that too.
    with (session_settings(spark, GENERATOR_CONF, override=False),
          cached(_with_defects(_events(spark, spec), spec)) as events):
        lake.replace_table(events.select("event_id", F.col("p_click").alias(PLANTED), "label", "batch", "defect"),
                           truth_path,
                           dataclasses.asdict(spec))
        batch_dirs = _land(spark, events, spec, landing_dir)
        per_batch = {
            r["batch"]: r for r in events.groupBy("batch")
            .agg(F.count("*").alias("rows"), F.count("defect").alias("malformed"),
                 F.sum("p_click").alias("p_sum"))
            .collect()  # driver-ok: one row per batch
        }
    malformed = sum(r["malformed"] for r in per_batch.values())
    seconds = round(time.perf_counter() - started, 3)
    return {
        "job": "generate",
        "summary": f"generate: {spec.rows} events in {spec.batches} {spec.format} batch(es) under "
                   f"{landing_dir} ({malformed} malformed) in {seconds}s",
        "counts": {"rows": spec.rows},
        "rows": spec.rows,
        "batches": spec.batches,
        "batch_rows": [per_batch[k]["rows"] if k in per_batch else 0 for k in range(spec.batches)],
        "batch_dirs": batch_dirs,
        "format": spec.format,
        "malformed": malformed,
        "mean_p_click": sum(r["p_sum"] or 0.0 for r in per_batch.values())
        / max(spec.rows - malformed, 1),
        "truth_path": truth_path,
        "seconds": seconds,
    }


def _uniform(seed: int, key: Column, salt: str) -> Column:
    """A uniform in (0, 1) from 53 hash bits: a pure function of (seed, key, salt)."""
    bits = F.xxhash64(F.lit(seed), key, F.lit(salt)).bitwiseAND(F.lit((1 << 53) - 1))
    return (bits.cast("double") + 0.5) / float(1 << 53)


def _row_uniform(seed: int, salt: str) -> Column:
    """An independent uniform per row for each salt."""
    return _uniform(seed, F.col("id"), salt)


def _normal(seed: int, key: Column, salt: str) -> Column:
    """A standard normal by Box-Muller on two hash uniforms."""
    radius = F.sqrt(-2.0 * F.log(_uniform(seed, key, salt + "/r")))
    return radius * F.cos(2.0 * math.pi * _uniform(seed, key, salt + "/a"))


def _zipf_rank(u: Column, size: int, exponent: float) -> Column:
    """0-based rank drawn by inverting the CDF of a power law x^-exponent on [1, size + 1)."""
    a = 1.0 - exponent
    x = F.pow(1.0 + u * ((size + 1.0) ** a - 1.0), 1.0 / a)
    return F.least(F.floor(x) - 1, F.lit(size - 1)).cast("long")


def _hex(value: Column, digits: int) -> Column:
    return F.lower(F.lpad(F.hex(value), digits, "0"))


def _event_id(seed: int, row_id: Column) -> Column:
    """16 hex chars from a keyed Feistel permutation of the row id: unique and scrambled."""
    low32 = F.lit(0xFFFFFFFF)
    left, right = F.shiftright(row_id, 32), row_id.bitwiseAND(low32)
    for round_no in range(3):
        mixed = F.xxhash64(F.lit(seed), right, F.lit(round_no)).bitwiseAND(low32)
        left, right = right, left.bitwiseXOR(mixed)
    return _hex(F.shiftleft(left, 32).bitwiseOR(right), 16)


def _category(seed: int, name: str) -> Column:
    """The value of a category rank as 8 hex chars, like Criteo's hashed categories."""
    rank = F.col(f"rank_{name}")
    value = F.xxhash64(F.lit(seed), rank, F.lit(name)).bitwiseAND(F.lit(0xFFFFFFFF))
    return F.when(rank.isNotNull(), _hex(value, 8))


def _numeric(seed: int, name: str) -> Column:
    kind, a, b = NUMERICS[name]
    row_id = F.col("id")
    if kind == "lognormal":
        return F.floor(F.exp(a + b * _normal(seed, row_id, name))).cast("double")
    return F.floor(a * (F.pow(_uniform(seed, row_id, name), -1.0 / b) - 1.0)).cast("double")


def _log_count(name: str) -> Column:
    return F.log1p(F.coalesce(F.col(name), F.lit(0.0)))


def _events(spark: SparkSession, spec: GenerateConfig) -> DataFrame:
    """Clean events with their planted click probability, label and time-slice batch."""
    seed, span = spec.seed, spec.days * SECONDS_PER_DAY

    def maybe_null(value: Column, name: str) -> Column:
        return F.when(_row_uniform(seed, "null:" + name) >= spec.null_rate, value)

    draws = spark.range(spec.rows, numPartitions=spec.partitions).select(
        "id",
        (_zipf_rank(_row_uniform(seed, "user"), spec.users, USER_SKEW) + 1).alias("user_id"),
        F.floor(_row_uniform(seed, "time") * span).cast("long").alias("second"),
        *[maybe_null(_numeric(seed, name), name).alias(name) for name in NUMERICS],
        *[maybe_null(_zipf_rank(_row_uniform(seed, name), size, CATEGORY_SKEW), name)
          .alias(f"rank_{name}") for name, size in VOCAB_SIZES.items()],
    )
    trailing_day = (Window.partitionBy("user_id").orderBy("second")
                    .rangeBetween(-SECONDS_PER_DAY, -1))
    draws = draws.withColumn("recent", F.count(F.lit(1)).over(trailing_day))

    # Centre the history effect so the mean CTR does not move with events per user-day.
    typical_recent = math.log1p(spec.rows / (spec.users * spec.days))
    logit = (
        F.lit(INTERCEPT)
        + 0.45 * (_log_count("i1") - 1.0)
        - 0.35 * (_log_count("i4") - 1.2)
        + 0.7 * F.sin(_log_count("i6"))  # a non-monotone effect trees find and lines miss
        + 0.5 * (_log_count("i9") > 3.5).cast("double")
        + 0.5 * _normal(seed, F.col("user_id"), "user-propensity")
        + 0.4 * (F.log1p(F.col("recent")) - typical_recent)
    )
    for name, strength in CATEGORY_EFFECTS.items():
        rank = F.col(f"rank_{name}")
        effect = strength * _normal(seed, rank, "effect:" + name) / F.sqrt(1.0 + rank / 10.0)
        logit = logit + F.coalesce(effect, F.lit(0.0))
    p_click = 1.0 / (1.0 + F.exp(-logit))

    start = datetime.fromisoformat(spec.start_date).replace(tzinfo=UTC)
    return draws.select(
        "id",
        _event_id(seed, F.col("id")).alias("event_id"),
        "user_id",
        F.timestamp_seconds(F.lit(int(start.timestamp())) + F.col("second")).alias("event_time"),
        (_row_uniform(seed, "label") < p_click).cast("int").alias("label"),
        *NUMERICS,
        *[_category(seed, name).alias(name) for name in VOCAB_SIZES],
        p_click.alias("p_click"),
        F.floor(F.col("second") * spec.batches / span).cast("int").alias("batch"),
        # UTC wall clock text, whatever the session time zone
        F.date_format(F.timestamp_add("SECOND", F.col("second"),
                                      F.lit(spec.start_date).cast("timestamp_ntz")),
                      "yyyy-MM-dd HH:mm:ss").alias("event_time_text"),
    )


def _with_defects(events: DataFrame, spec: GenerateConfig) -> DataFrame:
    """Mark ``malformed_rate`` of the rows with a defect kind; they leave the accepted truth."""
    kinds = DEFECTS[spec.format]
    pick = F.floor(_row_uniform(spec.seed, "defect-kind") * len(kinds)).cast("int")
    kind = F.array(*[F.lit(k) for k in kinds])[pick]
    defect = F.when(_row_uniform(spec.seed, "defect") < spec.malformed_rate, kind)
    return (events.withColumn("defect", defect)
            .withColumn("landed_label", F.col("label"))
            .withColumn("p_click", F.when(defect.isNull(), F.col("p_click")))
            .withColumn("label", F.when(defect.isNull(), F.col("label"))))


def _landing_frame(events: DataFrame, fmt: str) -> DataFrame:
    """The rows as they land: one text line (csv, json) or typed columns (parquet)."""
    defect, label = F.col("defect"), F.col("landed_label")
    if fmt == "parquet":
        typed = {"event_id": F.when(defect == "null_event_id", None).otherwise(F.col("event_id")),
                 "label": F.when(defect == "bad_label", F.lit(7)).otherwise(label)}
        return events.select(
            *[typed.get(name, F.col(name)).alias(name) for name in _columns()], "batch", "id")
    if fmt == "json":
        fields = {name: F.col(name) for name in _columns()} | {"label": label}

        def record(**override: Column) -> Column:  # nulls are left out of the object
            values = [override.get(n, c).alias(n) for n, c in fields.items()]
            return F.to_json(F.struct(*values), {"timeZone": "UTC"})

        line = (F.when(defect == "broken_json", F.regexp_replace(record(), "}$", ""))
                .when(defect == "non_numeric", record(i3=F.lit("n/a!")))
                .when(defect == "missing_event_id", record(event_id=F.lit(None)))
                .when(defect == "bad_label", record(label=F.lit(7)))
                .otherwise(record()))
    else:
        text = {name: F.col(name).cast("string") for name in _columns()}
        text |= {"event_time": F.col("event_time_text"), "label": label.cast("string")}
        text |= {name: F.col(name).cast("long").cast("string") for name in NUMERICS}
        text = {name: F.coalesce(value, F.lit("")) for name, value in text.items()}

        def tsv(**override: Column) -> Column:
            return F.concat_ws("\t", *[override.get(n, c) for n, c in text.items()])

        line = (F.when(defect == "too_few_fields", F.concat_ws("\t", *list(text.values())[:9]))
                .when(defect == "non_numeric", tsv(i3=F.lit("n/a!")))
                .when(defect == "empty_event_id", tsv(event_id=F.lit("")))
                .when(defect == "bad_label", tsv(label=F.lit("7")))
                .when(defect == "garbage", F.lit("~~ GARBAGE: not a click record ~~"))
                .otherwise(tsv()))
    return events.select(line.alias("value"), "batch", "event_time", "id")


def _columns() -> list[str]:
    return ["event_id", "user_id", "event_time", "label", *NUMERICS, *VOCAB_SIZES]


def _land(spark: SparkSession, events: DataFrame, spec: GenerateConfig, landing_dir: str) -> list[str]:
    """Write batch k to ``landing_dir/batch-0000k/part-0000i.<ext>``, replacing earlier files.

    Spark writes to a staging folder with its own (random) file names; we then move the
    files, in task order, to fixed names, so the layout is the same on every run.
    """
    slots = max(1, math.ceil(spec.rows / spec.batches / ROWS_PER_FILE))
    slot = F.floor(_uniform(spec.seed, F.col("id"), "file") * slots)
    staging = f"{landing_dir.rstrip('/')}/_staging"
    frame = (_landing_frame(events, spec.format).withColumn("slot", slot)
             .repartition(spec.batches * slots, "batch", "slot")
             .sortWithinPartitions("batch", "event_time", "id")
             .drop("slot", "id"))
    if spec.format == "parquet":
        frame.write.mode("overwrite").partitionBy("batch").parquet(staging)
    else:
        frame.drop("event_time").write.mode("overwrite").partitionBy("batch").text(staging)
    return _publish(spark, staging, landing_dir, spec.batches, EXTENSIONS[spec.format])


def _publish(
    spark: SparkSession, staging: str, landing_dir: str, batches: int, ext: str
) -> list[str]:
    """Swap the staged part files into fixed names through Hadoop's FileSystem (any store)."""
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path
    fs = path(landing_dir).getFileSystem(spark._jsc.hadoopConfiguration())
    # Locally, moving through the wrapper (checksums; Hive's proxy) drags hidden .crc files.
    wrapper = jvm.java.lang.Class.forName("org.apache.hadoop.fs.FilterFileSystem")
    local_wrapper = fs.getScheme() == "file" and wrapper.isInstance(fs)
    mover = fs.getRawFileSystem() if local_wrapper else fs
    root = fs.makeQualified(path(landing_dir))
    for old in fs.globStatus(path(root, "batch-*")) or []:
        fs.delete(old.getPath(), True)
    batch_dirs = []
    for k in range(batches):
        source, target = path(staging, f"batch={k}"), path(root, batch_id(k))
        fs.mkdirs(target)
        staged = fs.listStatus(source) if fs.exists(source) else []
        names = sorted(s.getPath().getName() for s in staged)
        for i, name in enumerate(n for n in names if n.startswith("part-")):
            moved = path(target, f"part-{i:05d}.{ext}")
            if not mover.rename(fs.makeQualified(path(source, name)), moved):
                raise OSError(f"could not move {source}/{name} to {moved}")
        batch_dirs.append(target.toString())
    fs.delete(path(staging), True)
    return batch_dirs
