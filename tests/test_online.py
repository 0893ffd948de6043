"""Online scoring: publish-online, then `sparkml-ext serve` (real uvicorn, real HTTP) scores as
the batch score job does. Real Spark, Delta, torch DDP training and SQLite throughout.

The module's lakehouse: 22,000 generated events in two time-sliced batches. Batch 0 is
ingested, featured, a torch model trained and the histories published; the server starts;
batch 1 lands and is published while a client keeps scoring; the batch `score` job then
scores the feature table. Batch 1's 11,000 events are the held-out range the parity test
replays.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import typing
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from clickdata import CLICKS, as_events, clicks_config, line, write_batch
from loopback import free_port
from pyspark.sql import functions as F

from sparkml_ext import lake, modelstore, storage
from sparkml_ext.bridge.predict import torch_predictions
from sparkml_ext.cli import generate_into_source
from sparkml_ext.config import Aggregate, ConfigError, GenerateConfig
from sparkml_ext.feature_spec import feature_columns
from sparkml_ext.features import build_features, engineer
from sparkml_ext.ingest import ingest_batch
from sparkml_ext.online.errors import ServeError
from sparkml_ext.online.features import (
    EMPTY,
    History,
    OnlineFeatures,
    check_servable,
    epoch_seconds,
    spark_xxhash64,
)
from sparkml_ext.online.publish import publish_online
from sparkml_ext.online.scorer import Scorer
from sparkml_ext.online.store import SQLiteStore
from sparkml_ext.score import score
from sparkml_ext.train_mllib import train_mllib
from sparkml_ext.train_torch import train_torch

pytestmark = pytest.mark.slow
OVERRIDES = ["train_torch.epochs=1", "train_torch.batch_size=256", "train_torch.embedding_rows=1024",
             "train_mllib.model=logistic_regression", "train_mllib.params={maxIter: 3}", "train_mllib.grid={}",
             "online.late_tolerance=4d", "online.poll_seconds=0.3", "online.max_events=300"]
HELD_OUT = "batch-00001"
TOLERANCE = 1e-5


@dataclass
class Server:
    """`sparkml-ext serve` in a process of its own, on a port of its own."""

    root: Path
    port: int
    model: str = "torch/latest"
    process: subprocess.Popen | None = None
    log: list[Path] = field(default_factory=list)

    def command(self, model: str) -> list[str]:
        sets = [f"lakehouse={self.root}/lake", f"source.path={self.root}/landing", *OVERRIDES]
        return [sys.executable, "-m", "sparkml_ext.cli", "serve", "--pipeline", CLICKS,
                *[f"--set={s}" for s in sets], "--model", model, "--port", str(self.port)]

    def start(self) -> Server:
        self.log.append(self.root / f"serve-{len(self.log)}.log")
        with open(self.log[-1], "wb") as out:
            self.process = subprocess.Popen(self.command(self.model), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log[-1].read_text()
            try:
                if get(self.url("/health"))[0] == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not answer in 120 s: {self.log[-1].read_text()}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def score(self, body: object) -> tuple[int, dict]:
        return post(self.url("/score"), json.dumps(body).encode())


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Hammer(threading.Thread):
    """Scores one event again and again until stopped: each answer's status, model and
    feature version."""

    def __init__(self, server: Server, event: dict):
        super().__init__(daemon=True)
        self.server, self.event, self.answers, self.stop = server, event, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            status, body = self.server.score(self.event)
            self.answers.append((status, body.get("model"), body.get("feature_version"), body.get("detail")))

    def finish(self) -> list:
        self.stop.set()
        self.join(60)
        return self.answers


@pytest.fixture(scope="module")
def online(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    cfg = clicks_config(root, *OVERRIDES)
    generate_into_source(spark, cfg, GenerateConfig(rows=22_000, batches=2, malformed_rate=0.0))
    ingest_batch(spark, cfg, "batch-00000")
    build_features(spark, cfg)
    train_torch(spark, cfg)
    train_mllib(spark, cfg)
    first = publish_online(spark, cfg)
    server = Server(root, free_port()).start()
    latest = lake.read_version(spark, cfg.table_path("bronze"))[0].orderBy(F.desc("event_time")).first()
    hammer = Hammer(server, as_events([latest])[0])
    hammer.start()
    ingest_batch(spark, cfg, HELD_OUT)
    build_features(spark, cfg)
    time.sleep(1)
    second = publish_online(spark, cfg)
    time.sleep(1)
    during_publish = hammer.finish()
    scored = score(spark, cfg, "torch/latest")
    sample = lake.read_version(spark, cfg.table_path("bronze"))[0].where(
        F.col(lake.BATCH_COLUMN) == HELD_OUT).orderBy("event_id").first()
    yield {"root": root, "cfg": cfg, "server": server, "publishes": (first, second), "scored": scored,
           "during_publish": during_publish, "sample": as_events([sample])[0]}
    server.kill()


def test_a_publish_is_picked_up_without_dropping_a_request(online):
    first, second = online["publishes"]
    assert first["feature_version"] == 0 and second["feature_version"] == 1
    assert "changed entities only" in second["summary"]  # incremental: bronze v0 -> v1
    answers = online["during_publish"]
    assert answers and all(status == 200 for status, *_ in answers), {a for a in answers if a[0] != 200}
    versions = [version for _, _, version, _ in answers]
    assert versions[0] == 0 and versions[-1] == 1
    assert versions == sorted(versions)  # never back to the old publish


def test_online_scores_equal_the_batch_score_jobs_over_a_held_out_range(spark, online):
    """Batch 1's events, replayed shuffled (so later events come first: out of order) in
    requests of 250 from 4 clients at once; each score equals the batch job's for the same
    event, model and feature version. Every event's history in the store holds events after
    it too, which the windows must leave out."""
    cfg, server, scored = online["cfg"], online["server"], online["scored"]
    bronze = lake.read_version(spark, cfg.table_path("bronze"))[0]
    events = as_events(bronze.where(F.col(lake.BATCH_COLUMN) == HELD_OUT).collect())
    assert len(events) >= 10_000
    random.Random(7).shuffle(events)
    batch = {r.event_id: r.score for r in spark.read.format("delta").load(cfg.table_path("predictions"))
             .where((F.col("model") == scored["model"]) & (F.col("feature_version") == scored["feature_version"]))
             .select("event_id", "score").collect()}
    requests = [events[i:i + 250] for i in range(0, len(events), 250)]
    answers: list = [None] * len(requests)

    def client(k: int) -> None:
        for i in range(k, len(requests), 4):
            answers[i] = server.score({"events": requests[i]})

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    online_scores = {}
    for status, body in answers:
        assert status == 200, body
        assert (body["model"], body["feature_version"]) == (scored["model"], scored["feature_version"])
        online_scores |= {p["key"]: p["score"] for p in body["predictions"]}
    assert set(online_scores) == {e["event_id"] for e in events}
    gaps = np.array([abs(online_scores[k] - batch[k]) for k in online_scores])
    assert gaps.max() <= TOLERANCE, (gaps.max(), int((gaps > TOLERANCE).sum()))


def test_new_entities_and_late_events_score_as_the_batch_definitions_would(spark, online):
    """Events that are in no table yet: 20 of users never seen (cold start) and 20 of known
    users at times between their published events (late arrivals). The batch side: bronze
    with these events added, through the features job's own `engineer` and the torch scoring
    that the score job runs."""
    cfg, server, scored = online["cfg"], online["server"], online["scored"]
    bronze = lake.read_version(spark, cfg.table_path("bronze"))[0]
    # One event per user: each is scored online against the published histories alone,
    # so none may be another's history on the batch side either.
    held = (bronze.where(F.col(lake.BATCH_COLUMN) == HELD_OUT).dropDuplicates(["user_id"])
            .orderBy("event_id").limit(40).collect())
    top_user = bronze.agg(F.max("user_id")).first()[0]
    events = as_events(held)
    for i, event in enumerate(events):
        event["event_id"] = f"new-{i:02d}"
        if i < 20:
            event["user_id"] = top_user + 1000 + i  # never seen
        else:
            event["event_time"] = event["event_time"][:-2] + f"{(int(event['event_time'][-2:]) + 17) % 60:02d}"
    status, body = server.score({"events": events})
    assert status == 200, body
    columns = list(cfg.source.schema)
    as_text = ", ".join(f"`{c}` {'string' if t == 'timestamp' else t}" for c, t in cfg.source.schema.items())
    added = spark.createDataFrame([tuple(e[c] for c in columns) for e in events], as_text).selectExpr(
        *[f"CAST(`{c}` AS {t}) AS `{c}`" for c, t in cfg.source.schema.items()])
    history = bronze.select(*cfg.source.schema).unionByName(added)
    features = engineer(history, cfg.features, "event_id", "event_time").where(F.col("event_id").startswith("new-"))
    stored = modelstore.resolve(cfg.table_path("models"), scored["model"])
    expected = {r.event_id: r.score for r in torch_predictions(features, f"{stored.uri}/model.pt", "event_id")
                .select("event_id", "score").collect()}
    got = {p["key"]: p["score"] for p in body["predictions"]}
    assert set(got) == set(expected) and len(got) == 40
    assert max(abs(got[k] - expected[k]) for k in got) <= TOLERANCE


def test_an_event_older_than_the_published_histories_cover_is_refused(online):
    server = online["server"]
    event = dict(online["sample"], event_time="2025-06-01 00:00:00")
    status, body = server.score([event, event])
    assert status == 422
    assert body["detail"].startswith("events[0].event_time: before") and "online.late_tolerance" in body["detail"]


def test_bad_requests_are_refused_naming_the_field_and_the_server_goes_on(online):
    server = online["server"]
    good = online["sample"]
    missing = {k: v for k, v in good.items() if k != "i7"}
    cases = {
        "missing field": (server.score(missing), 422, "i7: Field required"),
        "missing in a list": (server.score([good, missing]), 422, "events[1].i7: Field required"),
        "wrong type": (server.score(dict(good, user_id="abc")), 422, "user_id: Input should be a valid integer"),
        "bad time": (server.score(dict(good, event_time="yesterday")), 422, "event_time: Input should be"),
        "null key": (server.score(dict(good, event_id=None)), 422, "event_id: Input should be a valid string"),
        "unknown model": (server.score({"events": [good], "model": "torch/v99"}), 404, "model torch/v99 not found"),
        "a path for a model": (server.score({"events": [good], "model": "../../etc/passwd"}), 422,
                               "is not a reference like torch/v3"),
        "a path after the kind": (server.score({"events": [good], "model": "torch/../../x"}), 422,
                                  "is not a reference like"),
        "an MLlib model": (server.score({"events": [good], "model": "logistic_regression/latest"}), 422,
                           "would need a SparkSession"),
        "too many events": (server.score([good] * 301), 413, "online.max_events allows 300"),
        "too many bytes": (_declared_too_long(server), 413, "bytes; at most 4915200"),
        "not JSON": (post(server.url("/score"), b"{event"), 400, "the body is not JSON"),
        "no events": (server.score([]), 422, "non-empty list of events"),
        "unknown key": (server.score({"events": [good], "modle": "x"}), 422, "modle: unknown key"),
    }
    for case, ((status, body), expected_status, says) in cases.items():
        assert (status, says in body.get("detail", "")) == (expected_status, True), (case, body)
    status, body = server.score(good)
    assert status == 200 and body["predictions"][0]["key"] == good["event_id"]
    assert get(server.url("/health"))[0] == 200
    # Requests that arrive together are scored in one call: each still gets its own answer.
    old = dict(good, event_time="2025-06-01 00:00:00")
    bodies = [good, missing, [good, good], old, {"events": [good], "model": "torch/v99"}] * 8
    answers: list = [None] * len(bodies)
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, server.score(bodies[i])))
               for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in answers] == [200, 422, 200, 422, 404] * 8
    assert all(len(body["predictions"]) == (len(b) if isinstance(b, list) else 1)
               for b, (status, body) in zip(bodies, answers, strict=True) if status == 200)


def _declared_too_long(server: Server) -> tuple[int, dict]:
    """A request whose Content-Length passes the limit: refused before its body is read."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/score")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(10**9))
    connection.endheaders()
    response = connection.getresponse()
    try:
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_serve_refuses_an_mllib_model_with_its_reason(online):
    server = Server(online["root"], free_port())
    run = subprocess.run(server.command("logistic_regression/latest"), capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 3, run.stderr
    assert "would need a SparkSession" in run.stderr and "train-torch" in run.stderr


def test_a_restarted_server_serves_the_same_scores(online):
    server = online["server"]
    events = [online["sample"]] * 3
    before = server.score(events)
    server.kill()
    server.start()
    after = server.score(events)
    assert before[0] == after[0] == 200
    assert before[1] == after[1]


def test_a_later_publish_rewrites_only_the_changed_entities_and_equals_a_full_one(spark, online):
    cfg, root = online["cfg"], online["root"]
    store = SQLiteStore(cfg.online_store())
    before = _histories(store.path)
    users = sorted({value for entity, value in before})[:3]
    newest = lake.read_version(spark, cfg.table_path("bronze"))[0].agg(F.max("event_time")).first()[0]
    when = (newest.replace(microsecond=0)).strftime("%Y-%m-%d %H:%M:%S")
    write_batch(root / "landing" / "batch-00002",
                [line(f"late-{u}", u, when, "1") for u in users])
    ingest_batch(spark, cfg, "batch-00002")
    build_features(spark, cfg)
    report = publish_online(spark, cfg)
    assert report["counts"] == {"histories written": 3}
    again = publish_online(spark, cfg)
    assert "already published" in again["summary"] and again["counts"] == {"histories written": 0}
    after = _histories(store.path)
    assert {k for k in after if after[k] != before.get(k)} == {("user_id", u) for u in users}
    full = clicks_config(root, *OVERRIDES, f"online.store={root}/full.sqlite")
    publish_online(spark, full)
    assert _histories(f"{root}/full.sqlite") == after
    drop = {"published_at"}
    assert {k: v for k, v in store.facts().items() if k not in drop} == \
           {k: v for k, v in SQLiteStore(f"{root}/full.sqlite").facts().items() if k not in drop}


def _histories(path: str) -> dict:
    with sqlite3.connect(path) as connection:
        return {(e, v): pa.ipc.open_stream(b).read_all() for e, v, b in connection.execute(
            "SELECT entity, value, events FROM history")}


def test_a_new_model_version_is_served_without_dropping_a_request(online):
    cfg, server = online["cfg"], online["server"]
    hammer = Hammer(server, online["sample"])
    hammer.start()
    time.sleep(0.5)
    models = cfg.table_path("models")
    current = modelstore.resolve(models, "torch/latest")
    staged = modelstore.staging(models, "torch")
    for name in ("model.pt", "card.json"):
        storage.copy_file(f"{current.uri}/{name}", f"{staged}/{name}")
    published = modelstore.publish(models, "torch", staged)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not hammer.answers or hammer.answers[-1][1] != published.name):
        time.sleep(0.2)
    answers = hammer.finish()
    assert all(status == 200 for status, *_ in answers)
    assert answers[0][1] == current.name and answers[-1][1] == published.name


def test_the_two_executors_agree_on_every_statistic_and_transform(spark, fresh_lake):
    """A spec with every statistic, both numeric transforms with clips, a float column, a
    fractional label (its rate summed in 2^-24 units) and two entities, one of them text:
    the columns computed online from the published histories equal the feature table's,
    for every event of the lakehouse."""
    root = fresh_lake("online-executors")
    every = f"[{', '.join(typing.get_args(Aggregate))}]"  # a statistic added to the config is tested here
    cfg = clicks_config(
        root, "source.schema.label=double", "source.schema.i2=float", "online.late_tolerance=30d",
        "tables.bronze=bronze/every", "tables.batches=_meta/every", "tables.quarantine=quarantine/every",
        "tables.features=features/every",
        "features.numeric={i1: {transform: none, clip: [0, 50]}, i2: log1p, i3: {transform: log1p, clip: [-5, 9]}}",
        f"features.entities={{user_id: {{windows: [1h, 1d], aggregates: {{i1: {every}, i2: {every}}}}}, "
        f"c1: {{windows: [2h], aggregates: {{i3: [mean, stddev], c2: [count]}}}}}}",
        "features.categorical=[c1, c2, c3]")
    for batch in sorted(p.name for p in (root / "landing").iterdir()):
        ingest_batch(spark, cfg, batch)
    build_features(spark, cfg)
    publish_online(spark, cfg)
    table = lake.read_version(spark, cfg.table_path("features"))[0]
    bronze = lake.read_version(spark, cfg.table_path("bronze"))[0]
    rows = bronze.select(*cfg.source.schema).collect()
    features = {r.event_id: r for r in table.collect()}
    online = OnlineFeatures(cfg.features, cfg.source.schema, "event_id")
    events = {c: [getattr(r, c) for r in rows] for c in online.inputs}
    seconds = np.array([epoch_seconds(r.event_time) for r in rows])
    keys = {e: [str(v) for v in events[e] if v is not None] for e in cfg.features.entities}
    _, found = SQLiteStore(cfg.online_store()).read(keys)
    histories = {e: [EMPTY if v is None else History.from_arrow(pa.ipc.open_stream(found[(e, str(v))]).read_all())
                     for v in events[e]] for e in cfg.features.entities}
    computed = online.compute(events, seconds, histories)
    columns = feature_columns(cfg.features)
    assert set(computed) == {*columns["numeric"], *columns["categorical_ids"]}
    assert cfg.features.label_rate and {"user_id_stddev_i2_1h", "c1_count_c2_2h"} <= set(computed)
    for name, values in computed.items():
        expected = np.array([float(features[r.event_id][name]) for r in rows])
        assert np.allclose(values, expected, rtol=1e-12, atol=1e-12), (name, np.abs(values - expected).max())


@pytest.mark.parametrize("value, spark_type", [
    ("a1b2c3d4", "string"), ("", "string"), ("zürich ☃ 東京", "string"), (7, "int"), (-3, "smallint"),
    (2**40 + 5, "bigint"), (-1, "bigint"), (True, "boolean"), (False, "boolean"), (100, "tinyint")])
def test_categories_hash_as_spark_hashes_them(spark, value, spark_type):
    expected = spark.range(1).select(F.xxhash64(F.lit(value).cast(spark_type))).first()[0]
    assert spark_xxhash64(value, spark_type) == expected


@pytest.mark.parametrize("override, says", [
    ("features.categorical=[c1, i1]", "features.categorical: online serving hashes"),
    ("features.entities={i2: {windows: [1h]}}", "features.entities.i2: online serving keys histories"),
])
def test_a_spec_whose_columns_could_not_match_online_is_refused_naming_the_key(tmp_path, override, says):
    with pytest.raises(ConfigError, match=says):
        check_servable(clicks_config(tmp_path, override))


def test_a_model_trained_on_another_spec_is_refused(online):
    """Same column names, other meaning: ids hashed into other buckets."""
    other = clicks_config(online["root"], *OVERRIDES, "features.hash_buckets=1024")
    with pytest.raises(ServeError, match=r"torch/v\d+ was trained on features of another spec"):
        Scorer(other, "torch/latest", SQLiteStore(other.online_store()))
