"""Landing a batch in bronze exactly once, whatever its source: the core that ingest's two
fronts share (`sparkml_ext.ingest`: a folder of landing files; `sparkml_ext.source_table`:
a range of a Delta table's versions).

Every record is accounted for: it lands in bronze (typed, partitioned by event date) or in
quarantine (raw record, reasons, batch id); what holds no record (an empty line, a CSV
header, a deleted row) is counted by kind in the report. A refused batch leaves every
table as it was. The batch's records are validated once into a private staging area; the
reconciliation against the front's independent count, the fail modes and the lookup of
keys bronze already holds all decide on that staged form, and only then is the batch
claimed in the ledger and committed to bronze and quarantine. Typing and checks are
native Spark expressions; only counts reach the driver.
"""

from __future__ import annotations

import functools
import operator
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from sparkml_ext import lake
from sparkml_ext.config import ConfigError, IngestConfig, PipelineConfig, SourceConfig
from sparkml_ext.session import java_causes

JOB = "ingest"
CORRUPT = "_corrupt_record"
REASONS = "_reasons"
RAW = "_raw_record"
SOURCE_FILE = "_source_file"
BATCH = lake.BATCH_COLUMN
HELD_BY = "_held_by"  # the batch that already holds the record's key in bronze
HELD_AT = "_held_at"  # the event time bronze holds for that key
SEQUENCE = "_sequence"  # optional: a source's order of changes (a table's version); the later wins in update mode
ROW = "_row"  # a staged record's id: which of a key's records are its duplicates
INTERNAL = (CORRUPT, REASONS, RAW, SOURCE_FILE, HELD_BY, HELD_AT, SEQUENCE, ROW)
# What a text reader puts where the input's bytes are not valid in its encoding.
REPLACEMENT_CHAR = "\ufffd"
# Control characters no text value should hold (tab, line feed and carriage return excepted).
CONTROL_CHARS = "[\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F]"


class IngestError(RuntimeError):
    """Input the job will not write: a missing or empty batch, or a bad record in fail mode."""


@dataclass
class IngestReport:
    batch_id: str
    input: str
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    updated: int = 0  # accepted records that replaced an older row of their key (on_existing_key: update)
    reasons: dict[str, int] = field(default_factory=dict)
    skipped_lines: dict[str, int] = field(default_factory=dict)  # lines (a table: change rows) that hold no record
    versions: dict[str, int | None] = field(default_factory=dict)
    already_ingested: bool = False
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step: count, stage, lookup, ...
    source_range: list[int] | None = None  # a Delta table source: the versions [first, last] read

    def summary(self) -> str:
        state = " (already ingested: nothing written)" if self.already_ingested else ""
        if self.already_ingested and self.source_range:
            state = f" (nothing new in {self.input} after version {self.source_range[1]}: nothing written)"
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())) or "none"
        updated = f" ({self.updated} replacing older rows)" if self.updated else ""
        unit = "change row(s)" if self.source_range else "line(s)"
        skipped = "".join(f", {n} {kind} {unit} skipped" for kind, n in sorted(self.skipped_lines.items()) if n)
        return (
            f"ingest batch {self.batch_id}{state}: read {self.rows_read}, accepted {self.accepted}{updated}, "
            f"quarantined {self.quarantined} ({reasons}){skipped}; versions {self.versions}"
        )

    def to_dict(self) -> dict:
        """The job's result as the CLI prints it and a run record keeps it: named, rendered."""
        return {"job": JOB, **asdict(self), "summary": self.summary(),
                "counts": {"read": self.rows_read, "accepted": self.accepted, "quarantined": self.quarantined}}


@dataclass(frozen=True)
class FileLines:
    """One input file's lines as an independent text read sees them.

    `content` lines are what the format's reader parses into records (a CSV header
    excluded); `blank` lines hold only whitespace, which the readers drop, so ingest
    quarantines them itself (reason ``blank``); `header` and `comment` lines hold no record.
    """

    content: int
    blank: int = 0
    header: int = 0
    comment: int = 0

    @property
    def records(self) -> int:
        return self.content + self.blank


@dataclass(frozen=True)
class Batch:
    """One batch as `land` takes it, whatever its source (landing files here, a range of a
    Delta table's versions in `sparkml_ext.source_table`).

    `count` is the independent count that the records reconcile against: the records per
    file (or per source version) and, by kind, the lines or rows that hold none. `records`
    gives the batch's records as `validate` returns them, from what `count` found.
    """

    id: str
    input: str
    fingerprint: str
    count: Callable[[], tuple[dict[str, FileLines], dict[str, int]]]
    records: Callable[[dict[str, FileLines]], DataFrame]
    source_range: list[int] | None = None
    timings: dict[str, float] = field(default_factory=dict)  # what the front measured before `land`
    # The fingerprint in the scheme of the one the ledger recorded for this id (a front that
    # changed how it fingerprints); None: the front has one scheme.
    fingerprint_as: Callable[[str], str] | None = None


def refuse_taken_names(cfg: PipelineConfig) -> None:
    """Refuse, before anything is read, a source column named as a column ingest adds: the
    batch id and the event date in bronze (a user's own column of that name would meet ours
    in the write, as Delta's "duplicate column" error), and its working columns."""
    added = {BATCH: "the batch that landed each record",
             **({lake.DATE_COLUMN: "the date of source.event_time, bronze's partition"} if cfg.source.event_time else {}),
             **{name: "ingest's own bookkeeping" for name in INTERNAL}}
    clashing = [f"{name!r} ({added[name]})" for name in cfg.source.schema if name in added]
    if clashing:
        raise ConfigError(f"{cfg.path}: source.schema: ingest adds a column named {', '.join(clashing)}; "
                          "the source's column needs another name")


def land(spark: SparkSession, cfg: PipelineConfig, batch: Batch, started: float) -> IngestReport:
    """Land `batch` in bronze and quarantine exactly once (`started`: the job's start, for
    the report's seconds): see the module's docstring."""
    batch_id, fingerprint = batch.id, batch.fingerprint
    report = IngestReport(batch_id=batch_id, input=batch.input, source_range=batch.source_range,
                          timings=dict(batch.timings))
    ledger, bronze, quarantine = (cfg.table_path(t) for t in ("batches", "bronze", "quarantine"))

    known = lake.ledger_record(spark, ledger, JOB, batch_id)
    if known and batch.fingerprint_as:
        fingerprint = batch.fingerprint_as(known.fingerprint)
    if known and known.committed and known.fingerprint == fingerprint:
        done = IngestReport(**{**known.report, "already_ingested": True})
        done.seconds = round(time.monotonic() - started, 2)
        return done
    lake.refuse_other_content(spark, known, JOB, batch_id, fingerprint, [bronze, quarantine])
    for table in (ledger, bronze, quarantine):
        lake.require_writable(spark, table)

    clock = _Clock(report.timings)
    with lake.staging_area(spark, ledger, f"{JOB}-{batch_id}") as folder, unreadable_files_refused(batch.input):
        with clock("count"):
            lines, report.skipped_lines = batch.count()
        report.rows_read = sum(f.records for f in lines.values())
        with clock("stage"):
            staged = stage(spark, batch.records(lines), folder)
        with clock("lookup"):
            staged = with_keys_looked_up(spark, cfg, batch_id, staged, folder)
        with clock("check"):
            _refuse_in_fail_modes(staged, cfg.ingest, cfg.source.key)
            records = route(staged, cfg.ingest, cfg.source.event_time)
            _reconcile(records, lines, report)

        # Every refusal is behind us: from here on the batch lands whole.
        with clock("commit"):
            lake.claim_batch(spark, ledger, known, JOB, batch_id, fingerprint, [bronze, quarantine])
            meta = {"job": JOB, "batch_id": batch_id, "fingerprint": fingerprint}
            # A table that gets no rows gets no commit: downstream jobs see no new version.
            report.versions = {
                "bronze": _land_accepted(records, bronze, cfg, batch_id, meta, updates=report.updated > 0)
                if report.accepted else None,
                "quarantine": lake.append_once(
                    _quarantined(records, batch_id), quarantine,
                    app_id=f"{JOB}:{batch_id}", partition_by=["batch_id"], metadata=meta,
                ) if report.quarantined else None,
            }
    report.seconds = round(time.monotonic() - started, 2)
    lake.commit_batch(spark, ledger, JOB, batch_id, fingerprint, asdict(report))
    return report


class _Clock:
    """`with clock("step"):` adds the step's wall time, in seconds, to `timings`."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[step] = round(self.timings.get(step, 0.0) + time.monotonic() - started, 2)


_FAILED_READ = re.compile(r"\[FAILED_READ_FILE[.\w]*\] Encountered error while reading file (\S+)\.")


@contextmanager
def unreadable_files_refused(path: str) -> Iterator[None]:
    """A corrupt or truncated input file is refused by name, not shown as a Spark stack trace.

    Spark reads files lazily, so this covers the whole job up to the last table write
    (no commit happens once a read fails). A read that failed because the store did not
    answer is no verdict on the file: it fails the job as the store's error (which names
    the endpoint), and the batch stays free for the re-run.
    """
    try:
        yield
    except Exception as err:
        match = _FAILED_READ.search(str(err))
        if match is None or _store_unreachable(err):  # an outage is the store's, not the file's
            raise
        detail = str(err)[match.end():].strip().splitlines()[0]
        raise IngestError(
            f"input {path}: cannot read {match.group(1)} (corrupt or truncated file: {detail}); "
            "nothing was written"
        ) from None


# Causes that say the store did not answer (a network or client failure), not that the file is bad.
_UNREACHABLE = ("java.net.", "java.io.InterruptedIOException", "software.amazon.awssdk.core.exception.SdkClientException")


def _store_unreachable(err: Exception) -> bool:
    """Whether a JVM error's causes include one of `_UNREACHABLE`."""
    return any(cause.getClass().getName().startswith(_UNREACHABLE) for cause in java_causes(err))


def validate(raw: DataFrame, cfg: PipelineConfig, path: str) -> DataFrame:
    """Typed columns plus `_reasons`: empty for a good record, else why it is quarantined.

    Reasons, first one wins for reporting: too_long (over ingest.max_record_chars),
    malformed, bad_encoding (bytes not valid in the reader's encoding), control_char:<col>,
    bad_type:<col>, missing:<col>, check:<name>. Row by row (no shuffle): a key repeated
    in the batch is found on the staged records (`with_keys_looked_up`). Columns outside
    source.schema pass through.
    """
    source = cfg.source
    extra = [c for c in raw.columns if c not in source.schema and c not in INTERNAL]
    sequence = [SEQUENCE] if SEQUENCE in raw.columns else []
    typed = raw.select(
        *[_typed(F.col(c), t, source.timestamp_format).alias(c) for c, t in source.schema.items()],
        *extra,
        _flags(
            [(F.col(RAW).contains(REPLACEMENT_CHAR), "bad_encoding")]
            + [(F.col(c).rlike(CONTROL_CHARS), f"control_char:{c}")
               for c, t in source.schema.items() if t == "string"]
            + [(F.col(c).isNotNull() & _typed(F.col(c), t, source.timestamp_format).isNull(), f"bad_type:{c}")
               for c, t in source.schema.items()]
        ).alias("_value_errors"),
        CORRUPT, RAW, SOURCE_FILE, *sequence,
    )
    if source.derives_key:  # from the typed values, typed once above
        typed = typed.withColumn(source.key, derived_key(source))
    missing = [
        (F.col(c).isNull() | (F.trim(F.col(c)) == "" if source.schema[c] == "string" else F.lit(False)),
         f"missing:{c}")
        for c in source.not_null
    ]
    checks = [(~F.coalesce(_check(typed, name, sql, cfg.path), F.lit(True)), f"check:{name}")
              for name, sql in source.checks.items()]
    reasons = (
        F.when(F.length(RAW) > cfg.ingest.max_record_chars, F.array(F.lit("too_long")))
        .when(F.col(CORRUPT).isNotNull(), F.array(F.lit("malformed")))
        .otherwise(F.concat(F.col("_value_errors"), _flags(missing + checks)))
    )
    return typed.withColumn(REASONS, reasons).drop("_value_errors")


def stage(spark: SparkSession, records: DataFrame, folder: str) -> DataFrame:
    """Parse, type and check the batch once into `folder` (Parquet), each record with an id;
    the staged records."""
    # No dictionary pages: they cost a quarter of this write (the raw text is near unique)
    # and spare little when the file is read once or twice.
    (records.select(*[c for c in records.columns if c != CORRUPT], F.monotonically_increasing_id().alias(ROW))
     .write.option("parquet.enable.dictionary", "false").parquet(f"{folder}/records"))
    return spark.read.parquet(f"{folder}/records")


def with_keys_looked_up(spark: SparkSession, cfg: PipelineConfig, batch_id: str, staged: DataFrame,
                        folder: str) -> DataFrame:
    """The staged records with what the batch and bronze say of each good record's key.

    * A key that several good records of the batch hold: all but the first are quarantined
      as duplicate_key. "First": by source file, then raw text; with on_existing_key:
      update, the key's latest event (a source's later change on a tie).
    * A key bronze already holds: `_held_by` (the batch that holds it; null for a new key)
      and `_held_at` (that row's event time), for `route`.

    Both come from the keys alone, as one table written to `folder` and joined back (by
    broadcast, as it is usually small): an aggregate of the staged keys finds the repeated
    ones (usually none) and only their records are ranked; bronze is read in its key, event time and batch columns
    (Parquet column pruning) and kept to the batch's keys before it aggregates. A batch of
    unique keys shuffles its keys, not its records. Bronze rows of this batch are left out,
    so that a re-run after a crash between bronze's commit and the ledger's routes every
    record as the first run did. (Joined into the validation plan, the lookup exhausted the
    driver's heap on a wide schema through Spark's constraint inference: it stays a step of
    its own over the staged Parquet.)
    """
    key, bronze = cfg.source.key, cfg.table_path("bronze")
    good = staged.where(F.size(REASONS) == 0)
    repeated = good.groupBy(F.col(key).alias("_repeated")).count().where(F.col("count") > 1)
    order = [F.col(cfg.source.event_time).desc()] if cfg.ingest.on_existing_key == "update" else []
    if order and SEQUENCE in staged.columns:
        order.append(F.col(SEQUENCE).desc())
    first_of_key = Window.partitionBy(key).orderBy(*order, F.col(SOURCE_FILE), F.col(RAW))
    keys = (
        good.join(repeated, F.col(key).eqNullSafe(F.col("_repeated")), "left_semi")  # a null key too
        .select(key, ROW, F.row_number().over(first_of_key).alias("_rank"))
        .where(F.col("_rank") == 1)
        .select(key, F.col(ROW).alias("_first"))
    )
    if lake.is_delta(spark, bronze):
        table, _ = lake.read_version(spark, bronze)
        event_time = cfg.source.event_time  # only update mode reads it, and that needs one
        held = (
            table.where(F.col(BATCH) != batch_id)
            .join(good.select(key), key, "left_semi")
            .groupBy(key)
            .agg(F.min(BATCH).alias(HELD_BY),
                 (F.max(event_time) if event_time else F.lit(None).cast("timestamp")).alias(HELD_AT))
        )
        keys = keys.join(held, key, "full")  # a null key is never held: it keeps its own row
    else:
        keys = keys.select("*", F.lit(None).cast("string").alias(HELD_BY), F.lit(None).cast("timestamp").alias(HELD_AT))
    keys.withColumnRenamed(key, "_looked_up").write.parquet(f"{folder}/keys")
    looked_up = spark.read.parquet(f"{folder}/keys")
    duplicate = (F.size(REASONS) == 0) & (F.col(ROW) != F.col("_first"))  # null (no repeat): false
    return (
        staged.join(looked_up, F.col(key).eqNullSafe(F.col("_looked_up")), "left")
        .withColumn(REASONS, F.when(duplicate, F.array(F.lit("duplicate_key"))).otherwise(F.col(REASONS)))
        .drop("_looked_up", "_first")
    )


def route(staged: DataFrame, ingest: IngestConfig, event_time: str | None) -> DataFrame:
    """The staged records with their final `_reasons`: a record whose key bronze holds is
    quarantined as duplicate_key_existing:<batch>, or with on_existing_key: update, lands
    (replacing the held row) unless it is older than that row (older_than_existing:<batch>)."""
    held = F.col(HELD_BY).isNotNull()
    if ingest.on_existing_key == "update":
        existing = F.when(held & (F.col(event_time) < F.col(HELD_AT)),
                          F.array(F.concat(F.lit("older_than_existing:"), F.col(HELD_BY))))
    else:
        existing = F.when(held, F.array(F.concat(F.lit("duplicate_key_existing:"), F.col(HELD_BY))))
    good = F.size(REASONS) == 0
    return staged.withColumn(
        REASONS, F.when(good, F.coalesce(existing, F.array().cast("array<string>"))).otherwise(F.col(REASONS))
    )


def _refuse_in_fail_modes(staged: DataFrame, ingest: IngestConfig, key: str) -> None:
    """on_bad_record / on_existing_key 'fail': refuse the batch naming its first such record."""
    if ingest.on_bad_record == "fail":
        bad = staged.where(F.size(REASONS) > 0).select(SOURCE_FILE, RAW, REASONS).head()
        if bad is not None:
            raise IngestError(
                f"bad record in {bad[SOURCE_FILE]} ({', '.join(bad[REASONS])}): {bad[RAW][:300]!r}; "
                "on_bad_record is 'fail', so nothing was written"
            )
    if ingest.on_existing_key == "fail":
        held = staged.where((F.size(REASONS) == 0) & F.col(HELD_BY).isNotNull()).select(key, HELD_BY, SOURCE_FILE).head()
        if held is not None:
            raise IngestError(
                f"key {held[key]!r} in {held[SOURCE_FILE]} is already in bronze (batch {held[HELD_BY]}); "
                "on_existing_key is 'fail', so nothing was written"
            )


def _reconcile(records: DataFrame, lines: dict[str, FileLines], report: IngestReport) -> None:
    """Fill the report's outcome counts, refusing the batch unless every file's records
    (accepted + quarantined) equal the records its lines hold."""
    counts = (
        records.groupBy(
            F.col(SOURCE_FILE).alias("file"),
            F.get(F.col(REASONS), 0).alias("reason"),
            ((F.size(REASONS) == 0) & F.col(HELD_BY).isNotNull()).alias("update"),
        )
        .count()
        .collect()  # driver-ok: one row per file and outcome
    )
    per_file: dict[str, int] = {}
    for row in counts:
        per_file[row.file] = per_file.get(row.file, 0) + row["count"]
        if row.reason is None:
            report.accepted += row["count"]
            report.updated += row["count"] if row.update else 0
        else:
            report.reasons[row.reason] = report.reasons.get(row.reason, 0) + row["count"]
    report.quarantined = sum(report.reasons.values())
    expected = {name: f.records for name, f in lines.items()}
    wrong = [f"{name}: {per_file.get(name, 0)} records for {expected.get(name, 0)} lines"
             for name in sorted(per_file.keys() | expected.keys())
             if per_file.get(name, 0) != expected.get(name, 0)]
    if wrong or report.accepted + report.quarantined != report.rows_read:
        raise IngestError(
            f"batch {report.batch_id}: counts do not reconcile: read {report.rows_read} != accepted "
            f"{report.accepted} + quarantined {report.quarantined} ({'; '.join(wrong[:3])}); nothing was written"
        )


def _land_accepted(
    records: DataFrame, bronze: str, cfg: PipelineConfig, batch_id: str, meta: dict, updates: bool
) -> int | None:
    """Append the accepted records to bronze, or MERGE them when some replace held rows."""
    data_columns = [c for c in records.columns if c not in INTERNAL]
    accepted = records.where(F.size(REASONS) == 0).select(
        *data_columns,
        *lake.event_date(cfg.source.event_time),
        F.lit(batch_id).alias(BATCH),
        F.col(SOURCE_FILE),
    )
    partition_by = lake.date_partitions(cfg.source.event_time)
    if updates:
        return lake.merge_by_key(accepted, bronze, cfg.source.key, metadata=meta,
                                 partition_by=partition_by, app_id=f"{JOB}:{batch_id}")
    return lake.append_once(
        accepted, bronze, app_id=f"{JOB}:{batch_id}", partition_by=partition_by, metadata=meta,
        properties={"delta.enableChangeDataFeed": "true"},  # features read only what changed
        merge_schema=cfg.ingest.schema_evolution,
    )


def derived_key(source: SourceConfig) -> Column:
    """The key of a table that declares none, from its typed columns: 128 bits of SHA-256 over
    the record's values in schema order (each value's canonical text, null marked apart from ''; a
    timestamp as epoch microseconds, whatever the session's time zone), as 32 hex digits.
    Typed, so '1.0' and '1' in a double column are the same content."""
    def canonical(column: str, spark_type: str) -> Column:
        typed = F.col(column)
        text = F.unix_micros(typed).cast("string") if spark_type == "timestamp" else typed.cast("string")
        return F.coalesce(F.concat(F.lit("v"), text), F.lit("n"))  # v<value> or n: null ≠ ''

    content = F.concat_ws("\u001f", *[canonical(c, t) for c, t in source.schema.items()])
    return F.substring(F.sha2(content, 256), 1, 32)


def _typed(column: Column, spark_type: str, timestamp_format: str) -> Column:
    if spark_type == "timestamp":
        return F.coalesce(
            F.try_to_timestamp(column.cast("string"), F.lit(timestamp_format)),
            column.try_cast("timestamp"),
        )
    return column.try_cast(spark_type)


def _flags(conditions: list[tuple[Column, str]]) -> Column:
    """An array of the labels whose condition holds (nulls count as false)."""
    none = F.array().cast("array<string>")
    if not conditions:
        return none
    # The array is built only for a row where some condition holds: most rows are good,
    # and an array of one slot per check for each of them was a third of validate's cost.
    held = [F.coalesce(cond, F.lit(False)) for cond, _ in conditions]
    flags = F.array_compact(F.array(*[F.when(cond, F.lit(label)) for cond, label in conditions]))
    return F.when(functools.reduce(operator.or_, held), flags).otherwise(none)


def _check(df: DataFrame, name: str, sql: str, file: str) -> Column:
    """A declared SQL check, resolved now so a typo fails before any data is read."""
    try:
        df.select(F.expr(sql)).schema
    except AnalysisException as err:
        first_line = str(err).splitlines()[0]
        raise ConfigError(f"{file}: source.checks.{name}: {sql!r} is not valid here: {first_line}") from None
    return F.expr(sql)


def _quarantined(records: DataFrame, batch_id: str) -> DataFrame:
    return records.where(F.size(REASONS) > 0).select(
        F.lit(batch_id).alias("batch_id"),
        F.col(SOURCE_FILE).alias("source_file"),
        F.col(RAW).alias("raw_record"),
        F.col(REASONS)[0].alias("reason"),
        F.col(REASONS).alias("reasons"),
        F.current_timestamp().alias("quarantined_at"),
    )
