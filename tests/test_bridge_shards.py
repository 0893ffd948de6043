"""Arrow shards written by real Spark tasks, read back the way the torch side reads them."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.errors import PythonException

from sparkml_ext.bridge import export_shards, export_table
from sparkml_ext.deep.manifest import MANIFEST_NAME, Manifest

COLUMNS = dict(numeric=["x", "n", "v"], categorical=["c", "id"], label="y")


@contextmanager
def spark_jobs(spark):
    """Collect the ids of the Spark jobs run inside the block."""
    sc, group, ids = spark.sparkContext, f"bridge-test-{uuid.uuid4()}", []
    sc.setJobGroup(group, "counting jobs")
    try:
        yield ids
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        ids.extend(sc.statusTracker().getJobIdsForGroup(group))


def frame(spark, rows: int = 1000):
    """Two partitions of data plus an empty third one."""
    data = spark.range(0, rows, numPartitions=2).selectExpr(
        "id",
        "id * 0.5 AS x",
        "CAST(id % 13 AS INT) AS n",
        "array(id, -id, 0.25D) AS v",
        "CAST(id % 5 AS SMALLINT) AS c",
        "id % 3 = 0 AS y",
    )
    return data.union(data.limit(0).repartition(1))


def read_shards(manifest: Manifest) -> pa.Table:
    """Memory-map every shard, as the torch side does (this fails on IPC stream format)."""
    tables = []
    for f in manifest.files:
        with pa.memory_map(os.path.join(manifest.root, f.path)) as source:
            tables.append(pa.ipc.open_file(source).read_all())
    return pa.concat_tables(tables)


@pytest.fixture(scope="module")
def exported(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    df = frame(spark)
    manifest = export_shards(df, str(root), **COLUMNS, source={"run": 7}, max_rows_per_shard=400)
    return df, root, manifest


def test_manifest_lists_every_row_in_files_that_exist(spark, exported):
    df, root, manifest = exported
    assert manifest.rows == df.count() == 1000
    assert manifest.root == str(root)
    assert manifest.source == {"run": 7}
    assert (manifest.numeric, manifest.categorical, manifest.label) == (
        ("x", "n", "v"),
        ("c", "id"),
        "y",
    )
    # Two partitions of 500 rows at 400 rows per file; the empty partition writes nothing.
    assert [f.rows for f in manifest.files] == [400, 100, 400, 100]
    assert {f.path.split("-")[1] for f in manifest.files} == {"00000", "00001"}
    on_disk = {p.name for p in root.iterdir()}
    assert on_disk == {f.path for f in manifest.files} | {MANIFEST_NAME}
    assert all((root / f.path).stat().st_size == f.bytes for f in manifest.files)
    assert Manifest.from_json((root / MANIFEST_NAME).read_text()) == manifest


def test_shards_hold_exactly_the_frames_rows_with_training_types(spark, exported):
    df, _, manifest = exported
    table = read_shards(manifest)
    assert manifest.schema == {
        "x": "float",
        "n": "float",
        "v": "fixed_size_list<item: float>[3]",
        "c": "int64",
        "id": "int64",
        "y": "float",
    }
    assert {f.name: str(f.type) for f in table.schema} == manifest.schema
    expected = df.selectExpr(
        "CAST(x AS FLOAT) AS x",
        "CAST(n AS FLOAT) AS n",
        "CAST(v AS ARRAY<FLOAT>) AS v",
        "CAST(c AS BIGINT) AS c",
        "id",
        "CAST(y AS FLOAT) AS y",
    )
    assert_df_equality(
        spark.createDataFrame(table), expected, ignore_row_order=True, ignore_nullable=True
    )


@pytest.mark.parametrize(
    "kind, columns, message",
    [
        ("string categorical", dict(categorical=["s"]), r"categorical column 's'.*string"),
        ("double categorical", dict(categorical=["x"]), r"categorical column 'x'.*double"),
        ("string numeric", dict(numeric=["s"]), r"numeric column 's'.*string"),
        ("map numeric", dict(numeric=["m"]), r"numeric column 'm'.*map<string,int>"),
        ("array label", dict(numeric=["x"], label="v"), r"label column 'v'.*array<double>"),
        ("missing column", dict(numeric=["nope"]), r"not in the DataFrame: \['nope'\]"),
        ("two roles", dict(numeric=["x"], categorical=["x"]), r"more than one role: \['x'\]"),
    ],
)
def test_unusable_columns_fail_before_any_spark_job(spark, tmp_path, kind, columns, message):
    df = spark.range(3).selectExpr(
        "id * 1.5D AS x", "CAST(id AS STRING) AS s", "map('k', 1) AS m", "array(1.0D) AS v"
    )
    arguments = dict(numeric=[], categorical=[], label=None) | columns
    with spark_jobs(spark) as jobs, pytest.raises(ValueError, match=message):
        export_shards(df, str(tmp_path / "out"), **arguments)
    assert jobs == []


def test_empty_frame_is_an_error_and_writes_no_manifest(spark, tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        export_shards(frame(spark).limit(0), str(tmp_path), **COLUMNS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "tail, partitions, error, message",
    [
        ("array(1.0D)", 1, PythonException, r"'v' has rows of lengths \[1, 3\]"),
        ("NULL", 1, PythonException, "'v' has nulls"),
        ("array(1.0D)", 2, ValueError, r"different shard schemas.*\[1\].*\[3\]"),
    ],
)
def test_bad_rows_fail_the_export_and_leave_no_files(
    spark, tmp_path, tail, partitions, error, message
):
    # Rows 5..9 differ from rows 0..4; with 2 partitions each partition is uniform.
    df = spark.range(0, 10, numPartitions=partitions).selectExpr(
        f"IF(id < 5, array(1.0D, 2.0D, 3.0D), {tail}) AS v"
    )
    with pytest.raises(error, match=message):
        export_shards(df, str(tmp_path), numeric=["v"], categorical=[], label=None)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def table(spark, tmp_path_factory):
    """A Delta table at version 1 (350 rows) whose version 0 had 300 rows."""
    path = str(tmp_path_factory.mktemp("lake") / "features")
    frame(spark, rows=300).write.format("delta").save(path)
    frame(spark, rows=50).write.format("delta").mode("append").save(path)
    return path


def test_export_table_reuses_a_cached_export_without_any_spark_job(spark, tmp_path, table):
    cache = str(tmp_path)
    with spark_jobs(spark) as cold_jobs:
        first = export_table(spark, table, version=0, **COLUMNS, cache_root=cache)
    with spark_jobs(spark) as warm_jobs:
        again = export_table(spark, table, version=0, **COLUMNS, cache_root=cache)
    assert cold_jobs and warm_jobs == []
    assert again == first and first.rows == 300
    assert (first.source["table"], first.source["version"]) == (table, 0)
    # version=None pins the current version, so the same call later finds this export.
    current = export_table(spark, table, version=None, **COLUMNS, cache_root=cache)
    assert (current.source["version"], current.rows) == (1, 350)
    with spark_jobs(spark) as warm_jobs:
        assert export_table(spark, table, version=1, **COLUMNS, cache_root=cache) == current
    assert warm_jobs == []


def test_export_table_keys_on_version_columns_and_filter(spark, tmp_path, table):
    def export(**changes):
        arguments = dict(COLUMNS, version=0, cache_root=str(tmp_path)) | changes
        return export_table(spark, table, **arguments)

    first, newer = export(), export(version=1)
    fewer = export(numeric=["x"], categorical=[], label="y")
    filtered = export(filter="id < 100")
    assert (first.rows, newer.rows, filtered.rows) == (300, 350, 100)
    assert fewer.schema == {"x": "float", "y": "float"}
    roots = {m.root for m in (first, newer, fewer, filtered)}
    assert len(roots) == 4 and {Path(r).parent for r in roots} == {tmp_path}


def test_export_table_exports_again_when_a_cached_shard_is_gone(spark, tmp_path, table):
    first = export_table(spark, table, version=0, **COLUMNS, cache_root=str(tmp_path))
    os.remove(os.path.join(first.root, first.files[0].path))
    again = export_table(spark, table, version=0, **COLUMNS, cache_root=str(tmp_path))
    assert again.root == first.root and again.rows == first.rows
    assert again.files != first.files
    assert all(os.path.exists(os.path.join(again.root, f.path)) for f in again.files)
