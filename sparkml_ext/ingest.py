"""Ingest one landing batch into the bronze Delta table, exactly once.

Every input record ends in exactly one place: bronze (typed, partitioned by event
date) or quarantine (raw record, reasons, batch id). Parsing, typing and checks are
native Spark expressions; only per-file fingerprints and a few counts reach the driver.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from sparkml_ext import lake
from sparkml_ext.config import ConfigError, PipelineConfig, SourceConfig

JOB = "ingest"
CORRUPT = "_corrupt_record"
REASONS = "_reasons"
RAW = "_raw_record"
SOURCE_FILE = "_source_file"
BATCH = "_batch_id"
INTERNAL = (CORRUPT, REASONS, RAW, SOURCE_FILE)
# What a text reader puts where the input's bytes are not valid in its encoding.
REPLACEMENT_CHAR = "\ufffd"


class IngestError(RuntimeError):
    """Input the job will not write: a missing or empty batch, or a bad record in fail mode."""


@dataclass
class IngestReport:
    batch_id: str
    input: str
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int | None] = field(default_factory=dict)
    already_ingested: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        state = " (already ingested: nothing written)" if self.already_ingested else ""
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())) or "none"
        return (
            f"ingest batch {self.batch_id}{state}: read {self.rows_read}, accepted {self.accepted}, "
            f"quarantined {self.quarantined} ({reasons}); versions {self.versions}"
        )


def ingest_batch(
    spark: SparkSession, cfg: PipelineConfig, batch_id: str, input_path: str | None = None
) -> IngestReport:
    """Land `batch_id` (by default the folder `<source.path>/<batch_id>`) in bronze."""
    started = time.monotonic()
    path = cfg.batch_path(batch_id, input_path)
    report = IngestReport(batch_id=batch_id, input=path)
    fingerprint = batch_fingerprint(spark, path)
    ledger = cfg.table_path("batches")

    known = lake.ledger_record(spark, ledger, JOB, batch_id)
    if known and known.committed and known.fingerprint == fingerprint:
        done = IngestReport(**{**known.report, "already_ingested": True})
        done.seconds = round(time.monotonic() - started, 2)
        return done

    bronze, quarantine = cfg.table_path("bronze"), cfg.table_path("quarantine")
    with _unreadable_files_refused(path):
        records = validate(read_batch(spark, cfg.source, path, cfg.ingest.schema_evolution), cfg, path)
        if cfg.ingest.on_bad_record == "fail":
            _fail_on_first_bad(records)
        report.rows_read = count_records(spark, cfg.source, path)
        if report.rows_read == 0:
            raise IngestError(f"input {path} holds no records; nothing was written")

        for table in (ledger, bronze, quarantine):
            lake.require_writable(spark, table)
        lake.claim_batch(spark, ledger, JOB, batch_id, fingerprint)
        meta = {"job": JOB, "batch_id": batch_id, "fingerprint": fingerprint}
        bronze_version = lake.append_once(
            _accepted(records, batch_id, cfg.source.event_time), bronze,
            app_id=f"{JOB}:{batch_id}", partition_by=["event_date"], metadata=meta,
            properties={"delta.enableChangeDataFeed": "true"},  # features read only new rows
            merge_schema=cfg.ingest.schema_evolution,
        )
        quarantine_version = lake.append_once(
            _quarantined(records, batch_id), quarantine,
            app_id=f"{JOB}:{batch_id}", partition_by=["batch_id"], metadata=meta,
        )
    report.versions = {"bronze": bronze_version, "quarantine": quarantine_version}
    report.accepted = (
        lake.rows_written(spark, bronze, bronze_version)
        if bronze_version is not None
        else spark.read.format("delta").load(bronze).where(F.col(BATCH) == batch_id).count()
    )
    report.reasons = _quarantine_reasons(spark, quarantine, batch_id)
    report.quarantined = sum(report.reasons.values())
    if report.accepted + report.quarantined != report.rows_read:
        raise IngestError(
            f"batch {batch_id}: counts do not reconcile: read {report.rows_read} != accepted "
            f"{report.accepted} + quarantined {report.quarantined}; the batch stays uncommitted"
        )
    report.seconds = round(time.monotonic() - started, 2)
    lake.commit_batch(spark, ledger, JOB, batch_id, fingerprint, asdict(report))
    return report


def batch_fingerprint(spark: SparkSession, path: str) -> str:
    """SHA-256 over each file's name and content hash, computed on the executors.

    Also the place where a missing or empty batch is refused, before anything is read.
    """
    if not _path_exists(spark, path):
        raise IngestError(f"input path {path} does not exist; nothing was written")
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(path)
        .select("path", "length", F.sha2("content", 256).alias("sha"))
        .collect()  # driver-ok: one small row per file
    )
    if not files or sum(f.length for f in files) == 0:
        raise IngestError(f"input path {path} has no data files (or only empty ones); nothing was written")
    root = path.rstrip("/").split("://")[-1]
    entries = sorted(f"{f.path.split(root, 1)[-1]}:{f.length}:{f.sha}" for f in files)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _path_exists(spark: SparkSession, path: str) -> bool:
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs.exists(hadoop_path)


_FAILED_READ = re.compile(r"\[FAILED_READ_FILE[.\w]*\] Encountered error while reading file (\S+)\.")


@contextmanager
def _unreadable_files_refused(path: str) -> Iterator[None]:
    """A corrupt or truncated input file is refused by name, not shown as a Spark stack trace.

    Spark reads files lazily, so this covers the whole job up to the last table write
    (no commit happens once a read fails).
    """
    try:
        yield
    except Exception as err:
        match = _FAILED_READ.search(str(err))
        if match is None:
            raise
        detail = str(err)[match.end():].strip().splitlines()[0]
        raise IngestError(
            f"input {path}: cannot read {match.group(1)} (corrupt or truncated file: {detail}); "
            "nothing was written"
        ) from None


def read_batch(spark: SparkSession, source: SourceConfig, path: str, evolve: bool = False) -> DataFrame:
    """Raw records with their source file and raw text; typing happens in `validate`.

    Text formats are read with every column as a string, so a value of the wrong type
    is kept (and quarantined) instead of silently becoming null. A Parquet batch must hold
    every declared column; columns it adds are refused unless `evolve` is on, and then
    kept as they are.
    """
    reader = spark.read.option("recursiveFileLookup", "true")
    if source.format == "parquet":
        # every file's footer: a column that only some files add must not go unseen
        df = reader.option("mergeSchema", "true").parquet(path)
        missing = [c for c in source.schema if c not in df.columns]
        extra = [c for c in df.columns if c not in source.schema]
        if missing:
            raise IngestError(
                f"input {path} does not match source.schema: missing columns {missing}"
                f"{f', unexpected columns {extra}' if extra else ''}; nothing was written"
            )
        if extra and not evolve:
            raise IngestError(
                f"input {path} has columns that are not in source.schema: {extra}; set "
                "ingest.schema_evolution: true to add them to bronze. Nothing was written"
            )
        return df.select(
            *source.schema,
            *extra,
            F.lit(None).cast("string").alias(CORRUPT),
            F.to_json(F.struct(*source.schema, *extra)).alias(RAW),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
        )
    ddl = ", ".join(f"`{c}` string" for c in [*source.schema, CORRUPT])
    options = {**source.options, "mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    df = reader.schema(ddl).options(**options).format(source.format).load(path)
    if source.format == "csv":
        sep = source.options.get("sep", ",")
        rebuilt = F.concat_ws(sep, *[F.coalesce(F.col(c), F.lit("")) for c in source.schema])
    else:
        rebuilt = F.to_json(F.struct(*source.schema))
    return df.select(
        *source.schema,
        CORRUPT,
        F.coalesce(F.col(CORRUPT), rebuilt).alias(RAW),
        F.col("_metadata.file_path").alias(SOURCE_FILE),
    )


def validate(raw: DataFrame, cfg: PipelineConfig, path: str) -> DataFrame:
    """Typed columns plus `_reasons`: empty for a good record, else why it is quarantined.

    Reasons, first one wins for reporting: malformed, bad_encoding (bytes not valid in
    the reader's encoding), bad_type:<col>, missing:<col>, check:<name>, duplicate_key (a
    key seen earlier in the same batch). Columns outside source.schema pass through.
    """
    source = cfg.source
    extra = [c for c in raw.columns if c not in source.schema and c not in INTERNAL]
    typed = raw.select(
        *[_typed(F.col(c), t, source.timestamp_format).alias(c) for c, t in source.schema.items()],
        *extra,
        _flags(
            [(F.col(RAW).contains(REPLACEMENT_CHAR), "bad_encoding")]
            + [(F.col(c).isNotNull() & _typed(F.col(c), t, source.timestamp_format).isNull(), f"bad_type:{c}")
               for c, t in source.schema.items()]
        ).alias("_value_errors"),
        CORRUPT, RAW, SOURCE_FILE,
    )
    missing = [
        (F.col(c).isNull() | (F.trim(F.col(c)) == "" if source.schema[c] == "string" else F.lit(False)),
         f"missing:{c}")
        for c in source.not_null
    ]
    checks = [(~F.coalesce(_check(typed, name, sql, cfg.path), F.lit(True)), f"check:{name}")
              for name, sql in source.checks.items()]
    reasons = F.when(F.col(CORRUPT).isNotNull(), F.array(F.lit("malformed"))).otherwise(
        F.concat(F.col("_value_errors"), _flags(missing + checks))
    )
    first_of_key = Window.partitionBy(source.key).orderBy(
        F.size(REASONS) > 0, F.col(SOURCE_FILE), F.col(RAW)
    )
    duplicate = (F.size(REASONS) == 0) & (F.row_number().over(first_of_key) > 1)
    return (
        typed.withColumn(REASONS, reasons)
        .withColumn(
            REASONS,
            F.when(duplicate, F.array(F.lit("duplicate_key"))).otherwise(F.col(REASONS)),
        )
        .drop("_value_errors")
    )


def _typed(column: Column, spark_type: str, timestamp_format: str) -> Column:
    if spark_type == "timestamp":
        return F.coalesce(
            F.try_to_timestamp(column.cast("string"), F.lit(timestamp_format)),
            column.try_cast("timestamp"),
        )
    return column.try_cast(spark_type)


def _flags(conditions: list[tuple[Column, str]]) -> Column:
    """An array of the labels whose condition holds (nulls count as false)."""
    if not conditions:
        return F.array().cast("array<string>")
    return F.array_compact(F.array(*[F.when(cond, F.lit(label)) for cond, label in conditions]))


def _check(df: DataFrame, name: str, sql: str, file: str) -> Column:
    """A declared SQL check, resolved now so a typo fails before any data is read."""
    try:
        df.select(F.expr(sql)).schema
    except AnalysisException as err:
        first_line = str(err).splitlines()[0]
        raise ConfigError(f"{file}: source.checks.{name}: {sql!r} is not valid here: {first_line}") from None
    return F.expr(sql)


def _fail_on_first_bad(records: DataFrame) -> None:
    bad = records.where(F.size(REASONS) > 0).select(SOURCE_FILE, RAW, REASONS).head()
    if bad is not None:
        raise IngestError(
            f"bad record in {bad[SOURCE_FILE]} ({', '.join(bad[REASONS])}): {bad[RAW][:300]!r}; "
            "on_bad_record is 'fail', so nothing was written"
        )


def _accepted(records: DataFrame, batch_id: str, event_time: str) -> DataFrame:
    data_columns = [c for c in records.columns if c not in INTERNAL]
    return records.where(F.size(REASONS) == 0).select(
        *data_columns,
        F.to_date(F.col(event_time)).alias("event_date"),
        F.lit(batch_id).alias(BATCH),
        F.col(SOURCE_FILE),
    )


def _quarantined(records: DataFrame, batch_id: str) -> DataFrame:
    return records.where(F.size(REASONS) > 0).select(
        F.lit(batch_id).alias("batch_id"),
        F.col(SOURCE_FILE).alias("source_file"),
        F.col(RAW).alias("raw_record"),
        F.col(REASONS)[0].alias("reason"),
        F.col(REASONS).alias("reasons"),
        F.current_timestamp().alias("quarantined_at"),
    )


def _quarantine_reasons(spark: SparkSession, quarantine: str, batch_id: str) -> dict[str, int]:
    rows = (
        spark.read.format("delta").load(quarantine)
        .where(F.col("batch_id") == batch_id)
        .groupBy("reason").count()
        .collect()  # driver-ok: one row per reason
    )
    return {r["reason"]: r["count"] for r in rows}


def count_records(spark: SparkSession, source: SourceConfig, path: str) -> int:
    """Records in the input, counted independently of parsing, to reconcile against."""
    reader = spark.read.option("recursiveFileLookup", "true")
    if source.format == "parquet":
        return reader.parquet(path).count()
    lines = reader.text(path)
    # The CSV reader skips empty lines; the JSON reader skips blank ones.
    keep = F.col("value") != "" if source.format == "csv" else F.trim(F.col("value")) != ""
    return lines.where(keep).count()
