"""The pipeline on a real Spark standalone cluster: a master and two workers on 127.0.0.1.

The package reaches the driver and executors only as the `--py-files` archive (their
Python is a venv with the dependencies and without sparkml_ext), the lakehouse is a
local folder (shared by every worker, as they are all on this machine), and train-torch
runs its two DDP ranks in TorchDistributor's barrier mode, one on each worker.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from shipping import REPO, build_wheel, cluster_script, report_of, submit

pytestmark = pytest.mark.slow
RANK_LINE = re.compile(
    r"sparkml_ext rank (\d+) of (\d+): pid (\d+) on \S+, cwd (\S+), package (\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pipeline_on_a_standalone_cluster(spark, tmp_path):
    cluster = cluster_script()
    work = tmp_path / "cluster"
    archive = build_wheel(tmp_path / "dist").with_name("sparkml_ext.zip")
    script = [sys.executable, str(REPO / "scripts" / "cluster.py"), "--work-dir", str(work)]
    where = [f"--set=lakehouse={tmp_path}/lake", f"--set=generate.landing={tmp_path}/landing",
             f"--set=source.path={tmp_path}/landing", "--set=generate.rows=3000",
             "--set=generate.batches=1", "--set=generate.malformed_rate=0.01",
             "--set=train_mllib.params={maxIter: 3}", "--set=train_mllib.grid={}",
             "--set=train_torch.local_mode=false", "--set=train_torch.num_processes=2",
             "--set=train_torch.epochs=1", "--json",
             # MLflow logs the package as code_paths, a folder copy that fails when the
             # package was imported from the shipped zip (reported; tracking has its own tests)
             "--set=tracking.mode=disabled"]
    try:
        ports = ["--port", str(free_port()), "--webui-port", str(free_port())]
        subprocess.run([*script, "start", *ports], check=True, timeout=300)
        node = subprocess.run([work / "node-env" / "bin" / "python", "-P", "-c",
                               "import sparkml_ext"], cwd=work, capture_output=True, text=True)
        assert "No module named 'sparkml_ext'" in node.stderr  # only the archive can provide it
        launcher = (*script, "submit", "--archive", str(archive))
        run = submit("pipeline", *where, launcher=launcher, timeout=1800)  # 8 stages, one app
        stages = report_of(run)
    finally:
        stopped = subprocess.run([*script, "stop"], capture_output=True, text=True, timeout=300)
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "stopped"), stopped.stderr
    assert cluster.processes_under(work) == []  # no daemon, executor or Python worker left

    generated, ingested = stages["generate"], stages["ingest batch-00000"]
    assert ingested["accepted"] + ingested["quarantined"] == ingested["rows_read"] == generated["rows"]
    assert ingested["quarantined"] == generated["malformed"] > 0
    assert stages["features"]["rows_merged"] == ingested["accepted"]
    mllib, deep = stages["train-mllib"], stages["train-torch"]
    assert (mllib["model_version"], deep["model_version"]) == ("gbt/v1", "torch/v1")
    for card in (mllib, deep):  # stored (quality on 3000 rows and one epoch is not the point)
        assert (Path(card["model_uri"].removeprefix("file:")) / "card.json").exists()
        assert card["metrics"]["test_rows"] > 0
    assert deep["training"]["world_size"] == 2 and len(deep["attempts"]) == 1
    for scored in (stages["score mllib"], stages["score torch"]):
        assert scored["rows"] == ingested["accepted"]
        predictions = spark.read.format("delta").load(scored["predictions_table"])
        model = predictions.where(predictions.model == scored["model"])
        assert model.count() == model.select("event_id").distinct().count() == ingested["accepted"]

    ranks = {int(m[1]): m for m in RANK_LINE.finditer(run.stdout)}
    assert sorted(ranks) == [0, 1] and {m[2] for m in ranks.values()} == {"2"}, run.stdout[-3000:]
    workers = {Path(m[4]).relative_to(work).parts[0] for m in ranks.values()}
    assert workers == {"worker-1", "worker-2"}  # each rank ran in an executor of its own worker
    for m in ranks.values():  # and imported the package from the archive shipped to that executor
        assert m[5] == f"{m[4]}/sparkml_ext.zip/sparkml_ext"
