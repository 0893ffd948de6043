"""MLflow tracking of train-mllib and train-torch: real MLflow (SQLite store), real Spark and DDP.

One small lakehouse, one run of each job; the tracking store is then read back with
MlflowClient and the logged models are loaded back and asked to predict. Without MLflow
(made unimportable) the job still trains and stores its model.
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import pytest
from clickdata import clicks_config
from pyspark.ml import PipelineModel

from sparkml_ext.bridge.predict import torch_predictions
from sparkml_ext.config import ConfigError
from sparkml_ext.feature_spec import feature_columns
from sparkml_ext.holdout import card_split
from sparkml_ext.stage_columns import pipeline_inputs
from sparkml_ext.tracking import Tracker
from sparkml_ext.train_mllib import train_mllib
from sparkml_ext.train_torch import train_torch

pytestmark = pytest.mark.slow
SMALL = ["train_mllib.params={maxIter: 3, seed: 7}", "train_mllib.grid={maxDepth: [2, 3]}",
         "train_torch.epochs=2", "train_torch.batch_size=128", "train_torch.embedding_rows=1024",
         "tracking.registered_model=clicks_{model}", "tracking.mode=auto"]


def tracked(root: Path, *overrides: str):
    """clicks.yaml under `root`, tracked in MLflow under the lakehouse, small torch knobs."""
    return clicks_config(root, "tracking.uri=", *SMALL, *overrides)


@pytest.fixture(scope="module")
def trained(spark, fresh_lake):
    """The session's small lakehouse, one train-mllib and one train-torch run, tracked locally."""
    root = fresh_lake("tracked")
    cfg = tracked(root)
    cards = {"mllib": train_mllib(spark, cfg), "torch": train_torch(spark, cfg)}
    mlflow.set_tracking_uri(f"sqlite:///{root}/lake/mlflow.db")
    return root, cards, mlflow.MlflowClient()


def _test_rows(spark, root: Path, card: dict):
    """Seven of the test rows `card`'s model was judged on."""
    features = spark.read.format("delta").load(tracked(root).table_path("features"))
    return features.where(card_split(card, "event_id").of() == "test").orderBy("event_id").limit(7)


def _history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, metric),
                                              key=lambda m: m.step)]


def _check_run_links(client, card: dict, kind: str, job: str) -> None:
    """Run ↔ card ↔ store ↔ registry: each names the others."""
    run = client.get_run(card["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["feature_table"] == card["feature_table"] and tags["feature_table_version"] == "0"
    assert tags["model_store_version"] == card["model_version"] == f"{kind}/v1"
    assert tags["config_hash"] == card["config_hash"] and tags["job"] == job
    stored_card = json.loads(Path(card["model_uri"], "card.json").read_text())
    assert stored_card["mlflow"]["run_id"] == run.info.run_id
    logged_card = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="card.json")).read_text())
    assert logged_card["model_version"] == card["model_version"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "clicks" and "/lake/mlartifacts" in experiment.artifact_location
    registered = card["mlflow"]["registered"]
    assert registered == {"name": f"clicks_{kind}", "version": 1}
    version = client.get_model_version(registered["name"], "1")
    assert version.run_id == run.info.run_id and version.tags["model_store_version"] == f"{kind}/v1"


def test_train_mllib_run_has_params_metrics_tags_and_a_registered_spark_model(spark, trained):
    root, cards, client = trained
    card = cards["mllib"]
    run = client.get_run(card["mlflow"]["run_id"])
    params, metrics = run.data.params, run.data.metrics
    assert params["model"] == "gbt" and params["params.maxIter"] == "3"
    assert params["grid.maxDepth"] == "[2, 3]" and params["search.kind"] == "train_validation_split"
    assert metrics["auc_roc"] == pytest.approx(card["metrics"]["auc_roc"])
    assert metrics["bayes_optimal_auc"] == pytest.approx(card["metrics"]["bayes_optimal_auc"])
    assert metrics["rows_test"] == card["rows"]["test"] and metrics["fit_seconds"] > 0
    assert _history(client, run.info.run_id, "search_score") == [
        (1, pytest.approx(card["search"]["scores"][0])), (2, pytest.approx(card["search"]["scores"][1]))]
    _check_run_links(client, card, "gbt", "train-mllib")

    info = mlflow.models.get_model_info(card["mlflow"]["model_uri"])
    assert "spark" in info.flavors and info.saved_input_example_info is not None
    stored = PipelineModel.load(f"{card['model_uri']}/model")
    columns = feature_columns(tracked(root).features)
    assert info.signature.inputs.input_names() == pipeline_inputs(stored)
    assert set(info.signature.inputs.input_names()) == set(columns["numeric"] + columns["categorical_raw"])

    # The model loaded back from the registry predicts what the stored PipelineModel predicts.
    rows = _test_rows(spark, root, card)
    loaded = mlflow.pyfunc.load_model("models:/clicks_gbt/1")
    predicted = list(loaded.predict(rows.select(*pipeline_inputs(stored)).toPandas()))
    expected = [r.prediction for r in stored.transform(rows).select("prediction").collect()]
    assert predicted == expected and len(expected) == 7


def test_train_torch_run_has_epoch_history_and_a_registered_pyfunc(spark, trained):
    root, cards, client = trained
    card = cards["torch"]
    run_id = card["mlflow"]["run_id"]
    params = client.get_run(run_id).data.params
    assert params["epochs"] == "2" and params["vocabulary"] == "200"
    assert params["lr"] == str(card["params"]["lr"]) and params["backend"] == card["params"]["backend"]
    for metric in ("train_loss", "val_loss", "val_auc"):
        assert _history(client, run_id, metric) == [
            (1, pytest.approx(card["epochs"][metric][0])), (2, pytest.approx(card["epochs"][metric][1]))]
    assert client.get_run(run_id).data.metrics["auc_roc"] == pytest.approx(card["metrics"]["auc_roc"])
    _check_run_links(client, card, "torch", "train-torch")

    info = mlflow.models.get_model_info(card["mlflow"]["model_uri"])
    columns = feature_columns(tracked(root).features)
    assert info.signature.inputs.input_names() == columns["numeric"] + columns["categorical_ids"]
    assert info.saved_input_example_info is not None
    assert info.flavors["python_function"]["loader_module"] == "sparkml_ext.tracking"

    # Loaded back, it gives the probabilities that scoring on the executors gives.
    rows = _test_rows(spark, root, card)
    loaded = mlflow.pyfunc.load_model("models:/clicks_torch/1")
    predicted = loaded.predict(rows.select(*info.signature.inputs.input_names()).toPandas())
    scored = torch_predictions(rows, f"{card['model_uri']}/model.pt", "event_id").orderBy("event_id")
    assert list(predicted) == pytest.approx([r.score for r in scored.collect()], abs=1e-6)


def test_without_mlflow_the_job_says_so_once_and_trains(spark, trained, monkeypatch, caplog):
    """`import mlflow` fails (as where it is not installed): train-mllib stores a model, tracks nothing."""
    root, _, client = trained
    runs = len(client.search_runs([client.get_experiment_by_name("clicks").experiment_id]))
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = tracked(root, "train_mllib.model=logistic_regression", "train_mllib.params={maxIter: 5}",
               "train_mllib.grid={}")
    with caplog.at_level(logging.WARNING, logger="sparkml_ext.tracking"):
        card = train_mllib(spark, cfg)
    assert card["model_version"] == "logistic_regression/v1" and card["mlflow"] is None
    said = [r.getMessage() for r in caplog.records if "MLflow cannot be imported" in r.getMessage()]
    assert len(said) == 1 and "train-mllib runs untracked" in said[0]
    stored = json.loads(Path(card["model_uri"], "card.json").read_text())
    assert stored["mlflow"] is None
    monkeypatch.undo()
    assert len(client.search_runs([client.get_experiment_by_name("clicks").experiment_id])) == runs


def test_required_tracking_without_mlflow_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"clicks.yaml: tracking.mode: required, but MLflow cannot be imported"):
        Tracker(tracked(tmp_path, "tracking.mode=required"), "train-mllib")
    assert Tracker(tracked(tmp_path, "tracking.mode=disabled"), "train-mllib").mlflow is None


@pytest.mark.parametrize("override, message", [
    ("tracking.uri=mlruns", "tracking.uri: 'mlruns' is not an MLflow store URI"),
    ("tracking.registry_uri=ftp://host", "tracking.registry_uri: 'ftp://host' is not an MLflow store URI"),
    ("tracking.registered_model=clicks_{kind}", "tracking.registered_model: 'clicks_{kind}' must be"),
    ("tracking.experiment=", "tracking.experiment: must not be empty"),
    ("tracking.mode=always", "tracking.mode: 'always' is not one of auto, required, disabled"),
])
def test_bad_tracking_config_names_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=f"clicks.yaml: {message}"):
        tracked(tmp_path, override)


def test_the_logged_code_is_a_folder_even_when_the_package_was_imported_from_a_zip(tmp_path):
    """On a cluster the package arrives as `--py-files sparkml_ext.zip`; MLflow copies folders."""
    package = Path(__file__).resolve().parents[1] / "sparkml_ext"
    sources = sorted(str(p.relative_to(package.parent)) for p in package.rglob("*.py"))
    archive = tmp_path / "sparkml_ext.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for source in sources:
            zipped.write(package.parent / source, source)
    listing = ("import sys, os; sys.path.insert(0, sys.argv[1]); import sparkml_ext.tracking as t\n"
               "with t._package_folder() as p:\n"
               "    print(t.__file__); print(sorted(os.path.relpath(os.path.join(d, f), os.path.dirname(p))"
               " for d, _, fs in os.walk(p) for f in fs))")
    result = subprocess.run([sys.executable, "-P", "-c", listing, str(archive)], cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    imported_from, copied = result.stdout.splitlines()
    assert imported_from == f"{archive}/sparkml_ext/tracking.py"
    assert ast.literal_eval(copied) == sources
