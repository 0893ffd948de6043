"""The pipeline on a real Spark standalone cluster: a master and two workers on 127.0.0.1.

The package reaches the driver and executors only as the `--py-files` archive (their
Python is a venv with the dependencies and without sparkml_ext), the lakehouse is a
local folder (shared by every worker, as they are all on this machine), and train-torch
runs its two DDP ranks in TorchDistributor's barrier mode, one on each worker. The run
itself is the session fixture `cluster_pipeline` (conftest.py); its report is checked in
test_report.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from shipping import reconciled_ingests

pytestmark = pytest.mark.slow
RANK_LINE = re.compile(
    r"sparkml_ext rank (\d+) of (\d+): pid (\d+) on \S+, cwd (\S+), package (\S+)")


def test_pipeline_on_a_standalone_cluster(spark, cluster_pipeline):
    run = cluster_pipeline
    assert (run.stopped.returncode, run.stopped.stdout.strip()) == (0, "stopped"), run.stopped.stderr
    assert run.left_running == []  # no daemon, executor or Python worker left

    stages = run.stages
    ingested, accepted = reconciled_ingests(stages)
    assert len(ingested) == 2
    mllib, deep = stages["train-mllib"], stages["train-torch"]
    assert (mllib["model_version"], deep["model_version"]) == ("gbt/v1", "torch/v1")
    for card in (mllib, deep):  # stored and tracked (quality on 3000 rows is not the point)
        assert (Path(card["model_uri"].removeprefix("file:")) / "card.json").exists()
        assert card["metrics"]["test_rows"] > 0
        # MLflow copied the package's code from the shipped zip into the logged model
        assert card["mlflow"]["run_id"] and card["mlflow"]["registered"]["version"] == 1
    assert deep["training"]["world_size"] == 2 and len(deep["attempts"]) == 1
    for scored in (stages["score mllib"], stages["score torch"]):
        assert scored["rows"] == accepted
        predictions = spark.read.format("delta").load(scored["predictions_table"])
        model = predictions.where(predictions.model == scored["model"])
        assert model.count() == model.select("event_id").distinct().count() == accepted

    work = run.root / "cluster"
    ranks = {int(m[1]): m for m in RANK_LINE.finditer(run.stdout)}
    assert sorted(ranks) == [0, 1] and {m[2] for m in ranks.values()} == {"2"}, run.stdout[-3000:]
    workers = {Path(m[4]).relative_to(work).parts[0] for m in ranks.values()}
    assert workers == {"worker-1", "worker-2"}  # each rank ran in an executor of its own worker
    for m in ranks.values():  # and imported the package from the archive shipped to that executor
        assert m[5] == f"{m[4]}/sparkml_ext.zip/sparkml_ext"
