"""The sparkml_ext pipeline as an Airflow DAG: one spark-submit per job, one run per day.

generate → ingest (one task per batch) → features → train-mllib → score, train-torch → score.
Every job is the project's own `jobs/<name>.py`, submitted with `SparkSubmitOperator` and a
Spark properties file, so Airflow runs exactly what a person runs by hand.

Why a retry or a backfill of the same interval changes nothing:
- batch ids come from the data interval (`<interval start, ts_nodash>-<k>`), so a rerun
  asks ingest for the same ids, and ingest's ledger skips a batch it already landed
  (and refuses the id if the files changed);
- `generate` stands in for the upstream producer and lands an interval only once;
- features only reads bronze rows it has not processed (it writes nothing otherwise);
- a model is trained only when no stored model of its kind was trained on the current
  feature-table version (param `retrain` forces it), and scored right after training.

Settings, each read at run time from the Airflow Variable `sparkml_ext_<name>`, else the
environment variable `SPARKML_EXT_<NAME>` (read when the file is parsed), else a default:
home (the project checkout on the workers), python (the project's interpreter: PYSPARK_PYTHON),
pipeline, properties_file, lakehouse, landing. Parse-time only (they shape the graph):
SPARKML_EXT_SPARK_CONN_ID, SPARKML_EXT_BATCHES, SPARKML_EXT_GENERATE, SPARKML_EXT_RETRIES,
SPARKML_EXT_MAX_ACTIVE_TASKS. No secrets here: they belong in Airflow connections.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, chain, task

REPO = Path(__file__).resolve().parents[2]  # the default when the DAG runs from a checkout
INTERVAL = "{{ data_interval_start | ts_nodash }}"


def env(name: str, default: str) -> str:
    return os.environ.get(f"SPARKML_EXT_{name.upper()}", default)


def setting(name: str, default: str) -> str:
    """A template: Variable `sparkml_ext_<name>`, else SPARKML_EXT_<NAME>, else `default`."""
    return f"{{{{ var.value.get('sparkml_ext_{name}', {env(name, default)!r}) }}}}"


HOME = setting("home", str(REPO))
PYTHON = setting("python", str(REPO / ".venv/bin/python"))
PIPELINE = setting("pipeline", str(REPO / "conf/pipelines/clicks.yaml"))
LANDING = f"{setting('landing', str(REPO / 'data/generated/landing/clicks'))}/{INTERVAL}"
# The job's location settings, then this run's --set overrides (later ones win).
LOCATION = [f"lakehouse={setting('lakehouse', str(REPO / 'lakehouse'))}", f"source.path={LANDING}"]
BATCHES = int(env("batches", "2"))
MLLIB_KIND = "{{ params.mllib_model }}"


class PipelineJob(SparkSubmitOperator):
    """spark-submit of `jobs/<job>.py` with the pipeline file, the lakehouse and the run's overrides."""

    def __init__(self, *, job: str, args: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(
            application=f"{HOME}/jobs/{job}.py",
            application_args=["--pipeline", PIPELINE, *[f"--set={item}" for item in LOCATION], *args],
            properties_file=setting("properties_file", str(REPO / "conf/spark/local.conf")),
            conn_id=env("spark_conn_id", "spark_default"),
            env_vars={"PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON},
            name=f"sparkml_ext-{kwargs['task_id']}-{INTERVAL}",
            **kwargs,
        )

    def execute(self, context) -> None:
        overrides = [f"--set={item}" for item in context["params"]["overrides"]]
        self.application_args = [*self.application_args, *overrides]
        super().execute(context)


@task.branch_external_python(python=PYTHON, expect_airflow=False)
def check_landing(landing: str, batches: int) -> str:
    """Generate unless the interval has fully landed: landed data, like an upstream's, stays as it is."""
    import pyarrow.fs as pafs

    from sparkml_ext.storage import filesystem

    fs, root = filesystem(landing)

    def has_files(path: str) -> bool:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return any(i.type == pafs.FileType.File and i.size for i in infos)

    staged = fs.get_file_info(f"{root}/_staging").type != pafs.FileType.NotFound  # generate crashed
    landed = not staged and all(has_files(f"{root}/batch-{k:05d}") for k in range(batches))
    return "landing_complete" if landed else "generate"


@task.branch_external_python(python=PYTHON, expect_airflow=False)
def check_models(
    pipeline: str, location: list[str], overrides: str, kinds: dict[str, str], retrain: str
) -> list[str]:
    """The train tasks whose model kind has no stored version for the current feature version.

    `overrides` and `retrain` come as JSON (templates render to text).
    """
    import json
    import re

    import pyarrow.fs as pafs

    from sparkml_ext import modelstore
    from sparkml_ext.config import load_config
    from sparkml_ext.storage import filesystem

    cfg = load_config(pipeline, [*location, *json.loads(overrides)])
    table = cfg.table_path("features")
    fs, path = filesystem(table)
    log = fs.get_file_info(pafs.FileSelector(f"{path}/_delta_log"))
    # Delta commits are _delta_log/<20-digit version>.json; the newest one is never cleaned up.
    current = max(int(i.base_name[:20]) for i in log if re.fullmatch(r"\d{20}\.json", i.base_name))

    def trained(kind: str) -> bool:
        cards = [modelstore.read_json(v, "card.json") for v in modelstore.versions(cfg.table_path("models"), kind)]
        return any(c["feature_table"] == table and c["feature_version"] == current for c in cards)

    todo = [name for name, kind in kinds.items() if json.loads(retrain) or not trained(kind)]
    return todo or ["models_current"]


with DAG(
    dag_id="sparkml_ext_pipeline",
    description="click logs → Delta bronze → features → MLlib and DDP models → predictions",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # intervals in order: features are point-in-time over earlier days
    # One Spark driver at a time by default: a local lakehouse is not safe for concurrent writers.
    max_active_tasks=int(env("max_active_tasks", "1")),
    default_args={
        "retries": int(env("retries", "3")),
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,  # 1, 2, 4 minutes…
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=4),
    },
    params={
        "rows": Param(100_000, type="integer", minimum=1, description="events generate lands per interval"),
        "overrides": Param([], type="array", items={"type": "string"},
                           description="config overrides for every job, as key=value (the CLI's --set)"),
        "mllib_model": Param("gbt", type="string", description="train_mllib.model to train and score"),
        "retrain": Param(False, type="boolean", description="train even if models exist for these features"),
    },
    tags=["sparkml_ext", "spark"],
) as dag:
    generated = env("generate", "true") == "true"
    ingests = [
        PipelineJob(
            task_id=f"ingest_{k:05d}", job="ingest",
            args=("--batch-id", f"{INTERVAL}-{k:05d}", "--input", f"{LANDING}/batch-{k:05d}"),
            # After generate or landing_complete, whichever ran (the other one is skipped).
            trigger_rule="none_failed_min_one_success" if generated and k == 0 else "all_success",
        )
        for k in range(BATCHES)
    ]
    if generated:
        generate = PipelineJob(
            task_id="generate", job="generate",
            args=("--rows", "{{ params.rows }}", "--batches", str(BATCHES),
                  "--seed", "{{ data_interval_start | ds_nodash }}",  # new event ids every interval
                  f"--set=generate.landing={LANDING}",
                  "--set=generate.start_date='{{ data_interval_start | ds }}'",  # YAML: text, not a date
                  "--set=generate.days={{ (data_interval_end - data_interval_start).days or 1 }}"),
        )
        landed = EmptyOperator(task_id="landing_complete")
        check_landing(LANDING, BATCHES) >> [generate, landed] >> ingests[0]
    features = PipelineJob(task_id="features", job="features")
    plan = check_models(
        PIPELINE, LOCATION, "{{ params.overrides | tojson }}",
        {"train_mllib": MLLIB_KIND, "train_torch": "torch"}, "{{ params.retrain | tojson }}",
    )
    mllib_model = f"--set=train_mllib.model={MLLIB_KIND}"
    train_mllib = PipelineJob(task_id="train_mllib", job="train_mllib", args=(mllib_model,))
    score_mllib = PipelineJob(task_id="score_mllib", job="score", args=("--model", f"{MLLIB_KIND}/latest"))
    train_torch = PipelineJob(task_id="train_torch", job="train_torch")
    score_torch = PipelineJob(task_id="score_torch", job="score", args=("--model", "torch/latest"))
    chain(*ingests, features, plan)
    plan >> [train_mllib, train_torch, EmptyOperator(task_id="models_current")]
    train_mllib >> score_mllib
    train_torch >> score_torch
