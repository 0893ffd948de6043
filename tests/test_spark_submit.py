"""End to end as a user runs it: spark-submit with the local profile, twice."""

from __future__ import annotations

import pytest
from clickdata import line, write_batch
from shipping import report_of, submit

pytestmark = pytest.mark.slow


def test_ingest_via_spark_submit_is_idempotent(tmp_path):
    write_batch(tmp_path / "landing" / "b1", [line(f"e{i}") for i in range(30)] + ["garbage line"])
    where = [f"--set=lakehouse={tmp_path}/lake", f"--set=source.path={tmp_path}/landing", "--json"]

    first = report_of(submit("ingest", "--batch-id", "b1", *where))
    assert (first["rows_read"], first["accepted"], first["quarantined"]) == (31, 30, 1)
    assert first["accepted"] + first["quarantined"] == first["rows_read"]
    second = report_of(submit("ingest", "--batch-id", "b1", *where))
    assert second["already_ingested"] is True
    assert second["accepted"] == 30 and second["versions"] == first["versions"]

    missing = submit("ingest", "--batch-id", "b-absent", *where)
    assert missing.returncode == 3
    # spark-submit merges the Python driver's stderr into its own stdout.
    assert "b-absent does not exist; nothing was written" in missing.stdout


def test_broken_config_exits_2_naming_the_key(tmp_path):
    result = submit("ingest", "--batch-id", "b1", "--set", "generate.rows=lots")
    assert result.returncode == 2
    assert "conf/pipelines/clicks.yaml: generate.rows: expected int" in result.stdout


def test_mllib_chain_via_spark_submit_and_reruns_change_nothing(spark, tmp_path):
    """generate → ingest → features → train-mllib → score, each its own spark-submit."""
    where = [f"--set=lakehouse={tmp_path}/lake", f"--set=generate.landing={tmp_path}/landing",
             f"--set=source.path={tmp_path}/landing", "--set=generate.malformed_rate=0.01", "--json"]
    fast = ["--set=train_mllib.params={maxIter: 3}", "--set=train_mllib.grid={}"]

    generated = report_of(submit("generate", "--rows", "4000", "--batches", "1", *where))
    ingested = report_of(submit("ingest", "--batch-id", "batch-00000", *where))
    assert ingested["accepted"] + ingested["quarantined"] == ingested["rows_read"] == generated["rows"]
    assert ingested["quarantined"] == generated["malformed"] > 0

    features = report_of(submit("features", *where))
    assert features["rows_merged"] == ingested["accepted"] and features["feature_version"] == 0
    card = report_of(submit("train_mllib", *where, *fast))
    assert card["model_version"] == "gbt/v1" and card["feature_version"] == 0
    assert 0.5 < card["metrics"]["auc_roc"] <= card["metrics"]["bayes_optimal_auc"] + 0.05
    scored = report_of(submit("score", "--model", "gbt/v1", *where))
    assert scored["rows"] == ingested["accepted"]

    assert report_of(submit("features", *where))["feature_version"] is None  # nothing new
    again = report_of(submit("score", "--model", "gbt/v1", *where))
    assert again["predictions_version"] == scored["predictions_version"] + 1  # replaced, not appended
    predictions = spark.read.format("delta").load(again["predictions_table"])
    assert predictions.count() == predictions.select("event_id").distinct().count() == ingested["accepted"]
