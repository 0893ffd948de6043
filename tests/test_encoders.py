"""The custom ML stages: exact values on tiny frames, Pipeline save/load, composition, bad input."""

from __future__ import annotations

from contextlib import contextmanager
from uuid import uuid4

import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from sparkml_ext.encoders import (
    CategoricalCrosser,
    FrequencyEncoder,
    RobustScaler,
    TargetEncoder,
)

pytestmark = pytest.mark.spark


@contextmanager
def no_spark_jobs(spark):
    """Assert that the block starts no Spark job (validation must happen on the driver)."""
    sc = spark.sparkContext
    group = f"no-jobs-{uuid4().hex}"
    sc.setJobGroup(group, "validation only")
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert sc.statusTracker().getJobIdsForGroup(group) == []


@pytest.fixture(scope="module")
def mixed(spark):
    """A small training frame with categoricals, a numeric with a null and a label."""
    rows = [
        ("a", "web", 1.0, 1), ("a", "web", 2.0, 1), ("a", "ios", 3.0, 0), ("b", "web", 4.0, 0),
        ("b", "ios", None, 1), ("c", "and", 6.0, 0), (None, "web", 7.0, 1), ("a", None, 80.0, 0),
    ]
    return spark.createDataFrame(rows, "city string, device string, amount double, label int")


# --- FrequencyEncoder ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("min_count", "max_categories", "city_ids", "device_ids"),
    [
        # b and c tie on 2 rows: b first by value; d is seen once, below minCount.
        (2, 100_000, {"a": 1, "b": 2, "c": 3, "d": 0}, {"web": 1, "and": 2, "ios": 3}),
        # only the 2 most frequent per column; and/ios tie on 3 rows: "and" first.
        (1, 2, {"a": 1, "b": 2, "c": 0, "d": 0}, {"web": 1, "and": 2, "ios": 0}),
    ],
)
def test_frequency_encoder_ids(spark, min_count, max_categories, city_ids, device_ids):
    cities = ["a", "a", "a", "b", "b", "c", "c", "d", None, None]
    devices = ["web", "web", "web", "web", "ios", "ios", "ios", "and", "and", "and"]
    train = spark.createDataFrame(list(zip(cities, devices)), "city string, device string")
    model = FrequencyEncoder(
        inputCols=["city", "device"], outputCols=["city_id", "device_id"],
        minCount=min_count, maxCategories=max_categories,
    ).fit(train)

    fresh = [("a", "web"), ("b", "and"), ("c", "ios"), ("d", "tv"), ("unseen", None), (None, "web")]
    city_ids, device_ids = {**city_ids, "unseen": 0, None: 0}, {**device_ids, "tv": 0, None: 0}
    expected = spark.createDataFrame(
        [(c, d, city_ids[c], device_ids[d]) for c, d in fresh],
        "city string, device string, city_id int not null, device_id int not null",
    )
    transformed = model.transform(spark.createDataFrame(fresh, "city string, device string"))
    assert_df_equality(transformed, expected, ignore_row_order=True, ignore_metadata=True)
    # Nominal attributes sized by the kept vocabulary (+1 for the out-of-vocabulary id 0).
    assert model.sizes == {"city": max(city_ids.values()) + 1, "device": max(device_ids.values()) + 1}
    assert transformed.schema["city_id"].metadata == {"ml_attr": {"type": "nominal", "num_vals": model.sizes["city"]}}


# --- TargetEncoder ------------------------------------------------------------------------

def test_target_encoder_smoothed_means_and_prior(spark):
    train = spark.createDataFrame(
        [("a", "x", 1), ("a", "x", 1), ("a", "y", 0), ("b", "y", 0), (None, "y", 1),
         ("b", None, None)],
        "city string, device string, label int",
    )
    model = TargetEncoder(
        inputCols=["city", "device"], outputCols=["city_te", "device_te"], smoothing=1.0
    ).fit(train)

    prior = 3 / 5  # the row with a null label is ignored
    assert model.prior == prior
    fresh = spark.createDataFrame(
        [("a", "x"), ("b", "y"), ("unseen", None), (None, "x")], "city string, device string"
    )
    a, b = (2 + prior) / (3 + 1), (0 + prior) / (1 + 1)
    x, y = (2 + prior) / (2 + 1), (1 + prior) / (3 + 1)
    expected = spark.createDataFrame(
        [("a", "x", a, x), ("b", "y", b, y), ("unseen", None, prior, prior), (None, "x", prior, x)],
        "city string, device string, city_te double not null, device_te double not null",
    )
    assert_df_equality(model.transform(fresh), expected, ignore_row_order=True)


# --- RobustScaler -------------------------------------------------------------------------

def test_robust_scaler_median_iqr_clip_and_nulls(spark):
    train = spark.createDataFrame(
        [(float(i), 10.0 * i if i <= 3 else None, 7.0) for i in range(1, 10)],
        "x double, y double, k double",
    )
    scaler = RobustScaler(inputCols=["x", "y", "k"], outputCols=["xs", "ys", "ks"], clip=2.0)
    model = scaler.fit(train)
    # x = 1..9: quartiles 3, 5, 7; y = 10, 20, 30 (nulls ignored); k is constant: IQR 0 -> 1.
    assert model.medians == {"x": 5.0, "y": 20.0, "k": 7.0}
    assert model.iqrs == {"x": 4.0, "y": 20.0, "k": 1.0}

    schema = "x double, y double, k double"
    fresh = spark.createDataFrame(
        [(9.0, 40.0, 7.0), (1.0, 0.0, 8.0), (100.0, None, 7.0), (-100.0, 10.0, None),
         (None, 20.0, 7.0)],
        schema,
    )
    expected = spark.createDataFrame(
        [
            (9.0, 40.0, 7.0, 1.0, 1.0, 0.0),
            (1.0, 0.0, 8.0, -1.0, -1.0, 1.0),
            (100.0, None, 7.0, 2.0, None, 0.0),
            (-100.0, 10.0, None, -2.0, -0.5, None),
            (None, 20.0, 7.0, None, 0.0, 0.0),
        ],
        f"{schema}, xs double, ys double, ks double",
    )
    assert_df_equality(model.transform(fresh), expected, ignore_row_order=True)

    zeros = expected.na.fill(0.0, ["xs", "ys", "ks"])
    assert_df_equality(
        model.transform(fresh, {model.nullToZero: True}), zeros, ignore_row_order=True
    )


# --- CategoricalCrosser -------------------------------------------------------------------

def test_crosser_ids_deterministic_in_range_and_null_zero(spark):
    frame = spark.createDataFrame(
        [("a", "x"), ("a", "y"), ("b", "x"), ("a", "x"), (None, "x"), ("a", None)],
        "city string, device string",
    )
    crosser = CategoricalCrosser(crosses=["city:device"], outputCols=["cx"], numBuckets=5)
    out = crosser.transform(frame)

    spec = "IF(city IS NULL OR device IS NULL, 0, pmod(xxhash64(city, device), 5) + 1)"
    expected = frame.withColumn("cx", F.expr(spec).cast("int"))
    assert_df_equality(out, expected, ignore_row_order=True)
    ids = {(r.city, r.device): r.cx for r in out.collect()}
    assert ids[(None, "x")] == ids[("a", None)] == 0
    assert all(1 <= v <= 5 for k, v in ids.items() if None not in k)


# --- Persistence and composition ----------------------------------------------------------

STAGES = {
    "frequency": lambda: FrequencyEncoder(
        inputCols=["city", "device"], outputCols=["city_id", "device_id"], maxCategories=2
    ),
    "target": lambda: TargetEncoder(inputCols=["city"], outputCols=["city_te"], smoothing=2.0),
    # nullToZero: the VectorAssembler downstream rejects null features.
    "robust": lambda: RobustScaler(
        inputCols=["amount"], outputCols=["amount_s"], clip=3.0, nullToZero=True
    ),
    "crosser": lambda: CategoricalCrosser(
        crosses=["city:device"], outputCols=["city_x_device"], numBuckets=64
    ),
}


def assert_same_stages(restored, original):
    """Same classes, uids and Params, stage by stage."""
    assert [type(s) for s in restored] == [type(s) for s in original]
    for r, o in zip(restored, original):
        assert r.uid == o.uid
        assert {p.name: v for p, v in r.extractParamMap().items()} == {
            p.name: v for p, v in o.extractParamMap().items()
        }


def test_unfitted_pipeline_round_trip(spark, tmp_path):
    pipeline = Pipeline(stages=[make() for make in STAGES.values()])
    pipeline.write().save(str(tmp_path / "pipeline"))

    loaded = Pipeline.load(str(tmp_path / "pipeline"))

    assert_same_stages(loaded.getStages(), pipeline.getStages())


def test_encoders_train_with_logistic_regression_and_round_trip(spark, mixed, tmp_path):
    """Every stage inside one fitted Pipeline: it trains, saves, loads and scores as before.

    One pipeline rather than one per stage keeps the file fast; every stage's output
    column is compared, so a stage that does not round-trip still fails by name.
    """
    features = ["city_id", "device_id", "city_te", "amount_s", "city_x_device"]
    pipeline = Pipeline(stages=[
        *(make() for make in STAGES.values()),
        VectorAssembler(inputCols=features, outputCol="features"),
        LogisticRegression(maxIter=5),
    ])
    model = pipeline.fit(mixed)
    assert model.stages[-1].coefficients.size == len(features)

    def scored(pipeline_model):  # vectors do not sort; compare probabilities as arrays
        out = pipeline_model.transform(mixed).drop("features", "rawPrediction")
        return out.withColumn("probability", vector_to_array("probability"))

    before = scored(model)
    model.write().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))

    stages_dir = tmp_path / "model" / "stages"
    for learned in ("FrequencyEncoderModel", "TargetEncoderModel"):  # tables, not JSON params
        assert list(stages_dir.glob(f"*_{learned}_*/data/*.parquet")), learned
    assert_same_stages(loaded.stages, model.stages)
    assert_df_equality(scored(loaded), before, ignore_row_order=True)


# --- Bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", STAGES)
def test_missing_input_column_is_named_before_any_job(spark, mixed, name):
    stage = STAGES[name]()
    missing = "amount" if name == "robust" else "city"
    run = stage.transform if name == "crosser" else stage.fit
    with no_spark_jobs(spark), pytest.raises(ValueError, match=rf"\['{missing}'\] not found"):
        run(mixed.drop(missing))


def test_missing_label_column_is_named(spark, mixed):
    encoder = STAGES["target"]().setLabelCol("clicked")
    with no_spark_jobs(spark), pytest.raises(ValueError, match=r"\['clicked'\] not found"):
        encoder.fit(mixed)


@pytest.mark.parametrize(
    "stage",
    [
        FrequencyEncoder(inputCols=["city", "device"], outputCols=["city_id"]),
        RobustScaler(inputCols=["amount"], outputCols=["a", "b"]),
        CategoricalCrosser(crosses=["city:device"], outputCols=["x", "y"]),
    ],
    ids=lambda stage: type(stage).__name__,
)
def test_mismatched_input_and_output_lengths(spark, mixed, stage):
    run = stage.transform if isinstance(stage, CategoricalCrosser) else stage.fit
    with no_spark_jobs(spark), pytest.raises(ValueError, match=r"need \d distinct outputCols"):
        run(mixed)
