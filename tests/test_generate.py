"""The click generator on real local Spark + Delta: determinism, layout, planted truth, defects."""

from __future__ import annotations

import os

import pytest
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_ext.config import GenerateConfig
from sparkml_ext.generate import DEFECTS, NUMERICS, VOCAB_SIZES, generate_clicks

pytestmark = pytest.mark.spark
FIELDS = 4 + len(NUMERICS) + len(VOCAB_SIZES)


def _generate(spark, root, name: str, **spec):
    landing, truth = str(root / name / "landing"), str(root / name / "truth")
    report = generate_clicks(spark, GenerateConfig(**spec), landing, truth)
    return report, landing, truth


def _fingerprint(df: DataFrame) -> tuple:
    """Order-independent digest of every column of every row."""
    row_hash = F.xxhash64(*df.columns)
    return tuple(df.agg(F.count("*"), F.bit_xor(row_hash), F.sum(F.pmod(row_hash, F.lit(1 << 31))))
                 .first())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("generate")


@pytest.fixture(scope="module")
def csv_run(spark, root):
    return _generate(spark, root, "csv", rows=3000, batches=3, malformed_rate=0.02, partitions=3)


@pytest.fixture(scope="module")
def parquet_run(spark, root):
    """Generated twice into the same place, with different partitioning, over a stale folder."""
    spec = dict(rows=2000, batches=2, format="parquet", malformed_rate=0.02, seed=11)
    first, landing, truth = _generate(spark, root, "parquet", partitions=1, **spec)
    before = (_fingerprint(spark.read.parquet(f"{landing}/batch-*")),
              _fingerprint(spark.read.format("delta").load(truth)))
    os.makedirs(f"{landing}/batch-00007")
    open(f"{landing}/batch-00007/part-00000.parquet", "w").close()
    report, _, _ = _generate(spark, root, "parquet", partitions=4, **spec)
    return {"first": first, "before": before, "report": report, "landing": landing,
            "truth": truth}


@pytest.fixture(scope="module")
def json_run(spark, root):
    return _generate(spark, root, "json", rows=1500, format="json", malformed_rate=0.05)


@pytest.fixture(scope="module")
def clean_json_run(spark, root):
    return _generate(spark, root, "clean-json", rows=1000, batches=2, format="json")


def test_same_seed_gives_identical_data_whatever_the_partitioning(spark, parquet_run):
    landing, truth = parquet_run["landing"], parquet_run["truth"]
    assert parquet_run["first"]["batch_rows"] == parquet_run["report"]["batch_rows"]
    assert parquet_run["before"] == (_fingerprint(spark.read.parquet(f"{landing}/batch-*")),
                                     _fingerprint(spark.read.format("delta").load(truth)))


def test_regenerating_replaces_files_and_truth(spark, parquet_run):
    landing = parquet_run["landing"]
    assert sorted(os.listdir(landing)) == ["batch-00000", "batch-00001"]
    assert os.listdir(f"{landing}/batch-00000") == ["part-00000.parquet"]
    assert spark.read.format("delta").load(parquet_run["truth"]).count() == 2000


def test_batches_are_contiguous_time_slices_that_sum_to_rows(spark, parquet_run):
    report = parquet_run["report"]
    assert sum(report["batch_rows"]) == 2000
    slices = [spark.read.parquet(d).agg(F.count("*"), F.min("event_time"), F.max("event_time"))
              .first() for d in report["batch_dirs"]]
    assert [s[0] for s in slices] == report["batch_rows"]
    assert slices[0][2] < slices[1][1]


def test_csv_is_tab_separated_lines_one_per_event(spark, csv_run):
    report, landing, _ = csv_run
    assert sum(report["batch_rows"]) == 3000
    for expected, folder in zip(report["batch_rows"], report["batch_dirs"]):
        assert spark.read.text(folder).count() == expected
        assert os.listdir(folder.removeprefix("file:")) == ["part-00000.tsv"]
    lines = spark.read.text(f"{landing}/batch-*")
    well_formed = lines.where(F.size(F.split("value", "\t")) == FIELDS)
    first = well_formed.first()["value"].split("\t")
    assert len(first[0]) == 16 and len(first[2]) == len("2026-01-01 00:00:00")
    assert first[3] in {"0", "1"} and all(len(c) in (0, 8) for c in first[-26:])


def test_malformed_lines_at_the_requested_rate_of_every_kind(spark, csv_run):
    report, landing, truth = csv_run
    assert 0.01 * 3000 < report["malformed"] < 0.03 * 3000
    kinds = dict(spark.read.format("delta").load(truth).groupBy("defect").count().collect())
    assert set(kinds) == {None, *DEFECTS["csv"]}
    fields = F.split("value", "\t")
    lines = spark.read.text(f"{landing}/batch-*")
    short = lines.where(F.size(fields) != FIELDS).count()
    assert short == kinds["too_few_fields"] + kinds["garbage"]
    assert lines.where(F.get(fields, 6) == "n/a!").count() == kinds["non_numeric"]
    assert lines.where(F.get(fields, 0) == "").count() == kinds["empty_event_id"]
    bad_labels = lines.where((F.size(fields) == FIELDS) & (F.get(fields, 3) == "7"))
    assert bad_labels.count() == kinds["bad_label"]


def test_parquet_defects_are_null_ids_and_out_of_range_labels(spark, parquet_run):
    report, landing = parquet_run["report"], parquet_run["landing"]
    events = spark.read.parquet(f"{landing}/batch-*")
    bad = events.where(F.col("event_id").isNull() | ~F.col("label").isin(0, 1)).count()
    assert bad == report["malformed"] > 0


def test_json_defects_are_visible_in_the_lines(spark, json_run):
    report, landing, truth = json_run
    assert 0.02 * 1500 < report["malformed"] < 0.08 * 1500
    kinds = dict(spark.read.format("delta").load(truth).groupBy("defect").count().collect())
    assert set(kinds) == {None, *DEFECTS["json"]}
    lines = spark.read.text(f"{landing}/batch-*")
    assert lines.count() == 1500
    assert lines.where(~F.col("value").endswith("}")).count() == kinds["broken_json"]
    assert lines.where(F.col("value").contains('"i3":"n/a!"')).count() == kinds["non_numeric"]
    assert lines.where(~F.col("value").contains('"event_id":')).count() == kinds["missing_event_id"]
    assert lines.where(F.col("value").contains('"label":7,')).count() == kinds["bad_label"]


def test_json_without_defects_parses_completely(spark, clean_json_run):
    report, landing, truth = clean_json_run
    assert report["malformed"] == 0
    assert spark.read.text(f"{landing}/batch-*").count() == 1000
    events = spark.read.option("mode", "FAILFAST").json(f"{landing}/batch-*")
    assert events.where(F.col("event_id").isNull() | ~F.col("label").isin(0, 1)).count() == 0
    assert events.select("event_id").distinct().count() == 1000
    assert spark.read.format("delta").load(truth).where("defect IS NOT NULL").count() == 0


def test_nulls_appear_at_about_the_null_rate(spark, parquet_run):
    landing = parquet_run["landing"]
    events = spark.read.parquet(f"{landing}/batch-*")
    columns = [*NUMERICS, *VOCAB_SIZES]
    null_share = events.select(
        *[F.avg(F.col(c).isNull().cast("double")).alias(c) for c in columns]).first()
    assert 0.04 < sum(null_share) / len(columns) < 0.06
    assert all(0.02 < share < 0.09 for share in null_share)


def test_large_vocabularies_are_zipf_skewed(spark, parquet_run):
    landing = parquet_run["landing"]
    counts = spark.read.parquet(f"{landing}/batch-*").where("c3 IS NOT NULL").groupBy("c3").count()
    top, median = counts.agg(F.max("count"), F.median("count")).first()
    assert top > 50 * median
    assert counts.count() > 500


def test_truth_holds_every_event_and_a_calibrated_probability(spark, csv_run):
    report, _, truth = csv_run
    table = spark.read.format("delta").load(truth)
    assert table.count() == table.select("event_id").distinct().count() == 3000
    good = table.where("planted_probability IS NOT NULL")
    assert good.count() == 3000 - report["malformed"]
    assert good.where("label IS NULL OR defect IS NOT NULL").count() == 0
    mean_p, mean_label = good.agg(F.avg("planted_probability"), F.avg("label")).first()
    assert mean_p == pytest.approx(report["mean_p_click"])
    assert 0.15 < mean_p < 0.35 and abs(mean_p - mean_label) < 0.03
    auc = BinaryClassificationEvaluator(rawPredictionCol="planted_probability", labelCol="label").evaluate(
        good.withColumn("label", F.col("label").cast("double")))
    assert 0.65 < auc < 0.92


@pytest.mark.parametrize(
    ("field", "value"),
    [("rows", 0), ("batches", 0), ("format", "xml"), ("start_date", "tomorrow"), ("days", 0),
     ("users", 0), ("null_rate", 1.0), ("malformed_rate", -0.1), ("partitions", 0)],
)
def test_invalid_spec_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be "):
        GenerateConfig(**{"rows": 100, field: value})
