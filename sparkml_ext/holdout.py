"""The holdout both training jobs and the report judge models on: split, scores, metrics.

Rows are split by a hash of their key, not `randomSplit` (whose result moves with the
partitioning), so a run can be repeated exactly and every model, MLlib or torch, is
judged on the same test rows. The split is SQL so that a shard export's filter and a
DataFrame's column are one expression. A model's `task` (on its card) decides its metrics
and what its `score` column holds.
"""

from __future__ import annotations

from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    ClusteringEvaluator,
    RegressionEvaluator,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_ext import lake
from sparkml_ext.config import PipelineConfig

SPLIT_TRAIN, SPLIT_VALIDATION = 0.8, 0.9  # cumulative: 80% train, 10% validation, 10% test
CLASSIFICATION, REGRESSION, CLUSTERING = "classification", "regression", "clustering"
BAYES = "bayes-optimal"  # the curve of the generator's planted probability
# The truth table's column with each event's planted probability of the positive label: a
# generator writes it, and the Bayes-optimal comparison scores the holdout with it.
PLANTED = "planted_probability"


class TrainError(RuntimeError):
    """Training cannot start on this data: no table, no rows, a label of the wrong type."""


def split_sql(key: str) -> str:
    """A row's split as SQL, 'train' / 'validation' / 'test', from a hash of its key.

    Stable across runs, partitionings and clusters.
    """
    u = f"pmod(xxhash64(`{key}`, 'split'), 10000)"
    return (f"CASE WHEN {u} < {round(SPLIT_TRAIN * 10_000)} THEN 'train' "
            f"WHEN {u} < {round(SPLIT_VALIDATION * 10_000)} THEN 'validation' ELSE 'test' END")


def labelled_sql(label: str) -> str:
    """SQL selecting the rows a supervised model can learn from or be judged on: the label
    is neither null nor NaN (MLlib refuses both). Other rows still get scored."""
    quoted = f"`{label.replace('`', '``')}`"
    return f"({quoted} IS NOT NULL AND NOT isnan(CAST({quoted} AS DOUBLE)))"  # a boolean too


def split_of(key: str) -> Column:
    """`split_sql` as a column."""
    return F.expr(split_sql(key))


def split_filter(key: str, split: str) -> str:
    """SQL selecting the rows `split_of(key)` puts in `split` (the shard export's filter)."""
    return f"{split_sql(key)} = '{split}'"


def mllib_score(task: str) -> Column:
    """What an MLlib model's `score` is: the positive class's probability for a classifier
    (its `probability` vector's second entry), else the prediction itself."""
    if task == CLASSIFICATION:
        return vector_to_array("probability")[1]
    return F.col("prediction").cast("double")


def evaluate(scored: DataFrame, task: str, label: str) -> dict:
    """Holdout metrics of scored test rows for a model's task.

    `scored` holds `prediction` and `score` (the positive class's probability for
    classification);
    clustering reads the `features` vector too (silhouette).
    """
    scored = scored.cache()
    try:
        if task == CLUSTERING:
            return {"silhouette": ClusteringEvaluator().evaluate(scored)}
        if task == REGRESSION:
            return {m: RegressionEvaluator(labelCol=label, metricName=m).evaluate(scored)
                    for m in ("rmse", "mae", "r2")}
        return binary_metrics(scored, label, "score")
    finally:
        scored.unpersist()


def binary_metrics(scored: DataFrame, label: str, probability: str) -> dict:
    """AUC-ROC, AUC-PR, log loss and accuracy of a positive-class probability column (cache
    `scored` first)."""
    auc = {m: BinaryClassificationEvaluator(labelCol=label, rawPredictionCol=probability,
                                            metricName=m).evaluate(scored)
           for m in ("areaUnderROC", "areaUnderPR")}
    p = F.least(F.greatest(F.col(probability), F.lit(1e-15)), F.lit(1 - 1e-15))
    y = F.col(label).cast("double")
    row = scored.agg(
        F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("log_loss"),
        F.avg((F.col("prediction") == y).cast("double")).alias("accuracy"),
        F.count(F.lit(1)).alias("rows"),
    ).head()
    return {"auc_roc": auc["areaUnderROC"], "auc_pr": auc["areaUnderPR"],
            "log_loss": row.log_loss, "accuracy": row.accuracy, "test_rows": row.rows}


def planted(spark: SparkSession, cfg: PipelineConfig, rows: DataFrame) -> DataFrame | None:
    """`rows` joined by key with the truth table's planted probability (`PLANTED`) as `score`.

    None where a generator's truth is not this data's: no `tables.truth` (a user's file),
    no table there, or one without the source's key (of that type) or `PLANTED`.
    """
    if cfg.tables.truth is None:
        return None
    try:
        truth, _ = lake.read_version(spark, cfg.table_path("truth"))
    except FileNotFoundError:
        return None
    key = cfg.source.key
    types = {f.name: f.dataType for f in truth.schema.fields}
    if PLANTED not in types or types.get(key) != rows.schema[key].dataType:
        return None
    scores = truth.select(key, F.col(PLANTED).cast("double").alias("score")).where(F.col("score").isNotNull())
    return rows.join(scores, key)


def bayes_optimal_auc(spark: SparkSession, cfg: PipelineConfig, test: DataFrame, label: str) -> float | None:
    """AUC of the generator's planted probability on the same test rows (None without truth
    for them, see `planted`)."""
    joined = planted(spark, cfg, test.select(cfg.source.key, label))
    if joined is None or joined.isEmpty():
        return None
    return float(BinaryClassificationEvaluator(labelCol=label, rawPredictionCol="score").evaluate(joined))
