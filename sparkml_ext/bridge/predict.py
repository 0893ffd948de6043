"""Torch models on Spark's executors: a DataFrame in, `key, *keep, score, prediction` out
(and a multiclass model's `probability` of each class).

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
    """`key, *keep, score, prediction` of a torch model saved by `deep.model.save_model`, and
    for a multiclass model `probability` (an array, one entry per class)."""
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
        *([T.StructField("probability", T.ArrayType(T.DoubleType()))] if model.task == "multiclass" else []),
    ])
    return inputs.mapInArrow(partial(_predict_batches, model_uri=model_uri, passed=passed), schema)


def _predict_batches(
    batches: Iterator[pa.RecordBatch], *, model_uri: str, passed: list[str]
) -> Iterator[pa.RecordBatch]:
    """Executor side: each Arrow batch's predictions, on the task's share of cores. A binary
    model's `score` is the positive class's probability and `prediction` the class (0/1); a
    multiclass one's the likeliest class's probability and index; a regression's both are
    the predicted label."""
    import torch

    model = predictor(model_uri)
    torch.set_num_threads(max(1, TaskContext.get().cpus()))
    for batch in batches:
        p = model.predict(batch)
        columns = {name: batch.column(name) for name in passed}
        if model.task == "multiclass":
            columns |= {"score": pa.array(p.max(axis=1)), "prediction": pa.array(p.argmax(axis=1).astype(np.float64)),
                        "probability": pa.ListArray.from_arrays(np.arange(0, p.size + 1, p.shape[1]), p.ravel())}
        else:
            predicted = p if model.task == "regression" else (p > 0.5).astype(np.float64)
            columns |= {"score": pa.array(p), "prediction": pa.array(predicted)}
        yield pa.RecordBatch.from_pydict(columns)
