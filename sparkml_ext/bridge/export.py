"""DataFrame -> Arrow IPC shards + manifest, written by the executors.

Each task streams its partition's Arrow batches straight to shared storage
(``mapInArrow``), so data never passes through the driver: the driver collects one
small row per file and writes the manifest last and atomically, so that a manifest's
presence means its shard set is complete. Shards are IPC *file* format, uncompressed,
because the torch side memory-maps them.

Spark retries failed tasks, so every file name carries the export's run id, the
partition id and the task's attempt number; the manifest lists only what successful
attempts reported, and the driver deletes what failed attempts of the same run left.
Files of earlier exports to the same root are left alone: a trainer may still read them.

A training export selects the rows whose label is known (`holdout.labelled_sql`); train-mllib
selects its rows with the same SQL, so both models learn from, and are judged on, the
same rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pyspark import TaskContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkml_ext import lake
from sparkml_ext.config import fingerprint
from sparkml_ext.deep.manifest import MANIFEST_NAME, Manifest, ShardFile
from sparkml_ext.holdout import class_index
from sparkml_ext.storage import filesystem, join, write_whole

_REPORT = pa.schema(
    [("path", pa.string()), ("rows", pa.int64()), ("bytes", pa.int64()), ("schema", pa.string())]
)
_REPORT_DDL = "path string, rows long, bytes long, schema string"
_SCALAR_NUMBERS = (T.NumericType, T.BooleanType)


def export_shards(
    df: DataFrame,
    root: str,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    label: str | None,
    source: dict | None = None,
    max_rows_per_shard: int = 1_000_000,
) -> Manifest:
    """Write `df`'s training columns as Arrow IPC shards under `root`; return the manifest.

    numeric -> float32 (an array of numbers -> fixed-size list of float32, one width for
    all rows), categorical -> int64 ids (must already be integers), label -> float32.
    `root` is a local path or a URI pyarrow.fs understands (file://, s3://, hdfs://;
    dbfs:/ goes through the /dbfs mount); executors must all see it. Types are checked
    before any Spark job runs; nulls and ragged arrays fail the job with the column name.
    """
    if max_rows_per_shard < 1:
        raise ValueError(f"max_rows_per_shard must be >= 1, got {max_rows_per_shard}")
    columns, fixed = _shard_columns(df.schema, numeric, categorical, label)
    root, fs, base = _resolve(root)
    fs.create_dir(base, recursive=True)
    run_id = uuid.uuid4().hex[:12]
    write = partial(
        _write_partition, root=root, run_id=run_id, max_rows=max_rows_per_shard, fixed=fixed
    )
    kept: set[str] = set()
    try:
        reported = df.select(*columns).mapInArrow(write, _REPORT_DDL).collect()  # driver-ok: one small row per shard file
        schemas = {r.schema for r in reported}
        if len(schemas) > 1:
            raise ValueError(f"partitions wrote different shard schemas: {sorted(schemas)}")
        kept = {r.path for r in reported}
    finally:
        _remove_run_files(fs, base, run_id, keep=kept)
    if not reported:
        raise ValueError("nothing to export: the DataFrame has no rows")
    manifest = Manifest(
        root=root,
        files=tuple(ShardFile(r.path, r.rows, r.bytes) for r in sorted(reported)),  # by path
        schema=json.loads(schemas.pop()),
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        label=label,
        source=dict(source or {}),
    )
    write_whole(join(root, MANIFEST_NAME), manifest.to_json().encode())
    return manifest


def export_table(
    spark: SparkSession,
    table_path: str,
    *,
    version: int | None,
    numeric: Sequence[str],
    categorical: Sequence[str],
    label: str | None,
    filter: str | None = None,  # noqa: A002 - reads like the SQL it stands for
    label_classes: Sequence | None = None,
    cache_root: str,
) -> Manifest:
    """Export a pinned version of a Delta table, or reuse an earlier export of it.

    With `label_classes` (a classifier's sorted classes: names, numbers) the label is
    exported as its class's index among them (`holdout.class_index`). The cache key is
    (table, version, columns, filter, classes); a `version` of None is resolved
    to the table's current version first so the key is always pinned (Delta reads its
    history with one small Spark job). When the key's folder under `cache_root` holds a
    valid manifest, it is returned without reading the table: no further Spark job.
    """
    if version is None:
        version = lake.current_version(spark, table_path)
        if version is None:
            raise FileNotFoundError(f"no Delta table at {table_path}")
    source = {
        "table": table_path,
        "version": version,
        "numeric": list(numeric),
        "categorical": list(categorical),
        "label": label,
        "filter": filter,
        **({"label_classes": list(label_classes)} if label_classes else {}),
    }
    key = fingerprint(source, 20)
    root = f"{cache_root.rstrip('/')}/{key}"
    cached = _read_valid_manifest(root, source)
    if cached is not None:
        return cached
    df, _ = lake.read_version(spark, table_path, version)
    if label_classes and label in df.columns:  # (a missing label is refused by name below)
        df = df.withColumn(label, class_index(label, list(label_classes)))
    if filter:  # it may name the label: a missing column is refused by name, not by Spark
        _shard_columns(df.schema, numeric, categorical, label)
        df = df.where(filter)
    return export_shards(
        df, root, numeric=numeric, categorical=categorical, label=label, source=source
    )


def _shard_columns(
    schema: T.StructType, numeric: Sequence[str], categorical: Sequence[str], label: str | None
) -> tuple[list[Column], tuple[str, ...]]:
    """Cast expressions for the shard columns and the names that become fixed-size lists."""
    roles = [(n, "numeric") for n in numeric] + [(n, "categorical") for n in categorical]
    roles += [(label, "label")] if label is not None else []
    names = [n for n, _ in roles]
    if not names:
        raise ValueError("no columns to export: give numeric, categorical or label columns")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"columns named in more than one role: {repeated}")
    types = {f.name: f.dataType for f in schema.fields}
    missing = [n for n in names if n not in types]
    if missing:
        raise ValueError(f"columns not in the DataFrame: {missing}; it has {sorted(types)}")

    columns, fixed = [], []
    for name, role in roles:
        dtype, col = types[name], F.col(f"`{name.replace('`', '``')}`")
        if role == "categorical" and isinstance(dtype, T.IntegralType):
            columns.append(col.cast("bigint").alias(name))
        elif role != "categorical" and isinstance(dtype, _SCALAR_NUMBERS):
            columns.append(col.cast("float").alias(name))
        elif (
            role == "numeric"
            and isinstance(dtype, T.ArrayType)
            and isinstance(dtype.elementType, _SCALAR_NUMBERS)
        ):
            columns.append(col.cast("array<float>").alias(name))
            fixed.append(name)
        else:
            wanted = {
                "numeric": "a number or an array of numbers",
                "categorical": "integer ids (index strings first, e.g. with StringIndexer)",
                "label": "a number",
            }[role]
            raise ValueError(
                f"{role} column {name!r} has type {dtype.simpleString()}; expected {wanted}"
            )
    return columns, tuple(fixed)


def _write_partition(
    batches: Iterator[pa.RecordBatch],
    *,
    root: str,
    run_id: str,
    max_rows: int,
    fixed: tuple[str, ...],
) -> Iterator[pa.RecordBatch]:
    """Executor side: write one partition to files of at most `max_rows` rows each."""
    task = TaskContext.get()
    stem = f"part-{task.partitionId():05d}-{run_id}-{task.attemptNumber()}"
    fs, base = filesystem(root)
    widths: dict[str, int] = {}
    shard, count = None, 0
    for batch in batches:
        batch = _checked(batch, fixed, widths)
        offset = 0
        while offset < batch.num_rows:
            if shard is None:
                shard = _Shard(fs, base, f"{stem}-{count:04d}.arrow", batch.schema)
                count += 1
            piece = batch.slice(offset, max_rows - shard.rows)
            shard.write(piece)
            offset += piece.num_rows
            if shard.rows == max_rows:
                yield shard.close()
                shard = None
    if shard is not None:
        yield shard.close()


def _checked(
    batch: pa.RecordBatch, fixed: tuple[str, ...], widths: dict[str, int]
) -> pa.RecordBatch:
    """Refuse nulls (the torch side reads raw buffers) and make array columns fixed-size."""
    arrays = []
    for name, array in zip(batch.schema.names, batch.columns):
        values = array.flatten() if name in fixed else array
        if array.null_count or values.null_count:
            raise ValueError(f"column {name!r} has nulls; fill or filter them before exporting")
        if name in fixed and len(array):
            lengths = pc.unique(pc.list_value_length(array)).to_pylist()
            seen = sorted(set(lengths) | {widths.setdefault(name, lengths[0])})
            if len(seen) > 1:
                raise ValueError(
                    f"array column {name!r} has rows of lengths {seen}; all need one length"
                )
            array = pa.FixedSizeListArray.from_arrays(values, seen[0])
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


class _Shard:
    """One Arrow IPC file being written; `close` returns its report row."""

    def __init__(self, fs: pafs.FileSystem, base: str, name: str, schema: pa.Schema):
        self.name, self.schema, self.rows = name, schema, 0
        self.sink = fs.open_output_stream(f"{base}/{name}")
        self.writer = pa.ipc.new_file(self.sink, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> pa.RecordBatch:
        self.writer.close()
        size = self.sink.tell()
        self.sink.close()
        types = json.dumps({f.name: str(f.type) for f in self.schema})
        return pa.RecordBatch.from_pylist(
            [{"path": self.name, "rows": self.rows, "bytes": size, "schema": types}],
            schema=_REPORT,
        )


def _resolve(root: str) -> tuple[str, pafs.FileSystem, str]:
    """(root as recorded in the manifest, file system, path inside that file system).

    Local roots are recorded as plain absolute paths; dbfs:/ maps to Databricks' /dbfs
    mount, which pyarrow (having no dbfs scheme) reads as a local path.
    """
    if root.startswith("dbfs:/"):
        root = "/dbfs/" + root[len("dbfs:/") :].lstrip("/")
    fs, base = filesystem(root)
    base = base.rstrip("/")
    return (base if isinstance(fs, pafs.LocalFileSystem) else root.rstrip("/")), fs, base


def _remove_run_files(fs: pafs.FileSystem, base: str, run_id: str, keep: set[str]) -> None:
    """Delete this run's files that no successful task attempt reported."""
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if f"-{run_id}-" in info.base_name and info.base_name not in keep:
            fs.delete_file(info.path)


def _read_valid_manifest(root: str, source: dict) -> Manifest | None:
    """The manifest under `root` if it was built from `source` and all its files are there."""
    _, fs, base = _resolve(root)
    try:
        with fs.open_input_stream(f"{base}/{MANIFEST_NAME}") as f:
            manifest = Manifest.from_json(f.read().decode())
    except (FileNotFoundError, ValueError, TypeError, KeyError):  # missing or unreadable
        return None
    infos = fs.get_file_info([f"{base}/{f.path}" for f in manifest.files])
    complete = all(i.size == f.bytes for i, f in zip(infos, manifest.files))
    return manifest if complete and manifest.source == source else None
