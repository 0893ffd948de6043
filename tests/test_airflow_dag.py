"""The Airflow DAG with real Airflow, in its own virtual environment (`make airflow-venv`).

The DAG must import cleanly, and `airflow dags test` must run the whole pipeline through
SparkSubmitOperator against local Spark on small data; a second run of the same interval
must change nothing in the lakehouse. The two runs (tests/airflowkit.py) start in the
background when the session starts (conftest.py); these tests run last and check them.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from airflowkit import ROWS

from sparkml_ext import lake, modelstore
from sparkml_ext.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# `dags test` of logical date 2026-01-02 runs the interval [2026-01-01, 2026-01-02).
BATCH_ID = "20260101T000000-00000"

DAGBAG_REPORT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
dag = bag.dags.get("sparkml_ext_pipeline")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "max_active_runs": dag and dag.max_active_runs,
    "tasks": dag and {t.task_id: {"type": type(t).__name__, "retries": t.retries,
                                  "backoff": t.retry_exponential_backoff,
                                  "application": getattr(t, "application", None)} for t in dag.tasks},
}))
"""


def test_dag_imports_cleanly_with_retries_and_one_task_per_job(airflow_dag_runs):
    result = airflow_dag_runs.airflow("python", "-c", DAGBAG_REPORT, str(ROOT / "airflow" / "dags"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    tasks = report["tasks"]
    submitted = {name: task["application"] for name, task in tasks.items() if task["application"]}
    assert {name: app.rpartition("}}/")[2] for name, app in submitted.items()} == {  # after <home>
        "generate": "jobs/generate.py", "ingest_00000": "jobs/ingest.py", "features": "jobs/features.py",
        "train_mllib": "jobs/train_mllib.py", "train_torch": "jobs/train_torch.py",
        "score_mllib": "jobs/score.py", "score_torch": "jobs/score.py",
    }
    assert all((ROOT / app.rpartition("}}/")[2]).is_file() for app in submitted.values())
    assert set(tasks) - set(submitted) == {"check_landing", "landing_complete", "check_models", "models_current"}
    assert {(t["retries"], t["backoff"]) for t in tasks.values()} == {(0, 2.0)}  # retries: env here
    assert report["max_active_runs"] == 1


def test_dags_test_runs_the_pipeline_and_a_rerun_changes_nothing(airflow_dag_runs, spark):
    runs = airflow_dag_runs
    assert branches(runs.first) == [{"generate"}, {"train_mllib", "train_torch"}]

    work = runs.airflow.work
    cfg = load_config(ROOT / "conf/pipelines/clicks.yaml", [f"lakehouse={work / 'lake'}"])
    landed = lake.ledger_record(spark, cfg.table_path("batches"), "ingest", BATCH_ID)
    assert landed is not None and landed.committed
    bronze = spark.read.format("delta").load(cfg.table_path("bronze")).where(f"_batch_id = '{BATCH_ID}'")
    quarantine = spark.read.format("delta").load(cfg.table_path("quarantine")).where(f"batch_id = '{BATCH_ID}'")
    accepted, rejected = bronze.count(), quarantine.count()
    assert accepted + rejected == landed.report["rows_read"] == ROWS and rejected > 0

    feature_version = lake.current_version(spark, cfg.table_path("features"))
    for kind in ("gbt", "torch"):
        (model,) = modelstore.versions(cfg.table_path("models"), kind)
        assert modelstore.read_json(model, "card.json")["feature_version"] == feature_version
    predictions = spark.read.format("delta").load(cfg.table_path("predictions"))
    per_model = {r["model"]: r["count"] for r in predictions.groupBy("model").count().collect()}
    assert per_model == {"gbt/v1": accepted, "torch/v1": accepted}

    assert branches(runs.second) == [{"landing_complete"}, {"models_current"}]
    assert "already ingested: nothing written" in runs.second
    assert any("/_delta_log/" in name for name in runs.before) and runs.before == runs.after


def branches(log: str) -> list[set[str]]:
    """The task ids each branch task chose, in order."""
    return [ast.literal_eval(chosen) for chosen in re.findall(r"Following branch (\{[^}]*\})", log)]
