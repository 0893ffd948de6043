"""Ingest one landing batch (a folder of CSV, JSON or Parquet files) into bronze, exactly
once: this front reads the files, fingerprints them and counts their lines independently
of the parse; `sparkml_ext.landing` lands the validated records.

Every line of the input is accounted for: a record in bronze or in quarantine, or a line
that holds no record (an empty line, a CSV header or comment line), which the report counts.
"""

from __future__ import annotations

import hashlib
import time

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_ext.config import ConfigError, PipelineConfig, SourceConfig
from sparkml_ext.landing import (
    CORRUPT,
    RAW,
    REASONS,
    SOURCE_FILE,
    Batch,
    FileLines,
    IngestError,
    IngestReport,
    land,
    refuse_taken_names,
    unreadable_files_refused,
    validate,
)


def ingest_batch(
    spark: SparkSession, cfg: PipelineConfig, batch_id: str, input_path: str | None = None
) -> IngestReport:
    """Land `batch_id` (by default the folder `<source.path>/<batch_id>`) in bronze."""
    started = time.monotonic()
    path = cfg.batch_path(batch_id, input_path)
    _check_options(cfg)
    refuse_taken_names(cfg)
    with unreadable_files_refused(path):
        lines, skipped, fingerprint = scan_batch(spark, cfg, path)
    batch = Batch(batch_id, path, fingerprint, count=lambda: (lines, skipped),
                  records=lambda lines: _landed_records(spark, cfg, path, lines),
                  timings={"count": round(time.monotonic() - started, 2)},  # and the fingerprint: one read
                  fingerprint_as=lambda recorded: _fingerprint_as(recorded, fingerprint, spark, path))
    return land(spark, cfg, batch, started)


def _check_options(cfg: PipelineConfig) -> None:
    if str(cfg.source.options.get("multiLine", "false")).lower() == "true":
        raise ConfigError(
            f"{cfg.path}: source.options.multiLine: records spanning lines are not supported; ingest "
            "accounts for every input line, so each record must be one line"
        )


def scan_batch(spark: SparkSession, cfg: PipelineConfig, path: str) -> tuple[dict[str, FileLines], dict[str, int], str]:
    """Each file's lines (`count_lines`), the lines that hold no record by kind, and the
    batch's fingerprint; a missing batch, or one of no records, is refused.

    A CSV or JSON batch read as UTF-8 is read once, for both (`_lines_fingerprint` says
    why its fingerprint is safe); a Parquet batch or another encoding is also hashed byte
    by byte, in a second read.
    """
    source = cfg.source
    if not _path_exists(spark, path):
        raise IngestError(f"input path {path} does not exist; nothing was written")
    lines, fingerprint = count_lines(spark, source, path)
    if not any(f.records for f in lines.values()):
        raise IngestError(f"input {path} holds no records; nothing was written")
    if fingerprint is None or not _reads_utf8(source):
        fingerprint = _bytes_fingerprint(spark, path)
    skipped = {"header": sum(f.header for f in lines.values()), "comment": sum(f.comment for f in lines.values())}
    return lines, skipped, fingerprint


LINES_SCHEME = "lines:"  # a fingerprint over a batch's lines; one without a scheme hashes its bytes


def _reads_utf8(source: SourceConfig) -> bool:
    encoding = source.options.get("encoding", source.options.get("charset", "UTF-8"))
    return encoding.replace("-", "").replace("_", "").upper() == "UTF8"


def _fingerprint_as(recorded: str, fingerprint: str, spark: SparkSession, path: str) -> str:
    """The batch's fingerprint in the scheme the ledger `recorded` it in: a batch recorded by
    its bytes (every batch before the one-pass scan) is compared that way, so a re-run
    after an upgrade is not taken for other content."""
    if fingerprint.startswith(LINES_SCHEME) and not recorded.startswith(LINES_SCHEME):
        return _bytes_fingerprint(spark, path)
    return fingerprint


def _bytes_fingerprint(spark: SparkSession, path: str) -> str:
    """SHA-256 over each file's name and content hash, computed on the executors (Spark's
    binary reader holds a file in one array: files up to 2 GiB)."""
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(path)
        .select("path", "length", F.sha2("content", 256).alias("sha"))
        .collect()  # driver-ok: one small row per file
    )
    entries = sorted(f"{_relative(path, f.path)}:{f.length}:{f.sha}" for f in files)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _relative(path: str, file: str) -> str:
    """A file's name below the batch folder: a fingerprint does not depend on where the batch lies."""
    return file.split(path.rstrip("/").split("://")[-1], 1)[-1]


def _path_exists(spark: SparkSession, path: str) -> bool:
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs.exists(hadoop_path)


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


def _landed_records(spark: SparkSession, cfg: PipelineConfig, path: str, lines: dict[str, FileLines]) -> DataFrame:
    """A landing batch's records, validated, with the blank lines its reader drops."""
    records = validate(read_batch(spark, cfg.source, path, cfg.ingest.schema_evolution), cfg, path)
    if any(f.blank for f in lines.values()):
        records = records.unionByName(_blank_records(spark, cfg.source, path), allowMissingColumns=True)
    return records


def count_lines(spark: SparkSession, source: SourceConfig, path: str) -> tuple[dict[str, FileLines], str | None]:
    """Each input file's lines, read as plain text, independently of the format's parser,
    and for a text format the batch's `_lines_fingerprint` from the same read (None for Parquet).

    The rules follow the readers': CSV drops lines of characters up to U+0020 only (Spark
    trims them away) and lines starting with the `comment` option, and takes the first
    remaining line of each file as the header when `header` is true; JSON drops lines of
    spaces and tabs. Empty lines hold nothing and are not counted.
    """
    if source.format == "parquet":
        rows = (spark.read.option("recursiveFileLookup", "true").parquet(path)
                .groupBy(F.col("_metadata.file_path").alias("file")).count()
                .collect())  # driver-ok: one row per file
        return {r.file: FileLines(content=r["count"]) for r in rows}, None
    blank = _blank_line(source)
    prefix = source.options.get("comment") if source.format == "csv" else None
    comment = F.col("value").startswith(prefix) if prefix else F.lit(False)
    content = ~blank & ~comment
    rows = (
        _text_lines(spark, source, path)
        .select("value", F.col("_metadata.file_path").alias("file"), F.col("_metadata.file_size").alias("size"),
                F.struct(F.col("_metadata.file_block_start"), F.monotonically_increasing_id()).alias("at"))
        .groupBy("file")
        .agg(F.count_if(blank).alias("blank"), F.count_if(~blank & comment).alias("comment"),
             F.count_if(content).alias("content"), *_line_hashes(content))
        .collect()  # driver-ok: one row per file
    )
    header = source.format == "csv" and str(source.options.get("header", "false")).lower() == "true"
    files = {}
    for r in rows:
        has_header = int(header and r.content > 0)
        files[r.file] = FileLines(content=r.content - has_header, blank=r.blank, header=has_header,
                                  comment=r.comment)
    return files, _lines_fingerprint(path, rows)


def _line_hashes(content: Column) -> list[Column]:
    """Per file: its size, the sums of two 64-bit hashes of its lines (xxhash64 of the line
    and of the line with a salt; exact in 38-digit decimals) and the hashes of its first
    content line (the header of a CSV that has one)."""
    hashes = [F.xxhash64("value"), F.xxhash64("value", F.lit("sparkml-ext"))]
    sums = [F.sum(h.cast("decimal(38,0)")).cast("string") for h in hashes]
    return [F.max("size").alias("size"), F.concat_ws(":", *sums).alias("sums"),
            F.min_by(F.concat_ws(":", *hashes), F.when(content, F.col("at"))).alias("first")]


def _lines_fingerprint(path: str, files: list) -> str:
    """LINES_SCHEME + SHA-256 over each file's name, size, line counts, the sums of its lines'
    hashes and its first content line's hashes.

    Safe as a batch's identity because it fixes everything the ingest of a line-per-record
    batch depends on: which records a file holds is the multiset of its lines (a record
    is one line; the reader is UTF-8, as the text read that hashes them), plus which line
    is the header; the order of the other lines changes nothing ingest writes (within-batch
    duplicates are ranked by file and raw text, not by position). Two batches with equal
    fingerprints land the same rows. It also needs no file in one array (Spark's binary
    reader stops at 2 GiB) and no second read. A sum of 2 x 64-bit line hashes guards
    against accidents (a batch id landed again with other content), not an adversary who
    crafts colliding lines.
    """
    entries = sorted(f"{_relative(path, r.file)}:{r['size']}:{r.blank}:{r.comment}:{r.content}:{r.sums}:{r.first}"
                     for r in files)
    return LINES_SCHEME + hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _text_lines(spark: SparkSession, source: SourceConfig, path: str) -> DataFrame:
    """The batch's non-empty lines as Spark's line reader splits them (the readers' own)."""
    reader = spark.read.option("recursiveFileLookup", "true")
    if "lineSep" in source.options:
        reader = reader.option("lineSep", source.options["lineSep"])
    return reader.text(path).where(F.col("value") != "")


def _blank_line(source: SourceConfig) -> Column:
    if source.format == "csv":
        return ~F.col("value").rlike("[^\\x00-\\x20]")
    return F.col("value").rlike("^[ \\t]+$")


def _blank_records(spark: SparkSession, source: SourceConfig, path: str) -> DataFrame:
    """The whitespace-only lines the format's reader drops, as records quarantined as blank."""
    return (
        _text_lines(spark, source, path)
        .where(_blank_line(source))
        .select(
            *[F.lit(None).cast(t).alias(c) for c, t in source.schema.items()],
            F.lit(None).cast("string").alias(CORRUPT),
            F.col("value").alias(RAW),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
            F.array(F.lit("blank")).alias(REASONS),
        )
    )
