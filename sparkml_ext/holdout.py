"""The holdout both training jobs and the report judge models on: split, scores, metrics.

By default the split is out of time (`holdout.by: time`): cut-offs on the event time of
the pinned feature table's labelled rows, so a model is judged on events later than any
it learned from. `hash` splits by a hash of the key instead. Neither uses `randomSplit`
(whose result moves with the partitioning): a run can be repeated exactly, and every
model of one feature version, MLlib or torch, is judged on the same test rows. The split
is SQL so that a shard export's filter and a DataFrame's column are one expression. A
model's `task` (on its card) decides its metrics and what its `score` column holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    ClusteringEvaluator,
    RegressionEvaluator,
)
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from sparkml_ext import lake
from sparkml_ext.config import HoldoutConfig, PipelineConfig, parse_duration
from sparkml_ext.session import cached

SPLITS = ("train", "validation", "test")
EXCLUDED = "excluded"  # a time split's gap, and rows without an event time
CLASSIFICATION, REGRESSION, CLUSTERING = "classification", "regression", "clustering"
MULTICLASS = "multiclass"  # a classifier's task when the label has more than two classes
MAX_CLASSES = 1000  # more distinct labels than this is a continuous label or an id
CLASS = "_class"  # a classifier's label as its class's index (0, 1, ...) in the card's `classes`
BINARY_CLASSES = [0, 1]  # the torch model's classes, and those of a card that lists none
BAYES = "bayes-optimal"  # the curve of the generator's planted probability
# The truth table's column with each event's planted probability of the positive label: a
# generator writes it, and the Bayes-optimal comparison scores the holdout with it.
PLANTED = "planted_probability"


class TrainError(RuntimeError):
    """Training cannot start on this data: no table, no rows, a label of the wrong type."""


def require_label(data: DataFrame, label: str, model: str, numeric: bool = True) -> None:
    """Refuse, naming it, a label column the feature table lacks, or one that is not numeric
    where the model needs a number (a classifier's classes can be any values), before any
    split or fit reads it."""
    if label not in data.columns:
        raise TrainError(f"label column {label!r} is not in the feature table")
    kind = data.schema[label].dataType
    if numeric and not isinstance(kind, NumericType):
        raise TrainError(f"label column {label!r} has type {kind.simpleString()}; {model} needs a numeric label")


def label_classes(data: DataFrame, label: str, rows: str, model: str) -> list:
    """The classes a classifier learns: the label's distinct values among `rows` (SQL),
    sorted; their positions are the class indexes MLlib learns (`class_index`). One Spark
    job. Two classes make a binary task, more a multiclass one; a label with more values
    than MAX_CLASSES, or only one, is refused with what to do instead."""
    values = [r[0] for r in data.where(rows).select(label).distinct().limit(MAX_CLASSES + 1).collect()]  # driver-ok: ≤ MAX_CLASSES + 1 rows
    return checked_classes(values, label, model)


def checked_classes(values: list, label: str, model: str) -> list:
    """A label's distinct `values` as a classifier's sorted classes, refused as `label_classes`
    says; for a caller that found them with a query of its own."""
    if len(values) > MAX_CLASSES:
        raise TrainError(f"label column {label!r} has more than {MAX_CLASSES} distinct values: {model} is a "
                         "classifier; for a continuous label use linear_regression or gbt_regression")
    if len(values) < 2:
        raise TrainError(f"label column {label!r} has {len(values)} distinct value(s) among the labelled rows "
                         f"({values}); a classifier needs at least two classes")
    return sorted(values)


def class_index(label: str, classes: list) -> Column:
    """The label as its class's index in `classes` (a double, as MLlib wants); null for a
    value outside them."""
    position = F.array_position(F.array(*[F.lit(c) for c in classes]), F.col(label))
    return F.when(position > 0, position - 1).cast("double")


def predicted_class(classes: list | None) -> Column:
    """The class a classifier's `prediction` (an index into its card's `classes`) names, as
    text (Spark's cast of the label's value), so that a user need not read the card to know
    what index 2 means; null for a model whose card lists no classes."""
    if not classes:
        return F.lit(None).cast("string")
    return F.get(F.array(*[F.lit(c).cast("string") for c in classes]), F.col("prediction").cast("int"))


def classifier_task(classes: list) -> str:
    return CLASSIFICATION if len(classes) == 2 else MULTICLASS


def labelled_sql(label: str) -> str:
    """SQL selecting the rows a supervised model can learn from or be judged on: the label
    is neither null nor NaN (MLlib refuses both). Other rows still get scored."""
    quoted = f"`{label.replace('`', '``')}`"
    return f"({quoted} IS NOT NULL AND NOT isnan(try_cast({quoted} AS DOUBLE)))"  # a class name too


@dataclass(frozen=True)
class Split:
    """One run's split of the feature table into train / validation / test (/ excluded).

    `by` "hash": shares of the rows by a hash of `column` (the key); "time": `column` is
    the event time and `cuts` the microseconds since the epoch where validation starts,
    where test starts, and the gap before each. Kept on the model card (`card()`), from
    which `Split.from_card` rebuilds it.
    """

    by: str
    column: str
    cuts: tuple[float, ...]  # hash: cumulative train, validation shares; time: see `resolve_split`
    gap_seconds: int = 0

    @property
    def sql(self) -> str:
        """The split of a row as SQL: 'train', 'validation', 'test' or 'excluded'."""
        quoted = f"`{self.column.replace('`', '``')}`"
        if self.by == "hash":
            u = f"pmod(xxhash64({quoted}, 'split'), 10000)"
            train, validation = (round(c * 10_000) for c in self.cuts)
            return (f"CASE WHEN {u} < {train} THEN 'train' WHEN {u} < {validation} "
                    f"THEN 'validation' ELSE 'test' END")
        t = f"unix_micros({quoted})"
        validation, test = (int(c) for c in self.cuts)
        gap = self.gap_seconds * 1_000_000
        return (f"CASE WHEN {t} IS NULL THEN '{EXCLUDED}' WHEN {t} >= {test} THEN 'test' "
                f"WHEN {t} >= {test - gap} THEN '{EXCLUDED}' WHEN {t} >= {validation} THEN 'validation' "
                f"WHEN {t} >= {validation - gap} THEN '{EXCLUDED}' ELSE 'train' END")

    def of(self) -> Column:
        """`sql` as a column."""
        return F.expr(self.sql)

    def only(self, split: str) -> str:
        """SQL selecting the rows in `split` (the shard export's filter)."""
        return f"({self.sql}) = '{split}'"

    def card(self) -> dict:
        """What a model card and the report say about the split, enough to rebuild it."""
        described: dict = {"by": self.by, "column": self.column, "cuts": list(self.cuts)}
        if self.by == "time":
            validation, test = (_utc(c) for c in self.cuts)
            described |= {"gap_seconds": self.gap_seconds, "validation_from": validation, "test_from": test}
        return described

    @classmethod
    def from_card(cls, described: dict) -> Split:
        return cls(described["by"], described["column"], tuple(described["cuts"]),
                   described.get("gap_seconds", 0))


def hash_split(key: str, holdout: HoldoutConfig | None = None) -> Split:
    """Shares of the rows by a hash of `key`: stable across runs, partitionings and clusters."""
    holdout = holdout or HoldoutConfig(by="hash")
    test_from = 1 - holdout.test
    return Split("hash", key, (test_from - holdout.validation, test_from))


def resolve_split(data: DataFrame, cfg: PipelineConfig, rows: str = "true") -> Split:
    """This run's split of `data` (a pinned feature-table version) by `cfg.holdout`.

    A time split cuts the event-time span of the `rows` (SQL: the labelled ones) at
    shares `validation` and `test` from its end; one Spark job reads their first and last
    event time, so every job that pins the same version cuts at the same instants.
    """
    holdout = cfg.holdout
    if holdout.by == "hash" or cfg.source.event_time is None:  # no time to split by
        return hash_split(cfg.source.key, holdout)
    column = cfg.source.event_time
    t = F.unix_micros(F.col(column))
    first, last = data.where(rows).agg(F.min(t), F.max(t)).head()  # driver-ok: one row
    if first is None or first == last:
        raise TrainError(f"too few labelled rows to split by time: holdout.by: time needs them at "
                         f"more than one instant of {column!r} (or set holdout.by: hash)")
    span = last - first
    test = last - holdout.test * span
    validation = test - holdout.validation * span
    return Split("time", column, (float(int(validation)), float(int(test))), parse_duration(holdout.gap))


def card_split(card: dict, key: str) -> Split:
    """The split a model card was judged on; a card from before `holdout` was recorded was
    judged on the hash split of its key."""
    return Split.from_card(card["holdout"]) if "holdout" in card else hash_split(key)


def _utc(micros: float) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=UTC).isoformat(timespec="seconds")


def mllib_score(task: str) -> Column:
    """What an MLlib model's `score` is: the positive class's probability for a binary
    classifier (its `probability` vector's second entry), the predicted class's for a
    multiclass one (its `prediction` is that class's index in the card's `classes`), else
    the prediction itself."""
    if task == CLASSIFICATION:
        return vector_to_array("probability")[1]
    if task == MULTICLASS:
        return F.array_max(vector_to_array("probability"))
    return F.col("prediction").cast("double")


def evaluate(scored: DataFrame, task: str, label: str) -> dict:
    """Holdout metrics of scored test rows for a model's task.

    `scored` holds `prediction` and `score` (the positive class's probability for
    classification); a multiclass model's `probability` vector; clustering reads the
    `features` vector too (silhouette).

    Only the columns the metrics read are cached: caching a model's whole output makes
    Spark compute every column it carries (an MLlib pipeline's frequency lookups over the
    whole feature table took 10 s more on 15k test rows than its `prediction` alone).
    """
    reads = {CLUSTERING: ["features", "prediction"], MULTICLASS: [label, "prediction", "probability"],
             CLASSIFICATION: [label, "prediction", "score"]}.get(task, [label, "prediction"])
    with cached(scored.select(*reads)) as metric_rows:
        if task == CLUSTERING:
            return {"silhouette": ClusteringEvaluator().evaluate(metric_rows)}
        if task == REGRESSION:
            return {m: RegressionEvaluator(labelCol=label, metricName=m).evaluate(metric_rows)
                    for m in ("rmse", "mae", "r2")}
        if task == MULTICLASS:
            return multiclass_metrics(metric_rows, label)
        return binary_metrics(metric_rows, label, "score")


def multiclass_metrics(scored: DataFrame, label: str) -> dict:
    """Accuracy, macro-F1 (every class weighs the same, however rare) and log loss of
    scored rows whose `label` is the class index, from one aggregate over the confusion
    cells (at most classes² rows to the driver). `probability`: MLlib's vector, or an array
    (a torch model's)."""
    y = F.col(label).cast("int")
    vector = isinstance(scored.schema["probability"].dataType, VectorUDT)
    probabilities = vector_to_array("probability") if vector else F.col("probability")
    p = F.least(F.greatest(F.get(probabilities, y), F.lit(1e-15)), F.lit(1.0))
    cells = (scored.groupBy(y.alias("truth"), F.col("prediction").cast("int").alias("predicted"))
             .agg(F.count(F.lit(1)).alias("rows"), F.sum(-F.log(p)).alias("loss"))
             .collect())  # driver-ok: one row per (class, predicted class)
    rows = sum(c.rows for c in cells)
    classes = {c.truth for c in cells} | {c.predicted for c in cells}
    hits = {k: sum(c.rows for c in cells if c.truth == c.predicted == k) for k in classes}
    true = {k: sum(c.rows for c in cells if c.truth == k) for k in classes}
    predicted = {k: sum(c.rows for c in cells if c.predicted == k) for k in classes}
    f1 = [2 * hits[k] / (true[k] + predicted[k]) for k in classes if true[k]]  # classes the test holds
    return {"accuracy": sum(hits.values()) / rows, "macro_f1": sum(f1) / len(f1),
            "log_loss": sum(c.loss for c in cells) / rows, "test_rows": rows}


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
