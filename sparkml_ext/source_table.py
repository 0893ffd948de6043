"""An existing Delta table as ingest's source (source.format: delta), read by version, exactly once.

A batch is a range of the source table's versions, and its id says which: `v<first>-v<last>`.
The first batch is the table's snapshot at the version current when the job starts
(`v0-v<that>`); each later one is the change data feed from the version after the last
ingested one to the version current when the job starts. Inserted rows and update
post-images are records, typed and checked like a landing file's (an update post-image
meets the existing-key rules, ingest.on_existing_key); deletes and update pre-images hold
no record and are counted in the report's `skipped_lines` by kind.

Why ids named by their range: they keep every guarantee of the landing ledger without a
new one. The next range starts after the highest version that a committed batch of this
source recorded (its report's `source_range`), so two runs never ingest a version twice. A
run that claimed its range and died before its ledger commit left a claim: the next run
retries that same range (same id, same fingerprint), which `landing.land` completes as it
completes a half-done landing batch, never a wider one that would read some versions
twice. The fingerprint is the source's name and the range, so the same range of another
table (a source renamed or replaced) is refused as a reused id, nothing written.

The records reconcile against a separate count of the same versions (the snapshot's rows,
or the change rows per version and kind): it proves that staging, typing, the key lookup
and routing neither lost nor duplicated a record of what Delta returned; that Delta's change
feed itself is complete is Delta's to keep.
"""

from __future__ import annotations

import hashlib
import json
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from sparkml_ext import lake
from sparkml_ext.config import PipelineConfig
from sparkml_ext.landing import (
    CORRUPT,
    JOB,
    RAW,
    SEQUENCE,
    SOURCE_FILE,
    Batch,
    FileLines,
    IngestError,
    IngestReport,
    land,
    refuse_taken_names,
    validate,
)

CHANGE, VERSION = "_change_type", "_commit_version"  # the change data feed's own columns
RECORDS = ("insert", "update_postimage")
NO_RECORD = ("delete", "update_preimage")
FEED_COLUMNS = (CHANGE, VERSION, "_commit_timestamp")


def ingest_table(spark: SparkSession, cfg: PipelineConfig) -> IngestReport:
    """Land the source table's versions not ingested yet; when there are none, the last
    batch's report, marked already ingested (nothing written)."""
    started = time.monotonic()
    refuse_taken_names(cfg)
    name, key = source_name(cfg)
    latest = _latest_version(spark, cfg, name, key)
    _require_change_feed(spark, cfg, name, key)
    first, last, done = _next_range(spark, cfg, name, latest)
    if last is None:
        return IngestReport(**{**done, "already_ingested": True, "seconds": round(time.monotonic() - started, 2)})
    batch = Batch(
        f"v{first}-v{last}", name, range_fingerprint(name, first, last),
        count=lambda: _count(spark, cfg, name, first, last),
        records=lambda _: _records(spark, cfg, name, first, last),
        source_range=[first, last],
    )
    return land(spark, cfg, batch, started)


def source_name(cfg: PipelineConfig) -> tuple[str, str]:
    """The source table as Spark SQL names it, and the config key that names it."""
    if cfg.source.table:
        return cfg.source.table, "source.table"
    return lake.sql_name(cfg.source.path), "source.path"


def range_fingerprint(name: str, first: int, last: int) -> str:
    return hashlib.sha256(f"{name}\n{first}\n{last}".encode()).hexdigest()


def _latest_version(spark: SparkSession, cfg: PipelineConfig, name: str, key: str) -> int:
    try:
        return lake.table_version(spark, name)
    except AnalysisException as err:
        raise IngestError(f"{cfg.path}: {key}: {name} is not a Delta table Spark can read "
                          f"({str(err).splitlines()[0]}); nothing was written") from None


def _require_change_feed(spark: SparkSession, cfg: PipelineConfig, name: str, key: str) -> None:
    """Refuse a table that does not record its changes, from the first batch on: the versions
    after the snapshot could never be read, and exactly once would be lost."""
    if lake.table_properties(spark, name).get("delta.enableChangeDataFeed", "false").lower() != "true":
        raise _no_change_feed(cfg, name, key, "does not record its changes")


def _no_change_feed(cfg: PipelineConfig, name: str, key: str, what: str) -> IngestError:
    return IngestError(
        f"{cfg.path}: {key}: {name} {what} (its change data feed), which ingest reads to take each new "
        f"version exactly once. Run `ALTER TABLE {name} SET TBLPROPERTIES (delta.enableChangeDataFeed = "
        "true)`, then ingest again; nothing was written"
    )


def _next_range(
    spark: SparkSession, cfg: PipelineConfig, name: str, latest: int
) -> tuple[int, int | None, dict | None]:
    """(first, last, None) of the next batch, or (first, None, the last batch's report) when
    no version is new."""
    entries = lake.ledger_entries(spark, cfg.table_path("batches"), JOB)
    if entries is None:
        return 0, latest, None
    report_of = F.get_json_object("report", "$.input") == name
    committed = entries.where((F.col("status") == "committed") & report_of)
    done = (committed.select("report", F.get_json_object("report", "$.source_range[1]").cast("bigint").alias("last"))
            .orderBy(F.col("last").desc()).head())  # driver-ok: one row
    first = 0 if done is None else done["last"] + 1
    if first > latest + 1:
        raise IngestError(
            f"{cfg.path}: {source_name(cfg)[1]}: {name} is at version {latest}, but its version "
            f"{done['last']} was ingested already: the table was replaced (its versions restarted), so its "
            "new versions cannot be told from those ingested. Ingest it into a new lakehouse; nothing was written")
    claims = (entries.where((F.col("status") == "claimed") & F.col("batch_id").startswith(f"v{first}-v"))
              .join(entries.where(F.col("status") == "committed").select("batch_id"), "batch_id", "left_anti")
              .select("batch_id", "fingerprint").collect())  # driver-ok: a claim per run that died
    for claim in claims:
        last = int(claim.batch_id.rpartition("-v")[2])
        if claim.fingerprint == range_fingerprint(name, first, last):
            return first, last, None  # a run that died after its claim: finish that range
    if first > latest:
        return first, None, json.loads(done["report"])
    return first, latest, None


def _count(
    spark: SparkSession, cfg: PipelineConfig, name: str, first: int, last: int
) -> tuple[dict[str, FileLines], dict[str, int]]:
    """The records per source version, and the change rows that hold none by kind: counted
    apart from the records' own read, for the reconciliation."""
    if first == 0:
        return {_origin(name, last): FileLines(content=lake.read_table(spark, name, last).count())}, {}
    try:
        rows = (lake.read_table_changes(spark, name, first, last).groupBy(VERSION, CHANGE).count()
                .collect())  # driver-ok: one row per version and kind of change
    except AnalysisException as err:
        if "DELTA_MISSING_CHANGE_DATA" not in str(err):
            raise
        raise _no_change_feed(cfg, name, source_name(cfg)[1],
                              f"did not record its changes for all of versions {first} to {last}") from None
    records: dict[str, int] = {}
    skipped = dict.fromkeys(NO_RECORD, 0)
    for row in rows:
        if row[CHANGE] in RECORDS:
            origin = _origin(name, row[VERSION])
            records[origin] = records.get(origin, 0) + row["count"]
        else:
            skipped[row[CHANGE]] += row["count"]
    return {origin: FileLines(content=n) for origin, n in records.items()}, skipped


def _records(spark: SparkSession, cfg: PipelineConfig, name: str, first: int, last: int) -> DataFrame:
    """The range's records, validated like a text format's: each declared column read as its
    text, so a value that does not take the declared type is quarantined (bad_type:<col>),
    not cut (a double 1.5 into an int column). The table's other columns are not taken, but
    with ingest.schema_evolution, which adds them to bronze as they are."""
    if first == 0:
        rows = lake.read_table(spark, name, last).withColumn(VERSION, F.lit(last))
    else:
        rows = lake.read_table_changes(spark, name, first, last).where(F.col(CHANGE).isin(*RECORDS))
    schema = cfg.source.schema
    missing = [c for c in schema if c not in rows.columns]
    if missing:
        raise IngestError(f"{cfg.path}: source.schema: {name} has no column {missing[0]!r}"
                          f"{f' (nor {missing[1:]})' if missing[1:] else ''}; nothing was written")
    extra = [c for c in rows.columns if c not in schema and c not in FEED_COLUMNS] \
        if cfg.ingest.schema_evolution else []
    raw = rows.select(
        *[F.col(c).cast("string").alias(c) for c in schema],
        *extra,
        F.lit(None).cast("string").alias(CORRUPT),
        F.to_json(F.struct(*schema, *extra)).alias(RAW),
        F.concat(F.lit(f"{name}@v"), F.col(VERSION).cast("string")).alias(SOURCE_FILE),
        F.col(VERSION).alias(SEQUENCE),
    )
    return validate(raw, cfg, name)


def _origin(name: str, version: int) -> str:
    """Where a record came from, as quarantine's source_file names it: the table at a version."""
    return f"{name}@v{version}"
