"""train-torch and torch scoring on a small lakehouse: real Spark, Delta, TorchDistributor, DDP."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from clickdata import clicks_config
from pyspark.sql import functions as F

from sparkml_ext.bridge.predict import predictor, torch_predictions
from sparkml_ext.config import ConfigError
from sparkml_ext.deep.model import load_model
from sparkml_ext.holdout import CLASSIFICATION, card_split, evaluate, hash_split, labelled_sql
from sparkml_ext.score import score
from sparkml_ext.train_torch import TorchTrainError, _head, train_torch, worker_config

pytestmark = pytest.mark.slow
SMALL = ["train_torch.epochs=2", "train_torch.batch_size=128", "train_torch.embedding_rows=1024",
         "train_torch.checkpoint_every=5"]


def small(root: Path, *overrides: str):
    """clicks.yaml under `root` with train-torch's knobs cut to a seconds-long run."""
    return clicks_config(root, *SMALL, *overrides)


@pytest.fixture(scope="module")
def trained(spark, fresh_lake):
    """The session's small lakehouse and one train-torch run on it (2 ranks, local mode)."""
    root = fresh_lake("torch")
    return root, train_torch(spark, small(root))


def _files(folder: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.is_file()}


@pytest.mark.parametrize("by", ["time", "hash"])
def test_the_export_filter_selects_the_rows_of_the_split(spark, trained, by):
    """`Split.only` (the shard export's filter) and `Split.of` (a DataFrame's column) agree."""
    root, card = trained
    features = spark.read.format("delta").load(small(root).table_path("features"))
    split = card_split(card, "event_id") if by == "time" else hash_split("event_id")
    assert split.by == by
    splits = ("train", "validation", "test")
    groups = features.groupBy(
        split.of().alias("split"), *[F.expr(split.only(s)).alias(s) for s in splits]
    ).count().collect()
    assert sorted(g.split for g in groups) == sorted(splits)  # each split has rows, one group each
    for group in groups:
        assert [group[s] for s in splits] == [s == group.split for s in splits]


def test_train_torch_stores_a_model_that_reloads_with_weights_only(spark, trained):
    root, card = trained
    cfg = small(root)
    assert card["model_version"] == "torch/v1" and card["feature_version"] == 0
    assert card["training"]["world_size"] == 2 and card["training"]["resumed_from_step"] == 0
    assert [a["error"] for a in card["attempts"]] == [None]
    assert len(card["epochs"]["val_auc"]) == 2 and card["params"]["vocabulary"] == 200
    losses = card["epochs"]
    assert losses["train_loss"][1] < losses["train_loss"][0] and losses["val_loss"][-1] < 0.65
    metrics = card["metrics"]
    assert metrics["val_auc"] == card["epochs"]["val_auc"][-1]
    assert 0.3 < metrics["auc_roc"] <= 1 and 0 < metrics["log_loss"] < 1.5
    assert 0.6 < metrics["bayes_optimal_auc"] < 0.95
    assert card["rows"]["train"] + card["rows"]["validation"] + card["rows"]["test"] == \
        spark.read.format("delta").load(cfg.table_path("features")).count()
    stored = Path(card["model_uri"])
    assert json.loads((stored / "metrics.json").read_text()) == metrics
    assert json.loads((stored / "card.json").read_text())["config_hash"] == card["config_hash"]

    saved = torch.load(stored / "model.pt", weights_only=True)
    assert set(saved) == {"state_dict", "config"}
    config = load_model(stored / "model.pt")[1]
    vocabularies = config["model"]["vocabularies"]
    assert len(vocabularies) == len(config["columns"]["categorical"]) == 26
    assert config["model"]["embedding_sizes"] == [len(v) + 1 for v in vocabularies]
    assert max(map(len, vocabularies)) == 200 and not config["model"]["fold_ids"]

    # The stored model, scored again on the executors, gives the card's test metrics.
    test = spark.read.format("delta").load(cfg.table_path("features")).where(card_split(card, "event_id").of() == "test")
    scored = torch_predictions(test, str(stored / "model.pt"), "event_id", keep=["label"])
    again = evaluate(scored, CLASSIFICATION, "label")
    assert again["auc_roc"] == pytest.approx(metrics["auc_roc"], abs=1e-9)
    assert again["log_loss"] == pytest.approx(metrics["log_loss"], abs=1e-6)
    assert predictor(str(stored / "model.pt")) is predictor(str(stored / "model.pt"))


def test_a_second_run_reuses_the_shards_and_resumes_the_finished_checkpoint(spark, trained):
    root, first = trained
    shards = _files(f"{root}/lake/shards")
    assert len(shards) >= 4  # two manifests and their Arrow files
    second = train_torch(spark, small(root))
    assert _files(f"{root}/lake/shards") == shards  # no export ran: nothing written or rewritten
    assert second["shards"] == first["shards"] and second["config_hash"] == first["config_hash"]
    assert second["training"]["resumed_from_step"] == first["training"]["steps"]
    assert second["model_version"] == "torch/v2"
    assert second["metrics"]["auc_roc"] == pytest.approx(first["metrics"]["auc_roc"], abs=1e-9)


def test_scoring_with_the_torch_model_writes_one_prediction_per_row_once(spark, trained):
    root, card = trained
    cfg = small(root)
    rows = spark.read.format("delta").load(cfg.table_path("features")).count()
    report = score(spark, cfg, card["model_version"])
    assert report["rows"] == rows
    score(spark, cfg, card["model_version"])
    predictions = spark.read.format("delta").load(cfg.table_path("predictions")).where(
        f"model = '{card['model_version']}'")
    assert predictions.count() == rows and predictions.select("event_id").distinct().count() == rows
    low, high, labels, named = predictions.selectExpr("min(score)", "max(score)", "collect_set(prediction)",
                                                      "collect_set(predicted_class)").head()
    assert 0 < low <= high < 1 and set(labels) <= {0.0, 1.0} and set(named) == {str(int(p)) for p in labels}


def test_refusals_name_what_to_do(spark, tmp_path):
    with pytest.raises(TorchTrainError, match="run `sparkml-ext features` first"):
        train_torch(spark, small(tmp_path))
    with pytest.raises(ConfigError, match="train_torch.embedding_rows: must be at least 2"):
        small(tmp_path, "train_torch.embedding_rows=1")
    with pytest.raises(ConfigError, match="train_torch.vocabulary: must be at least 1"):
        small(tmp_path, "train_torch.vocabulary=0")


def _jobs(spark, query) -> int:
    """How many Spark jobs `query()` runs."""
    tracker, group = spark.sparkContext.statusTracker(), f"jobs-{uuid.uuid4().hex}"
    spark.sparkContext.setJobGroup(group, "counted")
    try:
        query()
        return len(tracker.getJobIdsForGroup(group))
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)


@pytest.mark.parametrize(("labels", "head"), [
    ([0, 1, 1, None], ("binary", [0, 1])),
    ([1.0, 0.0, float("nan")], ("binary", [0.0, 1.0])),
    ([0, 1, 2], ("regression", None)),  # a number other than 0 and 1: a regression
    ([0.5, 0.5], ("regression", None)),
    (["b", "a", "c"], ("multiclass", ["a", "b", "c"])),
])
def test_the_label_decides_the_head(spark, tmp_path, labels, head):
    kind = "string" if isinstance(labels[0], str) else "double" if isinstance(labels[0], float) else "int"
    data = spark.createDataFrame([(v,) for v in labels], f"label {kind}")
    assert _head(data, small(tmp_path), labelled_sql("label")) == head


def test_a_numeric_labels_head_costs_one_aggregate(spark, tmp_path):
    """Once a query for a value other than 0 and 1, then one for the classes; now one
    aggregate: as many jobs as a count (two with adaptive execution, one without)."""
    data = spark.createDataFrame([(v,) for v in (0, 1, 1, 0)], "label int")
    cfg = small(tmp_path)
    head = _jobs(spark, lambda: _head(data, cfg, labelled_sql("label")))
    assert head == _jobs(spark, lambda: data.agg(F.count(F.lit(1))).head())


@pytest.mark.parametrize(("labels", "refusal"), [
    ([1, 1], r"has 1 distinct value\(s\) among the labelled rows \(\[1\]\)"),
    ([None], r"has 0 distinct value\(s\) among the labelled rows \(\[\]\)"),
])
def test_a_label_of_one_class_or_none_is_refused(spark, tmp_path, labels, refusal):
    data = spark.createDataFrame([(v,) for v in labels], "label int")
    with pytest.raises(TorchTrainError, match=refusal):
        _head(data, small(tmp_path), labelled_sql("label"))


def test_the_ranks_count_a_multiclass_heads_classes_only(tmp_path):
    cfg = small(tmp_path)
    assert worker_config(cfg, False, "ckpt", "multiclass", ["a", "b", "c"]).classes == 3
    assert worker_config(cfg, False, "ckpt", "binary", [0, 1]).classes == 0
    assert worker_config(cfg, False, "ckpt", "regression", None).classes == 0


def test_a_vocabulary_replaces_the_folded_tables(tmp_path):
    counted = worker_config(small(tmp_path), use_gpu=False, checkpoint_dir="ckpt", task="binary")
    assert counted.vocabulary == 200 and counted.embedding_sizes is None and not counted.fold_ids
    folded = worker_config(small(tmp_path, "train_torch.vocabulary=null"), False, "ckpt", "binary")
    assert folded.embedding_sizes == 1024 and folded.fold_ids and folded.vocabulary is None
