"""The chain generate → ingest → features → train-mllib → score on small data, real Spark + Delta;
MLlib's models and xgboost.spark's."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import mlflow
import pytest
from clickdata import CLICKS, as_events, clicks_config
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from shipping import run_cli

from sparkml_ext import lake, modelstore
from sparkml_ext.cli import EXIT_CONFIG, EXIT_OK
from sparkml_ext.config import ConfigError
from sparkml_ext.feature_spec import feature_columns
from sparkml_ext.holdout import CLASSIFICATION, TrainError, card_split
from sparkml_ext.online.publish import publish_online
from sparkml_ext.online.scorer import Scorer
from sparkml_ext.online.store import SQLiteStore
from sparkml_ext.score import score
from sparkml_ext.stage_columns import pipeline_inputs
from sparkml_ext.train_mllib import evaluate_model, train_mllib

pytestmark = pytest.mark.slow
FAST = ["train_mllib.params={maxIter: 5, seed: 7}", "train_mllib.grid={maxDepth: [2, 3]}"]


@pytest.fixture(scope="module")
def lakehouse(fresh_lake):
    return fresh_lake("chain")


def with_unread_column(frame: DataFrame, reader: str) -> DataFrame:
    """`frame` with a column that fails the job when computed: `reader` must not compute it."""
    return frame.withColumn("unread", F.raise_error(F.lit(f"{reader} computed a column it does not read")))


def test_gbt_is_stored_reloads_and_scores_idempotently(spark, lakehouse):
    cfg = clicks_config(lakehouse, *FAST)
    card = train_mllib(spark, cfg)
    assert card["model_version"] == "gbt/v1" and card["feature_version"] == 0
    metrics = card["metrics"]
    assert 0.55 < metrics["auc_roc"] <= 1 and 0 < metrics["log_loss"] < 1
    assert 0.6 < metrics["bayes_optimal_auc"] < 0.95
    assert len(card["search"]["scores"]) == 2
    stored = json.loads(Path(card["model_uri"].removeprefix("file:"), "metrics.json").read_text())
    assert stored == metrics

    # The split is out of time by default: the test events come after every training event.
    split = card_split(card, "event_id")
    assert card["holdout"]["by"] == "time" and card["holdout"]["test_from"].startswith("20")
    pinned = spark.read.format("delta").option("versionAsOf", card["feature_version"]).load(cfg.table_path("features"))
    span = {r.split: (r.first, r.last) for r in pinned.groupBy(split.of().alias("split")).agg(
        F.min("event_time").alias("first"), F.max("event_time").alias("last")).collect()}
    assert span["train"][1] < span["validation"][0] <= span["validation"][1] < span["test"][0]

    # The reloaded model, on the same pinned version and split, gives the stored metrics.
    reloaded = PipelineModel.load(f"{card['model_uri']}/model")
    again = evaluate_model(reloaded, pinned.where(split.of() == "test"), CLASSIFICATION, "label")
    assert again["log_loss"] == pytest.approx(metrics["log_loss"], abs=1e-12)
    assert again["auc_roc"] == pytest.approx(metrics["auc_roc"], abs=1e-12)
    # Only what the metrics read is computed: a column that fails when computed goes untouched.
    unread = with_unread_column(pinned.where(split.of() == "test"), "evaluate")
    assert evaluate_model(reloaded, unread, CLASSIFICATION, "label")["auc_roc"] == pytest.approx(again["auc_roc"], abs=1e-12)

    first = score(spark, cfg, "gbt/v1")
    predictions = spark.read.format("delta").load(cfg.table_path("predictions"))
    rows = predictions.count()
    assert rows == first["rows"] == spark.read.format("delta").load(cfg.table_path("features")).count()
    score(spark, cfg, "gbt/v1")
    assert spark.read.format("delta").load(cfg.table_path("predictions")).count() == rows

    second = train_mllib(spark, clicks_config(lakehouse, *FAST[:1], "train_mllib.grid={}"))  # one fit
    assert second["model_version"] == "gbt/v2"
    assert [v.name for v in modelstore.versions(cfg.table_path("models"), "gbt")] == ["gbt/v1", "gbt/v2"]


@pytest.mark.parametrize(
    "model, overrides, metric",
    [
        # a weight column reaches the search's cached inputs (they hold only what the estimator names)
        ("random_forest", ["train_mllib.params={numTrees: 5, maxDepth: 3, weightCol: user_id_events_7d}",
                           "train_mllib.grid={}", "holdout.by=hash"], "auc_roc"),
        ("gbt_regression", ["train_mllib.label=log_i5", "train_mllib.params={maxIter: 3}", "train_mllib.grid={}"], "rmse"),
        ("linear_regression", ["train_mllib.label=log_i5", "train_mllib.params={}", "train_mllib.grid={regParam: [0.0, 0.1]}"], "r2"),
        ("kmeans", ["train_mllib.params={k: 3, seed: 1}", "train_mllib.grid={}"], "silhouette"),
    ],
)
def test_each_model_type_trains(spark, lakehouse, model, overrides, metric, monkeypatch):
    """(The logistic regression trains in the README example's test below.) Only what a
    model reads is computed: a feature-table column that fails when computed goes untouched
    (a cache of whole rows would compute it)."""
    cfg = clicks_config(lakehouse, f"train_mllib.model={model}", *overrides)
    read_version = lake.read_version

    def with_tripwire(spark, path, version=None):
        table, pinned = read_version(spark, path, version)
        return (with_unread_column(table, "train-mllib") if path == cfg.table_path("features") else table), pinned

    monkeypatch.setattr(lake, "read_version", with_tripwire)
    card = train_mllib(spark, cfg)
    assert card["model_version"].startswith(f"{model}/v")
    assert metric in card["metrics"]
    assert card["holdout"]["by"] == ("hash" if "holdout.by=hash" in overrides else "time")


def test_the_readme_example_switches_the_model_with_its_own_params(spark, lakehouse):
    """The README's `--set` on the shipped file, verbatim: the chosen type's own entry is
    used, not the GBT's params (issue 19: "LogisticRegression has no such parameter")."""
    example = re.search(r"sparkml-ext train-mllib --set (\S+)", Path("README.md").read_text())
    assert example and example.group(1) == "train_mllib.model=logistic_regression"
    # the entry's own params, with fewer iterations: the file's 100 cost a minute of CPU here
    cfg = clicks_config(lakehouse, example.group(1), "train_mllib.models.logistic_regression.params={maxIter: 10}")
    card = train_mllib(spark, cfg)
    assert card["model_version"].startswith("logistic_regression/v")
    assert card["params"] == cfg.train_mllib.models["logistic_regression"].params
    assert len(card["search"]["scores"]) == len(cfg.train_mllib.models["logistic_regression"].grid["regParam"])
    assert 0.55 < card["metrics"]["auc_roc"] <= 1


def test_cross_validator_on_hash_folds(spark, lakehouse):
    card = train_mllib(spark, clicks_config(lakehouse, "train_mllib.search=cross_validator", "train_mllib.folds=2",
                                            *FAST[:1], "train_mllib.grid={maxDepth: [2]}"))
    assert card["search"]["kind"] == "cross_validator" and card["search"]["folds"] == 2
    assert len(card["search"]["scores"]) == 1  # one grid point, its mean over the two folds


def test_bad_requests_are_clear_and_write_nothing(spark, lakehouse, tmp_path):
    with pytest.raises(ConfigError, match="train_mllib.model: 'deep_forest' is not one of"):
        clicks_config(lakehouse, "train_mllib.model=deep_forest")
    with pytest.raises(ConfigError, match="train_mllib.params.maxDepht: GBTClassifier has no such parameter"):
        train_mllib(spark, clicks_config(lakehouse, "train_mllib.params={maxDepht: 3}"))
    with pytest.raises(ConfigError, match="clicks.yaml: train_mllib.models.logistic_regression.grid.maxDepth: "
                                          "LogisticRegression has no such parameter"):
        train_mllib(spark, clicks_config(lakehouse, "train_mllib.models.logistic_regression.grid={maxDepth: [2]}"))
    with pytest.raises(ConfigError, match="train_mllib.models.deep_forest: not a model type"):
        clicks_config(lakehouse, "train_mllib.models.deep_forest={params: {}}")
    with pytest.raises(ConfigError, match="features: the feature spec changed since"):
        train_mllib(spark, clicks_config(lakehouse, "features.clip=5"))
    with pytest.raises(TrainError, match="label column 'c1' has type string; linear_regression needs a numeric"):
        train_mllib(spark, clicks_config(lakehouse, "train_mllib.label=c1", "train_mllib.model=linear_regression"))
    with pytest.raises(TrainError, match=r"label column 'c1' has \d+ classes; gbt \(MLlib's GBTClassifier\) is "
                                         "binary only: use random_forest or logistic_regression"):
        train_mllib(spark, clicks_config(lakehouse, "train_mllib.label=c1"))
    with pytest.raises(TrainError, match="no feature table .* run `sparkml-ext features` first"):
        train_mllib(spark, clicks_config(tmp_path))
    empty = clicks_config(tmp_path)
    spark.read.format("delta").load(clicks_config(lakehouse).table_path("features")).limit(0).write.format("delta").save(
        empty.table_path("features"))
    with pytest.raises(TrainError, match="too few labelled rows to split"):
        train_mllib(spark, empty)
    assert modelstore.versions(empty.table_path("models"), "gbt") == []
    assert lake.current_version(spark, empty.table_path("predictions")) is None


# xgboost.spark as a train_mllib model (issue 20), on this module's lakehouse: trained and
# tuned through `sparkml-ext train-mllib`, stored, scored by `sparkml-ext score` from the
# stored PipelineModel, logged to MLflow; a few boosting rounds.
XGB_SMALL = ["--set=train_mllib.params={n_estimators: 5, random_state: 7}", "--set=train_mllib.grid={max_depth: [2, 3]}"]


def _cli(job: str, root: Path, *sets: str) -> tuple[int, dict | None, str]:
    """`sparkml-ext <job> --json` on the click demo under `root`: exit code, report, stderr."""
    where = [f"--pipeline={CLICKS}", f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing"]
    code, printed, err = run_cli(job, *where, *sets, "--json")
    return code, json.loads(printed[printed.index("\n{") + 1:]) if code == EXIT_OK else None, err


def test_xgboost_is_tuned_tracked_stored_and_scored(spark, lakehouse):
    tracked = ["--set=tracking.mode=auto", "--set=tracking.uri=", "--set=tracking.registered_model=clicks_{model}"]
    code, card, err = _cli("train-mllib", lakehouse, "--set=train_mllib.model=xgboost", *XGB_SMALL, *tracked)
    assert code == EXIT_OK, err[-3000:]
    assert card["model_version"] == "xgboost/v1" and card["task"] == "classification"
    assert card["classes"] == [0, 1] and len(card["search"]["scores"]) == 2
    assert card["search"]["grid"] == [{"max_depth": 2}, {"max_depth": 3}]
    assert 0.55 < card["metrics"]["auc_roc"] <= 1 and 0 < card["metrics"]["log_loss"] < 1

    # The stored model: the frequency ids are xgboost's categorical features.
    stored = PipelineModel.load(f"{card['model_uri']}/model")
    booster = stored.stages[-1].get_booster()
    columns = feature_columns(clicks_config(lakehouse).features)
    assert booster.feature_types == ["q"] * len(columns["numeric"]) + ["c"] * len(columns["categorical_raw"])

    # Logged to MLflow with xgboost among its requirements; loaded back, it predicts as stored.
    mlflow.set_tracking_uri(f"sqlite:///{lakehouse}/lake/mlflow.db")
    run = mlflow.MlflowClient().get_run(card["mlflow"]["run_id"])
    assert run.data.params["params.n_estimators"] == "5" and run.data.tags["model_store_version"] == "xgboost/v1"
    assert card["mlflow"]["registered"] == {"name": "clicks_xgboost", "version": 1}
    requirements = Path(mlflow.pyfunc.get_model_dependencies(card["mlflow"]["model_uri"])).read_text()
    assert "xgboost==3.2.0" in requirements.split()
    features = spark.read.format("delta").load(clicks_config(lakehouse).table_path("features"))
    rows = features.orderBy("event_id").limit(7).select(*pipeline_inputs(stored))
    predicted = list(mlflow.pyfunc.load_model("models:/clicks_xgboost/1").predict(rows.toPandas()))
    assert predicted == [r.prediction for r in stored.transform(rows).select("prediction").collect()]

    code, report, err = _cli("score", lakehouse, "--model=xgboost/v1")
    assert code == EXIT_OK, err[-3000:]
    predictions = (spark.read.format("delta").load(clicks_config(lakehouse).table_path("predictions"))
                   .where("model = 'xgboost/v1'"))
    assert report["rows"] == predictions.count() == features.count()
    assert predictions.where("score < 0 OR score > 1 OR predicted_class IS NULL").count() == 0

    # Served without Spark (its stages read from their files): the batch job's scores.
    cfg = clicks_config(lakehouse, "online.late_tolerance=30d")
    publish_online(spark, cfg)
    bronze = spark.read.format("delta").load(cfg.table_path("bronze")).orderBy("event_id").limit(300)
    online = Scorer(cfg, "xgboost/latest", SQLiteStore(cfg.online_store())).score(as_events(bronze.collect()))
    batch = {r.event_id: (r.score, r.prediction) for r in predictions.collect()}
    assert online["model"] == "xgboost/v1" and len(online["predictions"]) == 300
    for p in online["predictions"]:
        assert abs(p["score"] - batch[p["key"]][0]) <= 1e-6 and p["prediction"] == batch[p["key"]][1], p


def test_xgboost_regression_on_a_continuous_column(spark, lakehouse):
    code, card, err = _cli("train-mllib", lakehouse, "--set=train_mllib.model=xgboost_regression",
                          "--set=train_mllib.label=log_i5", *XGB_SMALL[:1], "--set=train_mllib.grid={}")
    assert code == EXIT_OK, err[-3000:]
    assert card["model_version"] == "xgboost_regression/v1" and card["task"] == "regression"
    assert card["metrics"]["rmse"] > 0 and "classes" not in card


def test_bad_xgboost_settings_name_the_key(spark, lakehouse, monkeypatch):
    code, _, err = _cli("train-mllib", lakehouse, "--set=train_mllib.model=xgboost",
                       "--set=train_mllib.params={max_dpth: 3}")
    assert code == EXIT_CONFIG
    assert "clicks.yaml: train_mllib.params.max_dpth: SparkXGBClassifier has no such parameter" in err
    code, _, err = _cli("train-mllib", lakehouse, "--set=train_mllib.model=xgboost",
                       "--set=train_mllib.params={num_workers: 64}")
    assert code == EXIT_CONFIG and "train_mllib.params.num_workers: 64 is more than the 2 task slots" in err
    monkeypatch.setitem(sys.modules, "xgboost", None)  # as where the extra is not installed
    with pytest.raises(ConfigError, match=r"clicks.yaml: train_mllib.model: xgboost needs the xgboost package"):
        train_mllib(spark, clicks_config(lakehouse, "train_mllib.model=xgboost"))
