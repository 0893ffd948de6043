"""train-mllib: an MLlib Pipeline from config, tuned, judged on a holdout, stored as a version.

The feature table is read at one pinned Delta version and split by `holdout`, so a run
can be repeated exactly. Rows whose label is unknown (null or NaN: events whose outcome
has not come yet) stay in the table for `score` but are left out of fitting, tuning and
the metrics; the result says how many. The model store keeps every run; nothing is
overwritten. The xgboost types are xgboost.spark's estimators (pyspark.ml ones, trained
across Spark tasks) in the same Pipeline, so tuning, storing, scoring and MLflow treat
them as they treat MLlib's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial

from pyspark.ml import Estimator, Model, Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression, RandomForestClassifier
from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    ClusteringEvaluator,
    Evaluator,
    MulticlassClassificationEvaluator,
    RegressionEvaluator,
)
from pyspark.ml.feature import OneHotEncoder, StandardScaler, VectorAssembler
from pyspark.ml.regression import GBTRegressor, LinearRegression
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkml_ext import lake, modelstore, tracking
from sparkml_ext.config import ConfigError, PipelineConfig, TrainMllibConfig, fingerprint
from sparkml_ext.encoders import FrequencyEncoder
from sparkml_ext.feature_spec import feature_columns, spec_fingerprint
from sparkml_ext.feature_table import processed_version
from sparkml_ext.holdout import (
    CLASS,
    CLASSIFICATION,
    CLUSTERING,
    MULTICLASS,
    REGRESSION,
    SPLITS,
    TrainError,
    bayes_optimal_auc,
    class_index,
    classifier_task,
    evaluate,
    label_classes,
    labelled_sql,
    mllib_score,
    require_label,
    resolve_split,
)
from sparkml_ext.session import cached
from sparkml_ext.stage_columns import fit_columns


def _xgboost(name: str) -> Estimator:
    """An xgboost.spark estimator: xgboost is an optional extra, imported only where a run
    uses it (an ImportError names the missing module; `_check_params` turns it into advice)."""
    from xgboost import spark as xgboost_spark

    return getattr(xgboost_spark, name)()


ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "logistic_regression": LogisticRegression,
    "gbt": GBTClassifier,
    "random_forest": RandomForestClassifier,
    "linear_regression": LinearRegression,
    "gbt_regression": GBTRegressor,
    "kmeans": KMeans,
    "xgboost": partial(_xgboost, "SparkXGBClassifier"),
    "xgboost_regression": partial(_xgboost, "SparkXGBRegressor"),
}
TASKS = {  # what each model does (a classifier's task is binary or MULTICLASS by its label)
    "logistic_regression": CLASSIFICATION,
    "gbt": CLASSIFICATION,
    "random_forest": CLASSIFICATION,
    "linear_regression": REGRESSION,
    "gbt_regression": REGRESSION,
    "kmeans": CLUSTERING,
    "xgboost": CLASSIFICATION,
    "xgboost_regression": REGRESSION,
}
LINEAR = {"logistic_regression", "linear_regression"}
XGBOOST = {"xgboost", "xgboost_regression"}


def train_mllib(spark: SparkSession, cfg: PipelineConfig) -> dict:
    """Fit, tune, evaluate and store one model; returns its card."""
    started = time.monotonic()
    tracker = tracking.Tracker(cfg, "train-mllib")
    _check_params(cfg.train_mllib, cfg.path)
    tm, key = cfg.train_mllib.chosen(), cfg.source.key
    label = tm.label or cfg.features.label
    table = cfg.table_path("features")
    try:
        data, version = lake.read_version(spark, table, tm.feature_version)
    except FileNotFoundError:
        raise TrainError(f"no feature table at {table}: run `sparkml-ext features` first") from None
    processed_version(spark, table, spec_fingerprint(cfg.features), cfg.path)  # same spec and code
    task, supervised, classes = TASKS[tm.model], TASKS[tm.model] != CLUSTERING, None
    if supervised:
        require_label(data, label, tm.model, numeric=task == REGRESSION)
    labelled = labelled_sql(label) if supervised else "true"
    split = resolve_split(data, cfg, labelled)
    data = data.withColumn("_split", split.of()).withColumn("_labelled", F.expr(labelled))
    if tm.sample_fraction < 1.0:
        data = data.where(F.pmod(F.xxhash64(key, F.lit("sample")), 10_000) < tm.sample_fraction * 10_000)
    target = label  # the column MLlib learns: a classifier's class index, else the label itself
    if task == CLASSIFICATION:  # MLlib learns class indexes 0, 1, ...: any label values map to them
        classes = label_classes(data, label, labelled, tm.model)
        task, target = classifier_task(classes), CLASS
        data = data.withColumn(CLASS, class_index(label, classes))
        if task == MULTICLASS and tm.model == "gbt":
            raise TrainError(f"label column {label!r} has {len(classes)} classes; "
                             "gbt (MLlib's GBTClassifier) is binary only: use random_forest or "
                             "logistic_regression (train_mllib.model)")

    pipeline, evaluator = build_pipeline(cfg, target, task)
    grid = _param_grid(pipeline.getStages()[-1], tm)
    groups = data.groupBy("_split", "_labelled").count().collect()  # driver-ok: at most 6 rows
    counts = {r["_split"]: r["count"] for r in groups if r["_labelled"]}
    unlabelled = sum(r["count"] for r in groups if not r["_labelled"])
    needed = SPLITS if tm.search == "train_validation_split" else ("train", "test")  # CV folds its own
    if any(counts.get(split, 0) == 0 for split in needed):
        raise TrainError(f"feature table {table} v{version} has too few labelled rows to split "
                         f"({counts}, {unlabelled} unlabelled)")
    data = data.where("_labelled")

    fitted_at = time.monotonic()
    model, search = _search(pipeline, grid, evaluator, data.where(F.col("_split").isin("train", "validation")),
                            tm, key)
    fit_seconds = round(time.monotonic() - fitted_at, 1)
    test = data.where(F.col("_split") == "test")
    metrics = evaluate_model(model, test, task, target)
    optimum = bayes_optimal_auc(spark, cfg, test, target) if task == CLASSIFICATION else None
    if optimum is not None:
        metrics["bayes_optimal_auc"] = optimum

    card = {
        "model": tm.model,
        "task": task,
        "feature_table": table,
        "feature_version": version,
        "label": label,
        **({"classes": classes} if classes else {}),  # a prediction is an index into them
        "holdout": split.card(),
        "rows": {**counts, "unlabelled": unlabelled},
        "config_hash": config_hash(cfg),
        "params": dict(tm.params),
        "search": search,
        "metrics": metrics,
        "timings": {"fit_seconds": fit_seconds, "total_seconds": round(time.monotonic() - started, 1)},
        "created_unix": time.time(),
    }
    staged = modelstore.staging(cfg.table_path("models"), tm.model)
    model.write().save(f"{staged}/model")
    return tracker.store(card, asdict(tm), staged, lambda run: run.log_spark_model(model, test))


def build_pipeline(cfg: PipelineConfig, label: str, task: str) -> tuple[Pipeline, Evaluator]:
    """Encoders and assembler suited to the model type, the estimator last, and the
    evaluator that picks a grid point for the task."""
    tm, columns = cfg.train_mllib.chosen(), feature_columns(cfg.features)
    numeric, raw = columns["numeric"], columns["categorical_raw"]
    estimator = ESTIMATORS[tm.model]()
    if tm.model == "kmeans":
        _set_params(estimator, tm.params)
        stages = [
            VectorAssembler(inputCols=numeric, outputCol="numeric_vector"),
            StandardScaler(inputCol="numeric_vector", outputCol="features", withMean=True),
        ]
        return Pipeline(stages=[*stages, estimator]), ClusteringEvaluator()

    ids = [f"{c}_freq" for c in raw]
    # a table without categoricals (all measurements) has no vocabulary to learn
    stages = [FrequencyEncoder(inputCols=raw, outputCols=ids, maxCategories=tm.max_categories)] if raw else []
    if tm.model in LINEAR:
        # Scale the numerics once and leave the one-hot columns as they are: the estimator's
        # own standardization would blow rare categories up into huge, overfitting weights.
        hot = [f"{c}_hot" for c in raw]
        stages += [
            VectorAssembler(inputCols=numeric, outputCol="numeric_vector"),
            StandardScaler(inputCol="numeric_vector", outputCol="numeric_scaled", withMean=True),
            *([OneHotEncoder(inputCols=ids, outputCols=hot, dropLast=False, handleInvalid="keep")] if raw else []),
            VectorAssembler(inputCols=["numeric_scaled", *hot], outputCol="features"),
        ]
        estimator.set(estimator.standardization, False)
    elif tm.model in XGBOOST:
        # xgboost splits the frequency ids as categories of its own (feature_types "c": a
        # partition of the ids, not one threshold on their order), the numerics as numbers.
        stages.append(VectorAssembler(inputCols=numeric + ids, outputCol="features"))
        estimator.set(estimator.getParam("feature_types"), ["q"] * len(numeric) + ["c"] * len(ids))
        estimator.set(estimator.getParam("num_workers"), _task_slots())
        estimator.set(estimator.getParam("verbose"), False)  # no log line per boosting round
    else:
        # Trees split the frequency ids as categories (nominal attributes, a bin per id).
        # Target encoding fitted on the training rows would leak: a value seen once
        # encodes its own label, and a tree splits on that.
        stages.append(VectorAssembler(inputCols=numeric + ids, outputCol="features"))
        estimator.setMaxBins(max(estimator.getMaxBins(), tm.max_categories + 1))
    estimator.set(estimator.labelCol, label)
    _set_params(estimator, tm.params)
    if tm.model in XGBOOST:
        _check_workers(estimator, cfg.path)
    if task == CLASSIFICATION:
        evaluator = BinaryClassificationEvaluator(labelCol=label, metricName="areaUnderROC")
    elif task == MULTICLASS:
        evaluator = MulticlassClassificationEvaluator(labelCol=label, metricName="logLoss")
    else:
        evaluator = RegressionEvaluator(labelCol=label, metricName="rmse")
    return Pipeline(stages=[*stages, estimator]), evaluator


def _check_params(tm: TrainMllibConfig, file: str) -> None:
    """Refuse a param name its estimator lacks, in every model type's entry and in the
    overrides, before anything is read or fitted: a typo fails the run that meets it first."""
    named = [(tm.model, "model", {})]  # the chosen type's package must import, params or not
    named += [(model, f"models.{model}.{what}", getattr(entry, what))
              for model, entry in tm.models.items() for what in ("params", "grid")]
    named += [(tm.model, what, getattr(tm, what)) for what in ("params", "grid")
              if getattr(tm, what) is not None]
    for model, where, values in named:
        try:
            estimator = ESTIMATORS[model]()
        except ImportError as err:
            if model != tm.model:
                continue  # another type's entry: checked where a run chooses it (and has its package)
            raise ConfigError(f"{file}: train_mllib.model: {model} needs the {err.name} package, which "
                              f"cannot be imported ({err}): pip install 'sparkml-ext[xgboost]'") from None
        for name in values:
            if not estimator.hasParam(name):
                raise ConfigError(f"{file}: train_mllib.{where}.{name}: "
                                  f"{type(estimator).__name__} has no such parameter")


def _task_slots() -> int:
    """The tasks Spark can run at once now (xgboost.spark's own count of them): its default
    num_workers. xgboost trains in one barrier stage of num_workers tasks, which starts only
    when all of them can run together; at least 1, for a cluster whose executors come later."""
    from xgboost.spark.utils import _get_max_num_concurrent_tasks

    return max(1, _get_max_num_concurrent_tasks(SparkSession.active().sparkContext))


def _check_workers(estimator: Estimator, file: str) -> None:
    """Refuse more xgboost workers than local Spark has task slots: the barrier stage would
    wait for them forever (a cluster may still add executors, so there it only waits)."""
    workers, slots = estimator.getOrDefault("num_workers"), _task_slots()
    if workers > slots and SparkSession.active().sparkContext.master.startswith("local"):
        raise ConfigError(f"{file}: train_mllib.params.num_workers: {workers} is more than the {slots} "
                          "task slots of this local Spark; xgboost's barrier stage would never start")


def _set_params(estimator: Estimator, params: dict) -> None:
    for name, value in params.items():
        estimator.set(estimator.getParam(name), value)


def _param_grid(estimator: Estimator, tm: TrainMllibConfig) -> list[dict]:
    builder = ParamGridBuilder()
    for name, values in tm.grid.items():
        builder.addGrid(estimator.getParam(name), values)
    return builder.build()


def _search(
    pipeline: Pipeline, grid: list[dict], evaluator: Evaluator, data: DataFrame, tm, key: str
) -> tuple[PipelineModel, dict]:
    """Pick the best grid point on the validation rows (or hash folds)."""
    if tm.search == "cross_validator":
        fold = F.pmod(F.xxhash64(F.col(key), F.lit("fold")), F.lit(tm.folds)).cast("int")
        cv = CrossValidator(estimator=pipeline, estimatorParamMaps=grid, evaluator=evaluator,
                            foldCol="_fold", numFolds=tm.folds, parallelism=tm.parallelism)
        with cached(data.withColumn("_fold", fold)) as folds:
            fitted = cv.fit(folds)
        return fitted.bestModel, {"kind": "cross_validator", "folds": tm.folds,
                                  "scores": [float(s) for s in fitted.avgMetrics], "grid": _grid_text(grid)}

    # The grid varies the estimator only, so the stages before it (encoders, assembler) are
    # fitted once, on the training rows, and only the columns the estimator reads are cached
    # from their output: each grid point's passes (a GBT makes one per tree level) then read
    # assembled vectors, not the feature table through the encoders' lookups (a GBT fit took
    # half the time, benchmarks/README.md).
    *stages, estimator = pipeline.getStages()
    prepared = Pipeline(stages=stages).fit(data.where(F.col("_split") == "train"))
    encoded = prepared.transform(data)
    read = fit_columns(estimator)
    with cached(encoded.select(*[c for c in encoded.columns if c in read], "_split")) as inputs:
        train = inputs.where(F.col("_split") == "train")
        validation = inputs.where(F.col("_split") == "validation")

        def fit_and_score(params: dict) -> tuple[float, Model]:
            model = estimator.fit(train, params)
            return float(evaluator.evaluate(model.transform(validation))), model

        with ThreadPoolExecutor(max_workers=max(1, tm.parallelism)) as pool:
            results = list(pool.map(fit_and_score, grid or [{}]))
    scores = [score for score, _ in results]
    best = (max if evaluator.isLargerBetter() else min)(range(len(results)), key=scores.__getitem__)
    model = PipelineModel(stages=[*prepared.stages, results[best][1]])
    return model, {"kind": "train_validation_split", "scores": scores, "grid": _grid_text(grid), "best": best}


def _grid_text(grid: list[dict]) -> list[dict]:
    return [{p.name: v for p, v in point.items()} for point in grid]


def evaluate_model(model: PipelineModel, test: DataFrame, task: str, label: str) -> dict:
    """`holdout.evaluate` of the model on the test rows; a clustering also reports its k."""
    metrics = evaluate(model.transform(test).withColumn("score", mllib_score(task)), task, label)
    if task == CLUSTERING:
        metrics["k"] = len(model.stages[-1].clusterCenters())
    return metrics


def config_hash(cfg: PipelineConfig) -> str:
    """What fixes the trained model: the feature spec and train_mllib's settings for its type."""
    return fingerprint({"features": asdict(cfg.features), "train_mllib": asdict(cfg.train_mllib.chosen())})
