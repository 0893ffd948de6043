"""Torch models on Spark's executors: a DataFrame in, `key, *keep, score, prediction` out.

The Spark half of torch inference; the torch half is `deep.inference.Predictor`, which
the MLflow pyfunc runs too. Each Python worker loads a model once (weights only) and
runs it on whole Arrow batches (`mapInArrow`), so no row passes through the driver.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

if TYPE_CHECKING:
    from sparkml_ext.deep.inference import Predictor

_PREDICTORS: dict[str, Predictor] = {}  # per Python process: model URI -> Predictor


def predictor(uri: str) -> Predictor:
    """The `deep.inference.Predictor` of the model at `uri`, loaded once per process."""
    if uri not in _PREDICTORS:
        from sparkml_ext.deep.inference import Predictor  # torch: only where models run

        _PREDICTORS[uri] = Predictor.load(uri)
    return _PREDICTORS[uri]


def torch_predictions(
    features: DataFrame, model_uri: str, key: str, keep: Sequence[str] = ()
) -> DataFrame:
    """`key, *keep, score, prediction` of a torch model saved by `deep.model.save_model`."""
    model = predictor(model_uri)
    missing = sorted(set(model.columns + [key, *keep]) - set(features.columns))
    if missing:
        raise ValueError(f"the torch model {model_uri} needs columns the table lacks: {missing}")
    inputs = features.select(
        key, *keep,
        *[F.col(c).cast("float") for c in model.numeric],
        *[F.col(c).cast("bigint") for c in model.categorical],
    )
    passed = [key, *keep]
    schema = T.StructType([
        *[features.schema[c] for c in passed],
        T.StructField("score", T.DoubleType()),
        T.StructField("prediction", T.DoubleType()),
    ])
    return inputs.mapInArrow(partial(_predict_batches, model_uri=model_uri, passed=passed), schema)


def _predict_batches(
    batches: Iterator[pa.RecordBatch], *, model_uri: str, passed: list[str]
) -> Iterator[pa.RecordBatch]:
    """Executor side: each Arrow batch's predictions, on the task's share of cores. A binary
    model's `score` is the positive class's probability and `prediction` the class (0/1); a
    regression's both are the predicted label."""
    import torch

    model = predictor(model_uri)
    torch.set_num_threads(max(1, TaskContext.get().cpus()))
    for batch in batches:
        p = model.predict(batch)
        predicted = p if model.task == "regression" else (p > 0.5).astype(np.float64)
        yield pa.RecordBatch.from_arrays(
            [*map(batch.column, passed), pa.array(p), pa.array(predicted)],
            names=[*passed, "score", "prediction"],
        )
