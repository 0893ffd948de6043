"""Delta table verbs every job shares: versions, exactly-once appends, batch ledgers.

Exactly-once rests on two Delta facts. A write carrying ``txnAppId``/``txnVersion`` is
skipped atomically when that pair was already committed, so a retried or re-run append
never lands twice, even after a crash between two tables' commits. But Delta skips it
*even if the data differs*, so each batch's content fingerprint is claimed in a ledger
table first, and a reused batch id with other content is refused.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TypeVar

from delta import exceptions as delta_errors
from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F

from sparkml_ext.session import session_settings
from sparkml_ext.storage import filesystem

log = logging.getLogger(__name__)
T = TypeVar("T")

# The column of a landing table (bronze) that names the batch each row came in.
BATCH_COLUMN = "_batch_id"
# A table of timestamped events (bronze, features) is partitioned by the event's UTC date,
# so a time range reads only its days; a table without an event time is not partitioned.
DATE_COLUMN = "event_date"


def event_date(event_time: str | None) -> list[Column]:
    """The date partition column of `event_time`, to select beside a row's columns."""
    return [F.to_date(F.col(event_time)).alias(DATE_COLUMN)] if event_time else []


def date_partitions(event_time: str | None) -> list[str] | None:
    """What a table with (or without) this event time is partitioned by."""
    return [DATE_COLUMN] if event_time else None

# Delta's commit conflicts. In delta-spark's Python API the specific ones do not derive
# from DeltaConcurrentModificationException, so catching that alone catches none of them.
CONFLICTS = tuple(
    getattr(delta_errors, name)
    for name in (
        "DeltaConcurrentModificationException", "ConcurrentWriteException", "MetadataChangedException",
        "ProtocolChangedException", "ConcurrentAppendException", "ConcurrentDeleteReadException",
        "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
    )
)


class BatchConflict(RuntimeError):
    """A batch id was reused for different content."""


class StorageError(OSError):
    """A table location that cannot take files (read-only, no permission, not a directory)."""


class CatalogConflict(RuntimeError):
    """A metastore name is already taken by a table at another location."""


@dataclass(frozen=True)
class BatchRecord:
    fingerprint: str
    committed: bool
    report: dict | None


def is_delta(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def current_version(spark: SparkSession, path: str) -> int | None:
    """Latest committed version, or None when no Delta table exists at `path`.

    Asked of Delta's own log object on the driver (its cached snapshot, brought up to date
    from the log's listing): about 10 ms, where the same answer read from `history(1)`
    costs a Spark job (~0.4 s). Every job asks this several times per table and run.
    """
    if not is_delta(spark, path):
        return None
    jvm = spark.sparkContext._jvm
    log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
    return int(log.update(False, jvm.scala.Option.empty(), jvm.scala.Option.empty()).version())


def _commit_infos(path: str, newest: int, oldest: int = 0) -> Iterator[tuple[int, dict]]:
    """Each commit's `commitInfo` action (userMetadata, operationMetrics, …), newest first,
    read from the commit files themselves (the Delta protocol: `_delta_log/<20-digit
    version>.json`, one JSON action per line); stops at a commit the log has cleaned up.

    A few milliseconds per commit, where a `history()` DataFrame costs a Spark job.
    """
    fs, root = filesystem(path)
    for version in range(newest, oldest - 1, -1):
        try:
            with fs.open_input_stream(f"{root}/_delta_log/{version:020d}.json") as stream:
                actions = stream.read().decode().splitlines()
        except FileNotFoundError:
            return
        info = next((json.loads(a)["commitInfo"] for a in actions if a.startswith('{"commitInfo"')), {})
        yield version, info


def read_version(spark: SparkSession, path: str, version: int | None = None) -> tuple[DataFrame, int]:
    """The table at a pinned version (the latest when None), and that version."""
    pinned = current_version(spark, path) if version is None else version
    if pinned is None:
        raise FileNotFoundError(f"no Delta table at {path}")
    return spark.read.format("delta").option("versionAsOf", pinned).load(path), pinned


def read_changes(spark: SparkSession, path: str, start: int, end: int) -> DataFrame:
    """The table's change data feed over versions [start, end]: each changed row with its
    `_change_type` (insert, delete, update_preimage, update_postimage)."""
    return _change_feed(spark.read.format("delta"), start, end).load(path)


def _change_feed(reader: DataFrameReader, start: int, end: int) -> DataFrameReader:
    return reader.option("readChangeFeed", "true").option("startingVersion", start).option("endingVersion", end)


def sql_name(path: str) -> str:
    """The Delta table at `path` as Spark SQL names it (delta.`<path>`), for the verbs below
    that take a name, so that a path and a catalog table are read the same way."""
    return "delta.`" + path.rstrip("/").replace("`", "``") + "`"


def table_version(spark: SparkSession, name: str) -> int:
    """Latest version of the Delta table Spark SQL calls `name` (a catalog table, or
    `sql_name(path)`). Asked of its history (one small Spark job), not of its log as
    `current_version` does: a catalog table (Unity Catalog's) may have no path to open."""
    return int(spark.sql(f"DESCRIBE HISTORY {name} LIMIT 1").head()["version"])  # driver-ok: one row


def table_properties(spark: SparkSession, name: str) -> dict[str, str]:
    """The table properties (`delta.enableChangeDataFeed`, ...) of the Delta table `name`."""
    return dict(spark.sql(f"DESCRIBE DETAIL {name}").head()["properties"] or {})  # driver-ok: one row


def read_table(spark: SparkSession, name: str, version: int) -> DataFrame:
    """The Delta table `name` (see `table_version`) as of `version`."""
    return spark.read.option("versionAsOf", version).table(name)


def read_table_changes(spark: SparkSession, name: str, start: int, end: int) -> DataFrame:
    """`read_changes` of the Delta table `name` (see `table_version`) rather than a path."""
    return _change_feed(spark.read, start, end).table(name)


def require_writable(spark: SparkSession, path: str) -> None:
    """Fail before any commit when `path` cannot take files, naming the path and why.

    Writes and deletes a probe file through Hadoop's file system (so it checks local
    folders, HDFS and object stores alike); creates the folder when it is missing.
    """
    jvm = spark.sparkContext._jvm
    folder = jvm.org.apache.hadoop.fs.Path(path)
    probe = jvm.org.apache.hadoop.fs.Path(folder, f"_write_probe_{uuid.uuid4().hex}")
    try:
        fs = folder.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        fs.mkdirs(folder)
        fs.create(probe, False).close()
        fs.delete(probe, False)
    except Py4JJavaError as err:
        raise StorageError(
            f"cannot write to {path}: {err.java_exception.toString()}; nothing was written"
        ) from None


@contextmanager
def staging_area(spark: SparkSession, near: str, name: str) -> Iterator[str]:
    """A private folder beside the table `near` (``<parent>/_staging/<name>-<uuid>``) that
    no reader looks at, removed on exit whatever happens.

    A job writes its validated input here once, decides from it (counts, refusals), and
    only then commits to the tables readers see. Folders an earlier, killed attempt left
    under the same `name` are removed first.
    """
    jvm = spark.sparkContext._jvm
    parent = jvm.org.apache.hadoop.fs.Path(jvm.org.apache.hadoop.fs.Path(near).getParent(), "_staging")
    fs = parent.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    for stale in fs.globStatus(jvm.org.apache.hadoop.fs.Path(parent, f"{name}-*")) or []:
        fs.delete(stale.getPath(), True)
    folder = jvm.org.apache.hadoop.fs.Path(parent, f"{name}-{uuid.uuid4().hex}")
    try:
        yield folder.toString()
    finally:
        try:
            fs.delete(folder, True)
        except Py4JJavaError as err:  # the store is gone: the job's own error is the one to tell
            log.warning("could not remove %s (%s); the next %s run removes it",
                        folder.toString(), err.java_exception.toString().splitlines()[0][:300], name)


def register(spark: SparkSession, schema: str, name: str, path: str) -> bool:
    """Name the Delta table at `path` as `<schema>.<name>` in the session's catalog (an
    external table), unless it already is; False when no table is at `path` yet.

    A name that points at another location is refused, not silently left pointing there.
    """
    if not is_delta(spark, path):
        return False
    table = f"{schema}.{name}"
    if spark.catalog.tableExists(table):
        location = spark.sql(f"DESCRIBE DETAIL {table}").head()["location"]
        if _location(location) != _location(path):
            raise CatalogConflict(f"{table} already names the table at {location}, not {path}; "
                                  "choose another catalog.schema or drop that name")
        return True
    quoted = path.replace("\\", "\\\\").replace("'", "\\'")
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    spark.sql(f"CREATE TABLE {table} USING DELTA LOCATION '{quoted}'")
    return True


def _location(path: str) -> str:
    """A table location as the catalog and a config may both spell it (file:/x, /x/)."""
    return path.removeprefix("file://").removeprefix("file:").rstrip("/")


def append_once(
    df: DataFrame,
    path: str,
    *,
    app_id: str,
    partition_by: list[str] | None = None,
    metadata: dict | None = None,
    properties: dict[str, str] | None = None,
    merge_schema: bool = False,
    attempts: int = 3,
) -> int | None:
    """Append `df` unless `app_id` already committed to this table.

    `properties` (e.g. ``delta.enableChangeDataFeed``) apply when this write creates the
    table; `merge_schema` lets the write add new columns. A commit conflict (two writers
    creating the table at once) is retried. Returns the version this write committed, or
    None when Delta skipped it as a repeat.
    """
    return _retrying(f"append {app_id}", path, attempts, lambda: _append(
        df, path, app_id, partition_by, {**(metadata or {}), "app_id": app_id}, properties, merge_schema
    ))


def _append(
    df: DataFrame,
    path: str,
    app_id: str,
    partition_by: list[str] | None,
    metadata: dict,
    properties: dict[str, str] | None,
    merge_schema: bool,
) -> int | None:
    spark = df.sparkSession
    before = current_version(spark, path)
    writer = (
        df.write.format("delta")
        .mode("append")
        .option("txnAppId", app_id)
        .option("txnVersion", 0)
        .option("userMetadata", json.dumps(metadata, sort_keys=True))
    )
    if before is None and properties:
        writer = writer.options(**properties)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)
    return _committed_by(spark, path, app_id, before)


def _committed_by(spark: SparkSession, path: str, app_id: str, before: int | None) -> int | None:
    """The version `app_id` committed after `before`, found by its commit metadata.

    Other writers may commit around ours, so "the latest version" is not necessarily ours.
    """
    after = current_version(spark, path)
    if after is None or after == before:
        return None
    oldest = 0 if before is None else before + 1
    return next((v for v, info in _commit_infos(path, after, oldest) if _tagged(info, app_id)), None)


def _retrying(what: str, path: str, attempts: int, write: Callable[[], T]) -> T:
    """Run `write`, retrying Delta commit conflicts: `attempts` tries in all."""
    for attempt in range(1, attempts):
        try:
            return write()
        except CONFLICTS as err:
            log.warning("%s on %s: concurrent commit (%s); retry %d of %d",
                        what, path, type(err).__name__, attempt, attempts - 1)
    return write()


def merge_by_key(
    df: DataFrame,
    path: str,
    key: str,
    *,
    metadata: dict,
    partition_by: list[str] | None = None,
    app_id: str | None = None,
    attempts: int = 3,
) -> int | None:
    """Upsert `df`, which holds each `key` once, by `key` (creating the table on first use);
    returns the version written.

    Both callers prove their rows' keys unique before they write (ingest marks a batch's
    repeated keys, features refuses a bronze that repeats one), so no dedup shuffle of the
    whole source runs here; a MERGE would refuse a repeat anyway (a table's first write, an
    append, would not). `metadata` lands in the commit atomically with the data, and a
    conflict with a concurrent writer is retried a bounded number of times. With `app_id`
    the MERGE is exactly-once like `append_once` (Delta's session-level
    txnAppId/txnVersion): a repeat is skipped and returns None.
    """
    spark = df.sparkSession
    require_writable(spark, path)
    metadata = {**metadata, "app_id": app_id} if app_id else metadata

    def upsert() -> int | None:
        before = current_version(spark, path)
        _upsert(df, path, key, metadata, partition_by, app_id)
        if app_id:
            return _committed_by(spark, path, app_id, before)
        return current_version(spark, path)

    return _retrying(f"merge into {key}", path, attempts, upsert)


def replace_where(df: DataFrame, path: str, condition: str, partition_by: list[str]) -> int:
    """Replace exactly the rows matching `condition` with `df` (Delta's `replaceWhere`),
    creating the table on first use; returns the version written. A re-run replaces the
    same slice again, so it never duplicates rows and never touches other slices. Columns
    `df` adds are added to the table (other slices: null)."""
    (
        df.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", condition)
        .option("mergeSchema", "true")
        .partitionBy(*partition_by)
        .save(path)
    )
    return current_version(df.sparkSession, path)


def replace_table(df: DataFrame, path: str, metadata: dict) -> int:
    """Replace a derived table whole, schema included, in one commit (readers see the old
    version or the new one); for tables that are a pure function of their inputs, where a
    rerun must replace rather than add. Returns the version written."""
    (
        df.write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .option("userMetadata", json.dumps(metadata, sort_keys=True))
        .save(path)
    )
    return current_version(df.sparkSession, path)


def _upsert(
    source: DataFrame, path: str, key: str, metadata: dict, partition_by: list[str] | None, app_id: str | None
) -> None:
    spark = source.sparkSession
    if not is_delta(spark, path):
        writer = source.write.format("delta").mode("append")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if app_id:
            writer = writer.option("txnAppId", app_id).option("txnVersion", 0)
        writer.option("userMetadata", json.dumps(metadata, sort_keys=True)).save(path)
        return
    with _commit_metadata(spark, metadata, app_id):
        (
            DeltaTable.forPath(spark, path).alias("t")
            .merge(source.alias("s"), f"t.`{key}` = s.`{key}`")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )


def _commit_metadata(spark: SparkSession, metadata: dict, app_id: str | None = None) -> AbstractContextManager[None]:
    """MERGE takes no writer options: its commit metadata and txn id come from the session."""
    confs = {"spark.databricks.delta.commitInfo.userMetadata": json.dumps(metadata, sort_keys=True)}
    if app_id:
        confs |= {"spark.databricks.delta.write.txnAppId": app_id, "spark.databricks.delta.write.txnVersion": "0"}
    return session_settings(spark, confs, override=True)


def committed(spark: SparkSession, path: str, app_id: str) -> bool:
    """Whether a write tagged `app_id` (by `append_once` or `merge_by_key`) committed to `path`."""
    newest = current_version(spark, path)
    if newest is None:
        return False
    return any(_tagged(info, app_id) for _, info in _commit_infos(path, newest))


def _tagged(info: dict, app_id: str) -> bool:
    """Whether a commit's metadata carries `app_id` (our writes tag every commit)."""
    try:
        return json.loads(info.get("userMetadata") or "{}").get("app_id") == app_id
    except (ValueError, AttributeError):  # another writer's metadata, not ours
        return False


def last_metadata(spark: SparkSession, path: str, job: str, version: int | None = None) -> dict | None:
    """The newest commit metadata `job` left on a table up to `version` (default: the
    latest); None for no table or no such commit."""
    newest = current_version(spark, path) if version is None else version
    if newest is None:
        return None
    for _, info in _commit_infos(path, newest):
        try:
            meta = json.loads(info.get("userMetadata") or "{}")
        except ValueError:  # another writer's free-text metadata
            continue
        if isinstance(meta, dict) and meta.get("job") == job:
            return meta
    return None


def rows_written(spark: SparkSession, path: str, version: int) -> int:
    """Rows a write added or rewrote, from the commit's own metrics (no table scan)."""
    metrics = next((info.get("operationMetrics", {}) for _, info in _commit_infos(path, version, version)), {})
    if "numTargetRowsInserted" in metrics:  # a MERGE: inserted + updated, not copied rows
        return int(metrics["numTargetRowsInserted"]) + int(metrics["numTargetRowsUpdated"])
    return int(metrics.get("numOutputRows", 0))


def ledger_record(spark: SparkSession, ledger: str, job: str, batch_id: str) -> BatchRecord | None:
    """What the ledger knows of a batch: the fingerprint it committed (else its latest
    claim) and whether it finished."""
    entries = ledger_entries(spark, ledger, job)
    if entries is None:
        return None
    rows = (
        entries.where(F.col("batch_id") == batch_id)
        .orderBy(F.col("recorded_at").desc())
        .select("fingerprint", "status", "report")
        .collect()  # driver-ok: a claim per content tried and a commit row per batch
    )
    if not rows:
        return None
    done = [r for r in rows if r.status == "committed"]
    if done:
        return BatchRecord(done[0].fingerprint, True, json.loads(done[0].report))
    return BatchRecord(rows[0].fingerprint, False, None)


def ledger_entries(spark: SparkSession, ledger: str, job: str) -> DataFrame | None:
    """Every ledger row of `job` (batch_id, fingerprint, status, report as JSON text,
    recorded_at), for a job that finds its next batch in them; None before the first."""
    if not is_delta(spark, ledger):
        return None
    return spark.read.format("delta").load(ledger).where(F.col("job") == job)


def refuse_other_content(
    spark: SparkSession, known: BatchRecord | None, job: str, batch_id: str, fingerprint: str, tables: list[str]
) -> None:
    """Refuse a batch id already used for other content that reached a table; `known` is
    what `ledger_record` said of the id.

    A claim whose data never committed anywhere (the job died between the claim and its
    first commit) does not hold the id: the corrected content may take it.
    """
    if known is None or known.fingerprint == fingerprint:
        return
    if known.committed or any(committed(spark, t, f"{job}:{batch_id}") for t in tables):
        raise BatchConflict(
            f"batch id {batch_id!r} was already used by {job} for different content "
            f"(fingerprint {known.fingerprint[:12]}…, now {fingerprint[:12]}…). "
            "Use a new batch id for new data."
        )


def claim_batch(
    spark: SparkSession,
    ledger: str,
    known: BatchRecord | None,
    job: str,
    batch_id: str,
    fingerprint: str,
    tables: list[str],
) -> None:
    """Record the batch's fingerprint before any data lands in `tables`; refuse other content
    (see `refuse_other_content`). The data writes carry the app id ``<job>:<batch_id>``."""
    refuse_other_content(spark, known, job, batch_id, fingerprint, tables)
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
    # one claim per content tried, one commit per batch
    suffix = f":{fingerprint[:16]}" if status == "claimed" else ""
    append_once(row, ledger, app_id=f"{job}:{status}:{batch_id}{suffix}")
