"""The lakehouse on S3: a real S3 server (moto's, started on loopback by the test), Spark
through Hadoop's S3A connector, pyarrow and boto3 for the files the jobs write without Spark.

The pipeline test runs `sparkml-ext pipeline` as a user does, in a process of its own with
nothing but the environment pointing it at the server; the model store's tests publish
on S3 and on a local disk through the one rename-free code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch
from s3_server import s3_server
from shipping import QUICK_JVMS, reconciled_ingests, report_of

from sparkml_ext import modelstore
from sparkml_ext.deep.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from sparkml_ext.deep.dataset import ShardDataset
from sparkml_ext.deep.shard_reader import read_manifest, write_shards
from sparkml_ext.object_store import (
    HADOOP_AWS_PACKAGE,
    LOG_STORE_CLASS,
    LOG_STORE_JAR,
    spark_settings,
)
from sparkml_ext.session import DELTA_PACKAGE
from sparkml_ext.storage import create_once, filesystem, write_whole

REPO = Path(__file__).resolve().parents[1]
BUCKET = "lake"


@pytest.fixture(scope="module")
def s3_log(tmp_path_factory) -> Path:
    """The server's request log: one line per request, with its HTTP status."""
    return tmp_path_factory.mktemp("s3") / "moto.log"


@pytest.fixture(scope="module")
def s3(s3_log):
    """The server's environment, also set in this process (pyarrow and boto3 read it)."""
    with s3_server(BUCKET, log=str(s3_log)) as env, pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


def test_s3a_is_the_hadoop_release_pyspark_ships():
    import pyspark

    (client,) = (Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar")
    assert HADOOP_AWS_PACKAGE.rsplit(":", 1)[1] == client.stem.removeprefix("hadoop-client-api-")


def test_only_a_pipeline_on_s3a_gets_the_connector_and_its_endpoint_from_the_environment(monkeypatch):
    assert spark_settings(["/data/lake", "file:///x", "s3://bucket/plain-s3-is-not-hadoop"]) == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = spark_settings(["/data/lake", "s3a://bucket/lake"])
    assert HADOOP_AWS_PACKAGE in settings["spark.jars.packages"].split(",")
    assert settings["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert settings["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert settings["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert settings["spark.delta.logStore.s3a.impl"] == LOG_STORE_CLASS  # commits by conditional PUT
    assert settings["spark.jars"] == LOG_STORE_JAR and os.path.exists(LOG_STORE_JAR)  # built by `make venv`
    assert not any("secret" in key.lower() or "access.key" in key for key in settings)  # never a setting


@pytest.fixture(params=["local", "s3"])
def model_root(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3")
        return f"s3a://{BUCKET}/models-{tmp_path.name}"
    return str(tmp_path / "models")


def _stage(root: str, payload: str) -> str:
    staged = modelstore.staging(root, "gbt")
    modelstore.write_json(f"{staged}/card.json", {"payload": payload})
    return staged


def test_racing_publishers_each_get_a_version_of_their_own(model_root):
    staged = [_stage(model_root, f"run {n}") for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        published = list(pool.map(lambda s: modelstore.publish(model_root, "gbt", s), staged))
    assert sorted(v.version for v in published) == [1, 2, 3, 4]
    found = modelstore.versions(model_root, "gbt")
    assert [v.name for v in found] == ["gbt/v1", "gbt/v2", "gbt/v3", "gbt/v4"]
    for version in published:  # each number names the run that took it
        (same,) = [v for v in found if v.version == version.version]
        assert modelstore.read_json(same, "card.json") == modelstore.read_json(version, "card.json")
    assert modelstore.resolve(model_root, "gbt/latest").version == 4


def test_a_run_killed_before_its_pointer_leaves_no_version(model_root):
    _stage(model_root, "killed before publishing")  # all its files, no pointer
    assert modelstore.versions(model_root, "gbt") == []
    kept = modelstore.publish(model_root, "gbt", _stage(model_root, "published"))
    assert [v.name for v in modelstore.versions(model_root, "gbt")] == ["gbt/v1"]
    assert modelstore.read_json(kept, "card.json") == {"payload": "published"}


def test_a_pointer_names_a_version_folder_and_nothing_else(model_root):
    fs, path = filesystem(f"{model_root}/gbt/v1.json")
    fs.create_dir(path.rsplit("/", 1)[0])
    with fs.open_output_stream(path) as out:
        out.write(json.dumps({"folder": "../../elsewhere"}).encode())
    with pytest.raises(ValueError, match="not a version folder"):
        modelstore.versions(model_root, "gbt")
    with pytest.raises(ValueError, match="not a staging folder"):
        modelstore.publish(model_root, "gbt", f"{model_root}/gbt/anything")


def test_a_version_published_by_rename_is_still_read(tmp_path):
    root = tmp_path / "models"
    (root / "gbt" / "v1").mkdir(parents=True)
    (root / "gbt" / "v1" / "card.json").write_text('{"created_unix": 1}')
    newer = modelstore.publish(str(root), "gbt", _stage(str(root), "after the upgrade"))
    assert newer.version == 2
    assert [v.uri for v in modelstore.versions(str(root), "gbt")] == [str(root / "gbt" / "v1"), newer.uri]


def test_create_once_refuses_a_second_writer(model_root):
    uri = f"{model_root}/marker.json"
    assert create_once(uri, b"first") and not create_once(uri, b"second")
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as src:
        assert src.read() == b"first"
    if "://" not in model_root:  # nothing left aside
        assert sorted(p.name for p in Path(model_root).iterdir()) == ["marker.json"]


def test_checkpoints_rotate_and_fall_back_past_a_broken_one(model_root):
    folder = f"{model_root}/checkpoints"
    for step in (5, 10, 15, 20):
        save_checkpoint({"step": step, "w": torch.full((3,), float(step))}, folder, step, keep=2)
    assert [os.path.basename(p) for p in list_checkpoints(folder)] == ["step-000000015.pt", "step-000000020.pt"]
    write_whole(f"{folder}/step-000000025.pt", b"PK\x03\x04 cut short")
    with pytest.warns(UserWarning, match=r"step-000000025\.pt cannot be loaded"):
        path, state = latest_checkpoint(folder)
    assert os.path.basename(path) == "step-000000020.pt" and torch.equal(state["w"], torch.full((3,), 20.0))
    assert latest_checkpoint(f"{model_root}/no-checkpoints-yet") is None


SAVER = """
import sys, torch
from sparkml_ext.deep.checkpoint import save_checkpoint
big = torch.zeros(48 * 2**20 // 4)  # 48 MiB: a multipart upload, long enough to be caught
for step in range(1, 10**6):
    save_checkpoint({"step": step, "weights": big + step}, sys.argv[1], step, keep=2)
    print(step, flush=True)
"""


def test_a_checkpoint_writer_killed_mid_upload_leaves_only_whole_checkpoints(s3):
    import boto3

    client, prefix = boto3.client("s3"), "killed/checkpoints/"
    writer = subprocess.Popen([sys.executable, "-c", SAVER, f"s3a://{BUCKET}/{prefix}"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "1"  # one whole checkpoint exists
        deadline = time.monotonic() + 120
        while not client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads"):
            assert time.monotonic() < deadline, "no upload in progress was seen"
            time.sleep(0.01)
        writer.kill()  # SIGKILL while the next checkpoint's parts are going up
    finally:
        writer.kill()
        writer.wait()
    assert client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")  # left, unseen
    listed = list_checkpoints(f"s3a://{BUCKET}/{prefix}")
    assert [k.removeprefix(prefix) for k in _keys(s3, prefix)] == [os.path.basename(p) for p in listed]
    path, state = latest_checkpoint(f"s3a://{BUCKET}/{prefix}")
    assert os.path.basename(path) == f"step-{state['step']:09d}.pt"
    assert torch.equal(state["weights"][-3:], torch.full((3,), float(state["step"])))


def _table(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"x": rng.standard_normal(rows).astype(np.float32), "c": rng.integers(0, 9, rows),
                     "id": np.arange(rows, dtype=np.float32)})


SHARDS = {"numeric": ("x",), "categorical": ("c",), "label": "id"}  # the row number as the label: which row


def _epoch(manifest: str, rank: int, **kwargs) -> list[dict[str, torch.Tensor]]:
    data = ShardDataset.from_manifest(read_manifest(manifest), rank, 2, batch_size=250, chunk_rows=400, **kwargs)
    return list(data.batches())


def test_ranks_read_shards_on_s3_as_they_read_them_on_disk(s3, tmp_path):
    table = _table(6_000)
    local = write_shards(tmp_path / "shards", table, 5, **SHARDS, batch_rows=700)
    remote = write_shards(f"s3a://{BUCKET}/shards/read", table, 5, **SHARDS, batch_rows=700)
    assert read_manifest(remote).root == f"s3a://{BUCKET}/shards/read"
    for rank in (0, 1):
        on_disk, on_s3 = _epoch(local, rank, seed=3), _epoch(remote, rank, seed=3)
        assert len(on_disk) == len(on_s3) == 12
        for a, b in zip(on_disk, on_s3, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_s3_lost_in_the_middle_of_a_shard_read_names_the_object_and_the_rerun_reads_on_exactly(s3, monkeypatch):
    from faultkit import CuttableLink

    remote = write_shards(f"s3a://{BUCKET}/shards/cut", _table(6_000), 5, **SHARDS, batch_rows=700)
    link = CuttableLink(_server_port(s3))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{link.port}")
    data = ShardDataset.from_manifest(read_manifest(remote), batch_size=250, chunk_rows=400, shuffle=False,
                                      shuffle_buffer=250)  # one batch per window: files are read as needed
    seen, batches = [], data.batches()
    seen.append(next(batches))
    link.cut()
    with pytest.raises(OSError) as lost:
        seen.extend(batches)
    said = str(lost.value)
    assert f"s3a://{BUCKET}/shards/cut/part-0000" in said and f"at http://127.0.0.1:{link.port}" in said, said
    link.restore()
    seen.extend(data.batches())  # from the position the last batch handed over left
    assert torch.equal(torch.cat([b["label"] for b in seen]), torch.arange(6_000, dtype=torch.float32))


@pytest.mark.slow
def test_the_pipeline_on_s3_lands_every_record_once_and_publishes_its_models(s3, tmp_path):
    """Both models: MLlib's, and torch's trained by two DDP ranks reading their shards from S3
    and checkpointing there; MLflow's artifacts on S3 too (its run records in SQLite: S3 is no
    database)."""
    lakehouse, landing = f"s3a://{BUCKET}/lakehouse", f"s3a://{BUCKET}/landing"
    env = {**os.environ, **QUICK_JVMS, **s3, "SPARKML_EXT_LAKEHOUSE": lakehouse,
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cli = [str(Path(sys.executable).parent / "sparkml-ext")]
    # as a cluster user submits a job: the profile's Delta package plus the S3A connector and
    # the conditional-PUT log store (README: "On object storage")
    submit = [str(Path(sys.executable).parent / "spark-submit"), "--properties-file", "conf/spark/local.conf",
              "--packages", f"{DELTA_PACKAGE},{HADOOP_AWS_PACKAGE}", "--jars", LOG_STORE_JAR,
              "--conf", f"spark.delta.logStore.s3a.impl={LOG_STORE_CLASS}", "jobs/ingest.py"]
    common = ["--pipeline", "conf/pipelines/clicks.yaml", f"--set=source.path={landing}", "--json"]
    tiny = [f"--set={s}" for s in ("generate.rows=3000", "generate.batches=2", "generate.malformed_rate=0.01",
                                   "train_mllib.params={maxIter: 3, seed: 7}", "train_mllib.grid={}",
                                   "train_torch.epochs=1", "train_torch.checkpoint_every=2", "tracking.mode=required",
                                   f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                   f"tracking.artifact_location=s3://{BUCKET}/lakehouse/mlartifacts")]

    def run(command: list[str], *args: str) -> dict:
        return report_of(subprocess.run([*command, *common, *args], cwd=REPO, env=env,
                                        capture_output=True, text=True, timeout=900, check=False))

    stages = run([*cli, "pipeline"], *tiny)
    ingested, accepted = reconciled_ingests(stages)
    mllib, deep = stages["train-mllib"], stages["train-torch"]
    assert (mllib["model_version"], deep["model_version"]) == ("gbt/v1", "torch/v1")
    assert deep["training"]["world_size"] == 2 and len(deep["attempts"]) == 1
    assert all(root.startswith(f"{lakehouse}/shards/") for root in deep["shards"].values())
    assert list_checkpoints(deep["params"]["checkpoint_dir"])[-1].startswith(f"{lakehouse}/checkpoints/torch/")
    assert stages["score mllib"]["rows"] == stages["score torch"]["rows"] == accepted
    assert stages["report"]["html"].startswith(f"{lakehouse}/reports/")

    again = run(submit, *tiny, f"--batch-id={ingested[0]['batch_id']}")  # exactly once
    assert again["already_ingested"] and again["accepted"] == ingested[0]["accepted"]

    fs, models = filesystem(f"{lakehouse}/models")
    files = [i.path.removeprefix(models) for i in fs.get_file_info(pafs.FileSelector(models, recursive=True))
             if i.type == pafs.FileType.File]
    assert sorted(f for f in files if f.endswith(".json") and "/_data/" not in f) == [
        "/clicks/gbt/v1.json", "/clicks/torch/v1.json"]
    for kind in ("gbt", "torch"):
        (version,) = modelstore.versions(f"{lakehouse}/models/clicks", kind)
        assert modelstore.read_json(version, "card.json")["rows"]["test"] > 0
    logged = [k for k in _keys(s3, "lakehouse/mlartifacts/") if k.endswith("/MLmodel")]
    assert len(logged) == 2, logged  # both models' MLflow artifacts went to S3
    fs, reports = filesystem(stages["report"]["html"])
    assert fs.get_file_info(reports).size > 0


def test_the_log_store_lets_one_of_two_racing_commits_win_and_tells_the_other(s3, s3_log):
    """Two writers of one commit file, both past the "is it there?" check before either's
    upload completes (`tests/s3_writers.py race`): the first upload wins, the second is
    refused by S3 (412) and Delta hears FileAlreadyExistsException, its cue to retry at the
    next version. Delta's default S3 log store checks inside one JVM only; between two JVMs
    its second upload would replace the first (docs/object-storage.md)."""
    key = "racing/_delta_log/00000000000000000007.json"
    env = {**os.environ, **QUICK_JVMS, **s3, "PYSPARK_PYTHON": sys.executable}
    raced = subprocess.run([sys.executable, str(REPO / "tests" / "s3_writers.py"), "race", f"s3a://{BUCKET}/{key}"],
                           env=env, capture_output=True, text=True, timeout=600, check=False)
    assert raced.returncode == 0, raced.stdout[-3000:] + raced.stderr[-3000:]
    outcomes = json.loads(raced.stdout.strip().splitlines()[-1])
    (winner,) = [w for w, outcome in outcomes.items() if outcome == "committed"]
    (loser,) = set(outcomes) - {winner}
    assert outcomes[loser].startswith("java.nio.file.FileAlreadyExistsException caused by "
                                      "org.apache.hadoop.fs.s3a.RemoteFileChangedException"), outcomes[loser]
    fs, path = filesystem(f"s3a://{BUCKET}/{key}")
    with fs.open_input_stream(path) as src:
        assert set(src.read().decode().splitlines()) == {json.dumps({"writer": winner})}  # whole, one writer's
    # S3 refused the second upload itself
    assert _put_statuses(s3_log, key) == ["200", "412"]


def test_a_commit_whose_reply_is_lost_is_taken_as_its_own_not_committed_again(s3, s3_log):
    """S3 stores a commit file and the reply is lost (a relay resets the connection instead of
    passing it on); S3A's retry is refused (412) by that very object. The log store reads it
    back, finds its own bytes and reports the commit made. Taken for a rival's commit, Delta
    would commit the same files again at the next version: one write twice in the history,
    read twice by a stream or the change feed."""
    from faultkit import LostReplyLink

    table = "lost-reply/events"
    key = f"{table}/_delta_log/{1:020d}.json"  # the second append's commit
    link = LostReplyLink(_server_port(s3), f"{BUCKET}/{key}")
    env = {**os.environ, **QUICK_JVMS, **s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{link.port}",
           "PYSPARK_PYTHON": sys.executable}
    written = subprocess.run([sys.executable, str(REPO / "tests" / "s3_writers.py"), "plain",
                              f"s3a://{BUCKET}/{table}", "3"], env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    assert written.returncode == 0, written.stdout[-3000:] + written.stderr[-3000:]
    assert link.lost.is_set() and _put_statuses(s3_log, key) == ["200", "412"]  # stored, then refused
    assert json.loads(written.stdout.strip().splitlines()[-1]) == [0, 1, 2]
    assert [k.rpartition("/")[2] for k in _commits(s3, table)] == [f"{v:020d}.json" for v in range(3)]


def test_a_pointer_whose_reply_is_lost_publishes_one_version(s3, s3_log, monkeypatch):
    """The same lost reply for a model version's pointer, written by boto3 (`create_once`):
    the publisher takes the object for its own, and the run is one version, not two."""
    from faultkit import LostReplyLink

    root = f"s3a://{BUCKET}/lost-reply/models"
    key = "lost-reply/models/gbt/v1.json"
    link = LostReplyLink(_server_port(s3), f"{BUCKET}/{key}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{link.port}")
    published = modelstore.publish(root, "gbt", _stage(root, "its reply lost"))
    assert link.lost.is_set() and _put_statuses(s3_log, key) == ["200", "412"]
    assert published.version == 1 and [v.name for v in modelstore.versions(root, "gbt")] == ["gbt/v1"]
    assert not create_once(f"{root}/gbt/v1.json", b"another writer's pointer")


def _server_port(env: dict[str, str]) -> int:
    """The S3 server's port, for a relay in front of it."""
    return int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])


def _put_statuses(s3_log: Path, key: str) -> list[str]:
    """The HTTP statuses of the server's PUTs of `key`, sorted, less server errors: moto's
    server once failed one of two simultaneous PUTs with a 500 that stored nothing, and the
    client retries those, as on AWS."""
    puts = [line for line in s3_log.read_text().splitlines() if f"PUT /{BUCKET}/{key} " in line]
    statuses = sorted(line.split('" ')[-1].split()[0] for line in puts)
    return [s for s in statuses if not s.startswith("5")]


@pytest.mark.slow
def test_two_applications_appending_to_one_s3_table_land_every_commit_once(s3):
    """Two Spark applications append 12 one-row commits each to one new table at once
    (each through `lake.append_once`, as ingest appends a batch): all 24 are in the log,
    each once, at contiguous versions."""
    import boto3

    prefix, commits = "concurrent/events", 12
    appender = [sys.executable, str(REPO / "tests" / "s3_writers.py"), "append", f"s3a://{BUCKET}/{prefix}"]
    env = {**os.environ, **QUICK_JVMS, **s3, "PYSPARK_PYTHON": sys.executable}
    writers = {name: subprocess.Popen([*appender, name, str(commits)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for name in ("a", "b")}
    for name, writer in writers.items():
        said, _ = writer.communicate(timeout=600)
        assert writer.returncode == 0, f"writer {name}:\n{said[-3000:]}"

    client, log = boto3.client("s3"), f"{prefix}/_delta_log/"
    files = sorted(k for k in _keys(s3, log) if k.endswith(".json"))
    apps = []
    for key in files:
        lines = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()
        apps += [json.loads(line)["txn"]["appId"] for line in lines if '"txn"' in line]
    assert [f.removeprefix(log) for f in files] == [f"{v:020d}.json" for v in range(len(files))]
    assert sorted(apps) == sorted(f"{w}-{i}" for w in "ab" for i in range(commits))  # each once


def _keys(env: dict[str, str], prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _commits(env: dict[str, str], table: str) -> list[str]:
    return sorted(k for k in _keys(env, f"{table}/_delta_log/") if k.endswith(".json"))


@pytest.mark.slow
def test_s3_lost_in_the_middle_of_an_ingest_write_leaves_nothing_and_the_rerun_lands_it_once(s3):
    """The S3 server unreachable while ingest writes (a relay in front of it is cut: every
    connection reset, new ones refused): the job fails naming the object and the endpoint,
    nothing becomes visible, and once the server is back the same batch lands once, reconciled."""
    import boto3
    from faultkit import CuttableLink, click_lines

    lake, landing = "faults/lakehouse", "faults/landing"
    records = click_lines("s3", 20_000) + ["not\ta\trecord"]  # one to quarantine
    boto3.client("s3").put_object(Bucket=BUCKET, Key=f"{landing}/b1/part-00000.tsv",
                                  Body="".join(f"{r}\n" for r in records).encode())
    link = CuttableLink(_server_port(s3))
    env = {**os.environ, **QUICK_JVMS, **s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{link.port}",
           "SPARKML_EXT_LAKEHOUSE": f"s3a://{BUCKET}/{lake}", "SPARKML_EXT_LANDING": f"s3a://{BUCKET}/{landing}",
           "SPARKML_EXT_TRACKING": "disabled", "PYSPARK_PYTHON": sys.executable}
    # few retries (S3A's defaults retry for minutes), so that the lost server fails the job soon
    retries = "--set=spark={spark.hadoop.fs.s3a.retry.limit: '1', spark.hadoop.fs.s3a.attempts.maximum: '1'}"
    ingest = [str(Path(sys.executable).parent / "sparkml-ext"), "ingest", "--batch-id=b1",
              "--pipeline", "conf/pipelines/clicks.yaml", "--json"]

    job = subprocess.Popen([*ingest, retries], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 300
    while not any("/_staging/" in k and not k.endswith("/") for k in _keys(s3, lake)):
        assert job.poll() is None and time.monotonic() < deadline, "ingest ended before it wrote"
        time.sleep(0.05)
    link.cut()  # the staged records are being written
    _, said = job.communicate(timeout=600)
    assert job.returncode != 0
    failures = [line for line in said.splitlines() if line.startswith("ingest failed:")]
    assert len(failures) == 1, said[-5000:]
    (failure,) = failures
    # the object being written (a staged record file) or read (the landing file), whichever
    # request the cut hit first, and the endpoint; never "corrupt file" for an outage
    assert f"s3a://{BUCKET}/faults/" in failure and f"127.0.0.1:{link.port}" in failure, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    tables = [f"{lake}/bronze/clicks", f"{lake}/quarantine/clicks", f"{lake}/_meta/ingest_batches"]
    assert [_commits(s3, t) for t in tables] == [[], [], []]  # nothing a reader would see

    link.restore()
    report = report_of(subprocess.run(ingest, cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                                      check=False))
    assert (report["rows_read"], report["accepted"], report["quarantined"]) == (20_001, 20_000, 1)
    assert [len(_commits(s3, t)) > 0 for t in tables] == [True, True, True]
    assert len(_commits(s3, tables[0])) == 1  # bronze: the batch in one commit
