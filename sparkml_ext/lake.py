"""Delta table verbs every job shares: versions, exactly-once appends, batch ledgers.

Exactly-once rests on two Delta facts. A write carrying ``txnAppId``/``txnVersion`` is
skipped atomically when that pair was already committed, so a retried or re-run append
never lands twice, even after a crash between two tables' commits. But Delta skips it
*even if the data differs*, so each batch's content fingerprint is claimed in a ledger
table first, and a reused batch id with other content is refused.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass

from delta.exceptions import DeltaConcurrentModificationException
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

class BatchConflict(RuntimeError):
    """A batch id was reused for different content."""


@dataclass(frozen=True)
class BatchRecord:
    fingerprint: str
    committed: bool
    report: dict | None


def is_delta(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def current_version(spark: SparkSession, path: str) -> int | None:
    """Latest committed version, or None when no Delta table exists at `path`."""
    if not is_delta(spark, path):
        return None
    return DeltaTable.forPath(spark, path).history(1).select("version").head()[0]


def read_version(spark: SparkSession, path: str, version: int | None = None) -> tuple[DataFrame, int]:
    """The table at a pinned version (the latest when None), and that version."""
    pinned = current_version(spark, path) if version is None else version
    if pinned is None:
        raise FileNotFoundError(f"no Delta table at {path}")
    return spark.read.format("delta").option("versionAsOf", pinned).load(path), pinned


def append_once(
    df: DataFrame,
    path: str,
    *,
    app_id: str,
    partition_by: list[str] | None = None,
    metadata: dict | None = None,
    properties: dict[str, str] | None = None,
) -> int | None:
    """Append `df` unless `app_id` already committed to this table.

    `properties` (e.g. ``delta.enableChangeDataFeed``) apply when this write creates the
    table. Returns the version written, or None when Delta skipped the write as a repeat.
    """
    spark = df.sparkSession
    before = current_version(spark, path)
    writer = (
        df.write.format("delta")
        .mode("append")
        .option("txnAppId", app_id)
        .option("txnVersion", 0)
    )
    if before is None and properties:
        writer = writer.options(**properties)
    if metadata:
        writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True))
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)
    after = current_version(spark, path)
    return after if after != before else None


def merge_by_key(
    df: DataFrame,
    path: str,
    key: str,
    *,
    metadata: dict,
    partition_by: list[str] | None = None,
    attempts: int = 3,
) -> int:
    """Upsert `df` by `key` (creating the table on first use); returns the version written.

    The source is deduplicated by key first (MERGE refuses several matches per target
    row), `metadata` lands in the commit atomically with the data, and a conflict with a
    concurrent writer is retried a bounded number of times.
    """
    spark = df.sparkSession
    source = df.dropDuplicates([key])
    attempt = 1
    while True:
        try:
            _upsert(source, path, key, metadata, partition_by)
            return current_version(spark, path)
        except DeltaConcurrentModificationException:
            if attempt >= attempts:
                raise
            attempt += 1


def _upsert(source: DataFrame, path: str, key: str, metadata: dict, partition_by: list[str] | None) -> None:
    spark = source.sparkSession
    if not is_delta(spark, path):
        writer = source.write.format("delta").mode("append")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.option("userMetadata", json.dumps(metadata, sort_keys=True)).save(path)
        return
    with _commit_metadata(spark, metadata):
        (
            DeltaTable.forPath(spark, path).alias("t")
            .merge(source.alias("s"), f"t.`{key}` = s.`{key}`")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )


@contextmanager
def _commit_metadata(spark: SparkSession, metadata: dict):
    """MERGE takes no writer options: its commit metadata comes from the session."""
    conf = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(conf, json.dumps(metadata, sort_keys=True))
    try:
        yield
    finally:
        spark.conf.unset(conf)


def last_metadata(spark: SparkSession, path: str, job: str) -> dict | None:
    """The newest commit metadata `job` left on a table (None for no table or no such commit)."""
    if not is_delta(spark, path):
        return None
    for row in (
        DeltaTable.forPath(spark, path).history()
        .where(F.col("userMetadata").isNotNull())
        .orderBy(F.col("version").desc())
        .select("userMetadata")
        .toLocalIterator()
    ):
        meta = json.loads(row[0])
        if meta.get("job") == job:
            return meta
    return None


def rows_written(spark: SparkSession, path: str, version: int) -> int:
    """Rows a write added or rewrote, from the commit's own metrics (no table scan)."""
    row = (
        DeltaTable.forPath(spark, path)
        .history()
        .where(F.col("version") == version)
        .select("operationMetrics")
        .head()
    )
    if not row:
        return 0
    metrics = row[0]
    if "numTargetRowsInserted" in metrics:  # a MERGE: inserted + updated, not copied rows
        return int(metrics["numTargetRowsInserted"]) + int(metrics["numTargetRowsUpdated"])
    return int(metrics.get("numOutputRows", 0))


def ledger_record(spark: SparkSession, ledger: str, job: str, batch_id: str) -> BatchRecord | None:
    """What the ledger knows of a batch: its claimed fingerprint and whether it finished."""
    if not is_delta(spark, ledger):
        return None
    rows = (
        spark.read.format("delta")
        .load(ledger)
        .where((F.col("job") == job) & (F.col("batch_id") == batch_id))
        .select("fingerprint", "status", "report")
        .collect()  # driver-ok: at most a claim and a commit row per batch
    )
    if not rows:
        return None
    done = [r for r in rows if r.status == "committed"]
    report = json.loads(done[0].report) if done else None
    return BatchRecord(rows[0].fingerprint, bool(done), report)


def claim_batch(spark: SparkSession, ledger: str, job: str, batch_id: str, fingerprint: str) -> None:
    """Record the batch's fingerprint before any data lands; refuse other content."""
    known = ledger_record(spark, ledger, job, batch_id)
    if known is not None and known.fingerprint != fingerprint:
        raise BatchConflict(
            f"batch id {batch_id!r} was already used by {job} for different content "
            f"(fingerprint {known.fingerprint[:12]}…, now {fingerprint[:12]}…). "
            "Use a new batch id for new data."
        )
    _ledger_append(spark, ledger, job, batch_id, fingerprint, "claimed", None)


def commit_batch(
    spark: SparkSession, ledger: str, job: str, batch_id: str, fingerprint: str, report: dict
) -> None:
    _ledger_append(spark, ledger, job, batch_id, fingerprint, "committed", report)


def _ledger_append(
    spark: SparkSession,
    ledger: str,
    job: str,
    batch_id: str,
    fingerprint: str,
    status: str,
    report: dict | None,
) -> None:
    row = spark.createDataFrame(
        [(job, batch_id, fingerprint, status, json.dumps(report) if report else None)],
        "job string, batch_id string, fingerprint string, status string, report string",
    ).withColumn("recorded_at", F.current_timestamp())
    append_once(row, ledger, app_id=f"{job}:{status}:{batch_id}")
