"""score: apply a stored model to a pinned feature-table version, predictions into Delta.

Predictions are keyed by (model version, feature version): a re-run replaces exactly
that slice with Delta's `replaceWhere`, so it never duplicates and never touches the
predictions of other models or versions. The model's card says its kind and task: an
MLlib PipelineModel transforms the table; a torch model runs on the executors
(`bridge.predict`). A classifier's rows also name their predicted class (`predicted_class`).
"""

from __future__ import annotations

import time

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_ext import lake, modelstore
from sparkml_ext.bridge.predict import torch_predictions
from sparkml_ext.config import PipelineConfig
from sparkml_ext.holdout import mllib_score, predicted_class


def score(spark: SparkSession, cfg: PipelineConfig, model_ref: str | None = None) -> dict:
    """Score the feature table with `model_ref` (default: score.model) and store the result."""
    started = time.monotonic()
    stored = modelstore.resolve(cfg.table_path("models"), model_ref or cfg.score.model)
    card = modelstore.read_json(stored, "card.json")
    features, version = lake.read_version(spark, cfg.table_path("features"), cfg.score.feature_version)
    predict = _torch_predictions if card["model"] == "torch" else _mllib_predictions
    predictions = predict(stored, card, features, cfg.source.key).withColumn(
        "predicted_class", predicted_class(card.get("classes")))

    target = cfg.table_path("predictions")
    slice_ = f"model = '{stored.name}' AND feature_version = {version}"
    written = lake.replace_where(
        predictions.withColumn("model", F.lit(stored.name)).withColumn("feature_version", F.lit(version)),
        target, slice_, partition_by=["model"])
    rows = lake.rows_written(spark, target, written)
    return {
        "job": "score",
        "summary": f"score: {stored.name} on feature v{version}: {rows} predictions → {target} v{written}",
        "counts": {"predictions": rows},
        "model": stored.name,
        "feature_version": version,
        "predictions_table": target,
        "predictions_version": written,
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
    }


def _mllib_predictions(stored: modelstore.ModelVersion, card: dict, features: DataFrame, key: str) -> DataFrame:
    scored = PipelineModel.load(f"{stored.uri}/model").transform(features)
    return scored.select(key, mllib_score(card["task"]).alias("score"),
                         F.col("prediction").cast("double").alias("prediction"))


def _torch_predictions(
    stored: modelstore.ModelVersion, card: dict, features: DataFrame, key: str
) -> DataFrame:
    return torch_predictions(features, f"{stored.uri}/model.pt", key).select(key, "score", "prediction")
