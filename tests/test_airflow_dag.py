"""The Airflow DAG with real Airflow, in its own virtual environment (`make airflow-venv`).

The DAG must import cleanly, and `airflow dags test` must run the whole pipeline through
SparkSubmitOperator against local Spark on small data; a second run of the same interval
must change nothing in the lakehouse.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from sparkml_ext import lake, modelstore
from sparkml_ext.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = ROOT / ".airflow-venv" / "bin"
DAG_ID = "sparkml_ext_pipeline"
ROWS = 2000
SMALL = ["train_mllib.params={maxIter: 3}", "train_mllib.grid={}", "train_torch.epochs=1",
         "train_torch.batch_size=256", "train_torch.embedding_rows=1024"]
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


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Run the Airflow CLI with a fresh AIRFLOW_HOME (sqlite) and the project's spark-submit on PATH."""
    built = subprocess.run(["make", "airflow-venv"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    work = tmp_path_factory.mktemp("airflow")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(work / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",  # spark-submit
        "SPARKML_EXT_LAKEHOUSE": str(work / "lake"),
        "SPARKML_EXT_LANDING": str(work / "landing"),
        "SPARKML_EXT_BATCHES": "1",
        "SPARKML_EXT_RETRIES": "0",  # fail fast here; the DAG's own default is 3 with back-off
    }

    def run(program: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(AIRFLOW_BIN / program), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1200)

    migrated = run("airflow", "db", "migrate")
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    run.work = work
    return run


def test_dag_imports_cleanly_with_retries_and_one_task_per_job(airflow):
    result = airflow("python", "-c", DAGBAG_REPORT, str(ROOT / "airflow" / "dags"))
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


def test_dags_test_runs_the_pipeline_and_a_rerun_changes_nothing(airflow, spark):
    first = dags_test(airflow)
    assert branches(first) == [{"generate"}, {"train_mllib", "train_torch"}]

    cfg = load_config(ROOT / "conf/pipelines/clicks.yaml", [f"lakehouse={airflow.work / 'lake'}"])
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

    before = lakehouse_state(spark, cfg, airflow.work / "landing")
    second = dags_test(airflow)
    assert branches(second) == [{"landing_complete"}, {"models_current"}]
    assert "already ingested: nothing written" in second
    assert lakehouse_state(spark, cfg, airflow.work / "landing") == before


def dags_test(airflow) -> str:
    """One `airflow dags test` of the interval, on small data; returns its log."""
    conf = json.dumps({"rows": ROWS, "overrides": SMALL})
    result = airflow("airflow", "dags", "test", DAG_ID, "2026-01-02", "--conf", conf)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "state=success" in log, log[-6000:]
    return log


def branches(log: str) -> list[set[str]]:
    """The task ids each branch task chose, in order."""
    return [ast.literal_eval(chosen) for chosen in re.findall(r"Following branch (\{[^}]*\})", log)]


def lakehouse_state(spark, cfg, landing: Path) -> dict:
    """Every table's version and rows, the stored models, and the landed files' bytes."""
    tables = {name: lake.current_version(spark, cfg.table_path(name))
              for name in ("bronze", "quarantine", "batches", "truth", "features", "predictions")}
    rows = {name: spark.read.format("delta").load(cfg.table_path(name)).count() for name in tables}
    models = {kind: [v.name for v in modelstore.versions(cfg.table_path("models"), kind)]
              for kind in ("gbt", "torch")}
    files = {str(p.relative_to(landing)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(landing.rglob("*")) if p.is_file()}
    return {"versions": tables, "rows": rows, "models": models, "landing": files}
