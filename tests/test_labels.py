"""Rows whose label is null (events whose outcome is not known yet) stay in bronze and the
feature table, are left out of training, tuning and evaluation by both training jobs, and
are scored: issue 19's "Labels MUST NOT be Null or NaN" stack trace from train-mllib."""

from __future__ import annotations

import random

import pytest
from clickdata import clicks_config, line, write_batch
from pyspark.sql import functions as F
from test_torch_job import small

from sparkml_ext.features import build_features
from sparkml_ext.holdout import card_split
from sparkml_ext.ingest import ingest_batch
from sparkml_ext.score import score
from sparkml_ext.train_mllib import train_mllib
from sparkml_ext.train_torch import TorchTrainError, train_torch

pytestmark = pytest.mark.slow
LABEL_MAY_BE_NULL = "source.not_null=[event_id, user_id, event_time]"
FAST = ["train_mllib.params={maxIter: 5, seed: 7}", "train_mllib.grid={maxDepth: [2, 3]}"]
EVENTS, UNKNOWN_EVERY = 800, 4  # every 4th event's outcome is not known yet


def _events() -> list[str]:
    """Events whose click depends on their numerics; every UNKNOWN_EVERY-th has no label."""
    rng = random.Random(19)
    lines = []
    for i in range(EVENTS):
        value = rng.uniform(0, 10)
        click = "" if i % UNKNOWN_EVERY == 0 else str(int(rng.random() < value / 10))
        lines.append(line(f"e{i:04d}", str(1 + i % 40), f"2026-01-{1 + i // 200:02d} {i % 24:02d}:{i % 60:02d}:00",
                          label=click, numeric=f"{value:.3f}", category=f"cat{rng.randrange(6)}"))
    return lines


@pytest.fixture(scope="module")
def lakehouse(spark, tmp_path_factory):
    """One batch of EVENTS events, a quarter unlabelled, ingested and feature-engineered."""
    root = tmp_path_factory.mktemp("unlabelled")
    cfg = clicks_config(root, LABEL_MAY_BE_NULL)
    write_batch(root / "landing" / "b1", _events())
    ingest_batch(spark, cfg, "b1")
    build_features(spark, cfg)
    return root


def _rows(spark, cfg, card: dict) -> dict:
    """Labelled rows per split of `card`'s holdout and the unlabelled rows, counted from the
    feature table."""
    features = spark.read.format("delta").load(cfg.table_path("features"))
    assert features.count() == EVENTS  # ingest and features kept the unlabelled rows
    counts = {r.split: r["count"] for r in features.where(F.col("label").isNotNull())
              .groupBy(card_split(card, "event_id").of().alias("split")).count().collect()}
    return {**counts, "unlabelled": features.where(F.col("label").isNull()).count()}


def _scores_every_row(spark, cfg, model_version: str) -> None:
    report = score(spark, cfg, model_version)
    assert report["rows"] == EVENTS
    predictions = spark.read.format("delta").load(cfg.table_path("predictions")).where(
        F.col("model") == model_version)
    features = spark.read.format("delta").load(cfg.table_path("features"))
    unlabelled = features.where(F.col("label").isNull()).join(predictions, "event_id")
    assert unlabelled.count() == EVENTS // UNKNOWN_EVERY
    assert unlabelled.where(F.col("score").isNull() | F.isnan("score")).count() == 0


def test_train_mllib_leaves_unlabelled_rows_out_and_score_scores_them(spark, lakehouse):
    cfg = clicks_config(lakehouse, LABEL_MAY_BE_NULL, *FAST)
    card = train_mllib(spark, cfg)
    rows = _rows(spark, cfg, card)
    assert card["rows"] == rows and rows["unlabelled"] == EVENTS // UNKNOWN_EVERY
    assert card["counts"]["unlabelled rows"] == rows["unlabelled"]
    assert f"{rows['unlabelled']} unlabelled rows left out" in card["summary"]
    assert card["metrics"]["test_rows"] == rows["test"]
    assert 0.5 < card["metrics"]["auc_roc"] <= 1
    _scores_every_row(spark, cfg, card["model_version"])


def test_train_torch_exports_only_labelled_rows_and_score_scores_them(spark, lakehouse):
    cfg = small(lakehouse, LABEL_MAY_BE_NULL)
    card = train_torch(spark, cfg)
    rows = _rows(spark, cfg, card)
    assert card["rows"] == rows
    assert card["counts"]["unlabelled rows"] == rows["unlabelled"]
    assert f"{rows['unlabelled']} unlabelled rows left out" in card["summary"]
    assert card["metrics"]["test_rows"] == rows["test"]
    _scores_every_row(spark, cfg, card["model_version"])


def test_a_label_the_table_lacks_is_refused_by_name(spark, lakehouse):
    """Checked before the split or the export reads it: a message, not Spark's stack trace."""
    with pytest.raises(TorchTrainError, match="label column 'outcome' is not in the feature table"):
        train_torch(spark, small(lakehouse, LABEL_MAY_BE_NULL, "features.label=outcome"))
