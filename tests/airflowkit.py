"""Real Airflow for the DAG test: its CLI from `.airflow-venv` (`make airflow-venv`) with a
fresh AIRFLOW_HOME (sqlite), the project's spark-submit on PATH, and the DAG run twice.

The two runs need no Spark in this process, so conftest.py starts them in the background
when the session starts (see `BACKGROUND` there) and test_airflow_dag.py checks them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shipping import QUICK_JVMS

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = ROOT / ".airflow-venv" / "bin"
DAG_ID = "sparkml_ext_pipeline"
ROWS = 2000
SMALL = ["train_mllib.params={maxIter: 3}", "train_mllib.grid={}", "train_torch.epochs=1",
         "train_torch.batch_size=256", "train_torch.embedding_rows=1024"]


class Airflow:
    """`airflow(program, *args)`: a program of `.airflow-venv/bin` run in `work` (its home)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {
            **os.environ,
            **QUICK_JVMS,
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

    def __call__(self, program: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(AIRFLOW_BIN / program), *args], check=False, cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=1200)


def ready_airflow(work: Path) -> Airflow:
    """The venv built (a no-op after `make test` built it) and a migrated metadata database."""
    built = subprocess.run(["make", "airflow-venv"], check=False, cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    airflow = Airflow(work)
    migrated = airflow("airflow", "db", "migrate")
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return airflow


def dags_test(airflow: Airflow) -> str:
    """One `airflow dags test` of the interval 2026-01-01, on small data; returns its log."""
    conf = json.dumps({"rows": ROWS, "overrides": SMALL})
    result = airflow("airflow", "dags", "test", DAG_ID, "2026-01-02", "--conf", conf)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "state=success" in log, log[-6000:]
    return log


def files_state(*folders: Path) -> dict[str, str]:
    """Every file under `folders` by path, with the SHA-256 of its bytes: a rerun that
    changes nothing leaves this equal (no new commit, data file, model or landed file).
    Job run records (`_meta/runs/`) are left out: each job logs that it ran, data or not."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*"))
            if p.is_file() and "/_meta/runs/" not in str(p)}


@dataclass
class DagRuns:
    airflow: Airflow
    first: str  # the first run's log
    second: str  # the rerun's log
    before: dict[str, str]  # files_state of the lakehouse and landing between the runs
    after: dict[str, str]  # and after the rerun


def run_dag_twice(work: Path) -> DagRuns:
    """The whole DAG for one interval, then the same interval again (as a cleared or
    backfilled run would), with the lakehouse's files recorded between the two."""
    airflow = ready_airflow(work)
    first = dags_test(airflow)
    before = files_state(work / "lake", work / "landing")
    second = dags_test(airflow)
    return DagRuns(airflow, first, second, before, files_state(work / "lake", work / "landing"))
