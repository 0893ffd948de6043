"""A user's own table through the CLI: no generator, no truth table, batches named freely.

A small sensor log (header-less comma-separated files, other column names than the click
demo's) lands in two folders named by week. The first week's jobs run one by one and
`report` draws them; then `pipeline` runs over both folders (ingest's ledger skips the
first) and ends in its report. Real Spark, Delta and TorchDistributor; nothing mocked.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from clickdata import clicks_config
from shipping import run_cli

from sparkml_ext import lake
from sparkml_ext.cli import EXIT_CONFIG, EXIT_INPUT, EXIT_OK, pipeline_batches
from sparkml_ext.config import ConfigError, load_config
from sparkml_ext.holdout import bayes_optimal_auc

pytestmark = pytest.mark.spark
WEEKS = ("2025-w01", "2025-w02")
USER_PIPELINE = """\
name: sensors
lakehouse: {root}/lake
source:
  path: {root}/landing
  format: csv
  options: {{sep: ",", header: "false"}}
  key: reading_id
  event_time: at
  schema: {{reading_id: string, station: string, at: timestamp, failed: int,
            temp: double, load: double, kind: string}}
  not_null: [reading_id, station, at]
tables:
  bronze: bronze
  quarantine: quarantine
  batches: _meta/batches
  features: features
  models: models
  predictions: predictions
features:
  label: failed
  entities:
    station:
      windows: [1d]
      aggregates: {{load: [mean, max, stddev]}}
  numeric: {{temp: none, load: log1p}}   # a temperature is signed: taken as it is
  categorical: [kind]
  hash_buckets: 64
train_mllib:
  params: {{maxIter: 3, seed: 7}}
  grid: {{}}
  max_categories: 8
train_torch:
  num_processes: 1
  epochs: 1
  batch_size: 64
  vocabulary: 8
  bottom_mlp: [8]
  top_mlp: [8]
  embedding_dim: 4
tracking:
  mode: disabled
spark: {{}}
"""


def _landing(root: Path) -> None:
    """Two weeks of readings (150 each, one malformed line in the second) and a stray file."""
    rng = random.Random(19)
    for week, folder in enumerate(WEEKS):
        lines = []
        for i in range(150):
            temp, load = rng.uniform(-10, 40), rng.uniform(0, 100)
            failed = int(rng.random() < 0.1 + 0.6 * (load > 70))
            lines.append(f"r{week}-{i:03d},s{i % 5},2025-01-{1 + 7 * week + i % 7:02d} {i % 24:02d}:00:00,"
                         f"{failed},{temp:.1f},{load:.1f},{rng.choice('abc')}")
        if week == 1:
            lines[7] = "r1-007,s2,not a time,0,1.0,2.0,a"
        (root / "landing" / folder).mkdir(parents=True)
        (root / "landing" / folder / "part-0.csv").write_text("".join(f"{x}\n" for x in lines))
    (root / "landing" / "README.txt").write_text("not a batch: only folders are")



@pytest.fixture(scope="module")
def user(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("user")
    _landing(root)
    pipeline = root / "sensors.yaml"
    pipeline.write_text(USER_PIPELINE.format(root=root))
    return root, f"--pipeline={pipeline}"


def test_a_users_file_needs_no_generator_and_no_truth_table(user):
    root, _ = user
    cfg = load_config(root / "sensors.yaml")
    assert cfg.generate is None and cfg.tables.truth is None
    with pytest.raises(ConfigError, match=r"sensors.yaml: tables.truth: required .*generate"):
        load_config(root / "sensors.yaml", ["generate.rows=100"])
    assert run_cli("generate", f"--pipeline={root}/sensors.yaml")[0] == EXIT_CONFIG


def test_the_click_demo_still_ingests_what_it_generates(spark, tmp_path):
    clicks = clicks_config(tmp_path)  # generate.batches: 2; nothing landed yet
    assert pipeline_batches(spark, clicks) == ["batch-00000", "batch-00001"]
    assert pipeline_batches(spark, clicks, ["batch-00001"]) == ["batch-00001"]


def test_the_pipeline_refuses_a_named_batch_that_is_not_there(spark, user):
    root, pipeline = user
    code, _, err = run_cli("pipeline", pipeline, "--batch-id=2025-w09")
    assert code == EXIT_INPUT and f"{root}/landing/2025-w09" in err
    assert not (root / "lake").exists()  # refused before any stage ran


def test_the_pipeline_refuses_a_source_without_batch_folders(spark, tmp_path):
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "events.csv").write_text("r1,s1,2025-01-01 00:00:00,0,1.0,2.0,a\n")
    (tmp_path / "sensors.yaml").write_text(USER_PIPELINE.format(root=tmp_path))
    code, _, err = run_cli("pipeline", f"--pipeline={tmp_path}/sensors.yaml")
    assert code == EXIT_INPUT and "no batch folder" in err and f"{tmp_path}/landing" in err


@pytest.mark.parametrize("column", ["event_date", "_batch_id"])
def test_a_source_column_named_as_one_ingest_adds_is_refused_before_anything_is_read(spark, tmp_path, column):
    """Bronze gets the event's date (its partition) and the batch id beside the source's
    columns: a source column of either name met ours in the write, as Delta's raw
    "duplicate column" error after the whole batch was read and checked."""
    (tmp_path / "landing" / WEEKS[0]).mkdir(parents=True)
    (tmp_path / "landing" / WEEKS[0] / "part.csv").write_text("r1,s1,2025-01-01 00:00:00,0,1.0,2.0,a,x\n")
    pipeline = tmp_path / "sensors.yaml"
    pipeline.write_text(USER_PIPELINE.format(root=tmp_path).replace("kind: string}", f"kind: string, {column}: string}}"))
    code, _, err = run_cli("ingest", f"--pipeline={pipeline}", f"--batch-id={WEEKS[0]}")
    assert code == EXIT_CONFIG, err
    assert f"sensors.yaml: source.schema: ingest adds a column named '{column}' (" in err
    assert not (tmp_path / "lake").exists()


@pytest.fixture(scope="module")
def separate_jobs(spark, user) -> dict:
    """The first week's jobs one by one, as a user (or a scheduler) runs them, then `report`."""
    _, pipeline = user
    refused = run_cli("report", pipeline)
    assert run_cli("ingest", pipeline, f"--batch-id={WEEKS[0]}")[0] == EXIT_OK
    assert run_cli("features", pipeline)[0] == EXIT_OK
    code, printed, _ = run_cli("report", pipeline)
    assert code == EXIT_OK
    page = Path(printed.strip().rpartition(": ")[2])
    return {"refused": refused, "data": json.loads(page.with_name("report.json").read_text())}


def test_report_draws_the_jobs_run_one_by_one(separate_jobs):
    code, _, err = separate_jobs["refused"]
    assert code == EXIT_INPUT and "no run recorded" in err  # nothing had run yet
    data = separate_jobs["data"]
    assert [(s["stage"], s["accepted" if "accepted" in s else "merged"]) for s in data["stages"]] == [
        ("ingest 2025-w01", 150), ("features", 150)]
    assert data["curves"] == data["models"] == data["quarantine"] == {}


@pytest.fixture(scope="module")
def piped(separate_jobs, user) -> tuple[dict, str]:
    """`pipeline` over the same lakehouse and landing, after the first week's jobs."""
    _, pipeline = user
    code, printed, err = run_cli("pipeline", pipeline, "--json")
    assert code == EXIT_OK, err
    return json.loads(printed[printed.index("\n{") + 1:]), printed


def test_the_pipeline_runs_over_the_batches_present_and_ends_in_its_report(spark, user, piped):
    stages, printed = piped
    features = spark.read.format("delta").load(load_config(user[0] / "sensors.yaml").table_path("features"))
    assert features.where("temp < 0").count() > 0 and "log_load" in features.columns  # signed kept
    assert list(stages) == ["ingest 2025-w01", "ingest 2025-w02", "features", "train-mllib",
                            "train-torch", "score mllib", "score torch", "report"]
    assert [stages[f"ingest {week}"]["already_ingested"] for week in WEEKS] == [True, False]
    assert "generate" not in printed
    page = Path(stages["report"]["html"])
    data = json.loads(page.with_name("report.json").read_text())
    assert [counts for counts in data["quarantine"].values()] == [{"2025-w02": 1}]  # "not a time"
    assert set(data["curves"]) == {"gbt/v1", "torch/v1"}  # no Bayes-optimal curve: no truth table
    assert all(m["bayes_optimal_auc"] is None for m in data["models"].values())
    assert "Bayes" not in page.read_text()


def test_no_bayes_optimum_without_a_truth_table_of_this_data(spark, user, tmp_path):
    """A user's file has no truth table; one that does not hold the source's key (the click
    generator's, left at tables.truth) is not this data's truth either."""
    root, _ = user
    cfg = load_config(root / "sensors.yaml")
    test = spark.createDataFrame([("r0", 1), ("r1", 0)], "reading_id string, failed int")
    assert bayes_optimal_auc(spark, cfg, test, "failed") is None
    truth = spark.createDataFrame([("e1", 0.3, 1)], "event_id string, planted_probability double, label int")
    lake.replace_table(truth, str(tmp_path / "truth"), {})
    cfg = load_config(root / "sensors.yaml", [f"tables.truth={tmp_path}/truth"])
    assert bayes_optimal_auc(spark, cfg, test, "failed") is None
