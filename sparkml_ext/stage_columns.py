"""Which columns an MLlib stage's column params name: what fitting it reads, and what a
fitted pipeline needs from its input. train-mllib's search caches the first; tracking's
model signature (and a caller that scores a stored model) selects the second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

INPUT_PARAMS = ("inputCol", "inputCols", "featuresCol")
OUTPUT_PARAMS = ("outputCol", "outputCols", "predictionCol", "probabilityCol", "rawPredictionCol")


def named_columns(stage: Any, named: Callable[[str], bool]) -> list[str]:
    """The columns held by `stage`'s defined params whose names pass `named` (a param holds
    one column name or a list of them)."""
    columns: list[str] = []
    for param in stage.params:
        if named(param.name) and stage.isDefined(param):
            value = stage.getOrDefault(param)
            columns += [value] if isinstance(value, str) else list(value or [])
    return columns


def fit_columns(estimator: Any) -> list[str]:
    """Every column an estimator's params name (features, label, weight, ...): the columns
    its fit may read. By name: MLlib's `*Col`/`*Cols`, xgboost.spark's `*_col`/`*_cols`."""
    return named_columns(estimator, lambda name: name.lower().endswith(("col", "cols")))


def pipeline_inputs(model: Any) -> list[str]:
    """Columns a PipelineModel reads from its input (those no earlier stage produces)."""
    produced: set[str] = set()
    needed: list[str] = []
    for stage in model.stages:
        needed += [c for c in named_columns(stage, INPUT_PARAMS.__contains__)
                   if c not in produced and c not in needed]
        produced.update(named_columns(stage, OUTPUT_PARAMS.__contains__))
    return needed
