"""score: apply a stored model to a pinned feature-table version, predictions into Delta.

Predictions are keyed by (model version, feature version): a re-run replaces exactly
that slice with Delta's `replaceWhere`, so it never duplicates and never touches the
predictions of other models or versions. The model's card says its kind: an MLlib
PipelineModel transforms the table; a torch model runs on the executors (`mapInArrow`).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from pyspark import TaskContext
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkml_ext import lake, modelstore
from sparkml_ext.config import PipelineConfig
from sparkml_ext.mllib import CLASSIFIERS


def score(spark: SparkSession, cfg: PipelineConfig, model_ref: str | None = None) -> dict:
    """Score the feature table with `model_ref` (default: score.model) and store the result."""
    started = time.monotonic()
    stored = modelstore.resolve(cfg.table_path("models"), model_ref or cfg.score.model)
    card = modelstore.read_json(stored, "card.json")
    features, version = lake.read_version(spark, cfg.table_path("features"), cfg.score.feature_version)
    predict = _torch_predictions if card["model"] == "torch" else _mllib_predictions
    predictions = predict(stored, card, features, cfg.source.key)

    target = cfg.table_path("predictions")
    slice_ = f"model = '{stored.name}' AND feature_version = {version}"
    (
        predictions.withColumn("model", F.lit(stored.name))
        .withColumn("feature_version", F.lit(version))
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", slice_)
        .partitionBy("model")
        .save(target)
    )
    written = lake.current_version(spark, target)
    return {
        "model": stored.name,
        "feature_version": version,
        "predictions_table": target,
        "predictions_version": written,
        "rows": lake.rows_written(spark, target, written),
        "seconds": round(time.monotonic() - started, 1),
    }


def _mllib_predictions(stored: modelstore.ModelVersion, card: dict, features: DataFrame, key: str) -> DataFrame:
    scored = PipelineModel.load(f"{stored.uri}/model").transform(features)
    score = (
        vector_to_array("probability")[1]
        if card["model"] in CLASSIFIERS
        else F.col("prediction").cast("double")
    )
    return scored.select(key, score.alias("score"), F.col("prediction").cast("double").alias("prediction"))


def _torch_predictions(
    stored: modelstore.ModelVersion, card: dict, features: DataFrame, key: str
) -> DataFrame:
    return torch_predictions(features, f"{stored.uri}/model.pt", key)


def torch_predictions(
    features: DataFrame, model_uri: str, key: str, keep: Sequence[str] = ()
) -> DataFrame:
    """`key, *keep, score, prediction` of a torch model saved by `deep.model.save_model`.

    The executors run the model on Arrow batches: each Python worker loads it once,
    and the model's own column list picks the inputs (nulls become 0, as in training).
    """
    columns = _torch_model(model_uri)[1]["columns"]
    numeric, categorical = columns["numeric"], columns["categorical"]
    missing = sorted(set(numeric + categorical + [key, *keep]) - set(features.columns))
    if missing:
        raise ValueError(f"the torch model {model_uri} needs columns the table lacks: {missing}")
    inputs = features.select(
        key, *keep,
        *[F.col(c).cast("float") for c in numeric],
        *[F.col(c).cast("bigint") for c in categorical],
    )
    passed = [key, *keep]
    schema = T.StructType([
        *[features.schema[c] for c in passed],
        T.StructField("score", T.DoubleType()),
        T.StructField("prediction", T.DoubleType()),
    ])
    run = partial(_predict_batches, model_uri=model_uri, passed=passed, numeric=numeric,
                  categorical=categorical)
    return inputs.mapInArrow(run, schema)


_TORCH_MODELS: dict[str, tuple[Any, dict]] = {}  # per Python worker: model URI -> (model, config)


def _torch_model(uri: str) -> tuple[Any, dict]:
    """The model at `uri` (any pyarrow file system), loaded once per process, weights only."""
    if uri not in _TORCH_MODELS:
        from sparkml_ext.deep.model import load_model

        fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
        with fs.open_input_stream(path) as source:
            model, config = load_model(io.BytesIO(source.read()))
        _TORCH_MODELS[uri] = model.eval(), config
    return _TORCH_MODELS[uri]


def _predict_batches(
    batches: Iterator[pa.RecordBatch],
    *,
    model_uri: str,
    passed: list[str],
    numeric: list[str],
    categorical: list[str],
) -> Iterator[pa.RecordBatch]:
    """Executor side: column-wise tensors per Arrow batch, click probability out."""
    import torch

    from sparkml_ext.deep.shards import column_parts

    model, _ = _torch_model(model_uri)
    torch.set_num_threads(max(1, TaskContext.get().cpus()))
    for batch in batches:
        dense = np.empty((batch.num_rows, len(numeric)), dtype=np.float32)
        ids = np.empty((batch.num_rows, len(categorical)), dtype=np.int64)
        for out, names in ((dense, numeric), (ids, categorical)):
            for j, name in enumerate(names):
                out[:, j] = column_parts(pa.chunked_array([batch.column(name)]), name)[0]
        with torch.inference_mode():
            p = torch.sigmoid(model(torch.from_numpy(dense), torch.from_numpy(ids))).double()
        p = p.numpy()
        yield pa.RecordBatch.from_arrays(
            [*map(batch.column, passed), pa.array(p), pa.array((p > 0.5).astype(np.float64))],
            names=[*passed, "score", "prediction"],
        )
