"""An existing Delta table as ingest's source: a snapshot first, then its change data feed,
each version exactly once. Real local Spark and Delta; the source tables are made here."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from clickdata import CLICKS, clicks_config
from pyspark.sql import functions as F
from shipping import run_cli

from sparkml_ext import lake
from sparkml_ext.cli import EXIT_CONFIG, EXIT_INPUT, EXIT_OK, pipeline_batches
from sparkml_ext.config import ConfigError
from sparkml_ext.ingest import IngestError
from sparkml_ext.source_table import ingest_table, range_fingerprint

pytestmark = pytest.mark.spark


def _columns(cfg) -> str:
    """The source table's DDL: the clicks schema, but i1 is text (so it can hold a bad value)."""
    return ", ".join(f"`{c}` {'string' if c == 'i1' else t}" for c, t in cfg.source.schema.items())


def _event(cfg, event_id: str, day: int = 1, label: int = 0, i1: str = "1.5", user: int = 1) -> tuple:
    values = {"event_id": event_id, "user_id": user, "event_time": datetime(2026, 1, day, 10), "label": label,
              "i1": i1}
    return tuple(values.get(c, 2.0 if t == "double" else "a1") for c, t in cfg.source.schema.items())


def _source(spark, cfg, path, events: list[tuple], change_feed: bool = True) -> None:
    (spark.createDataFrame(events, _columns(cfg)).write.format("delta")
     .option("delta.enableChangeDataFeed", str(change_feed).lower()).save(str(path)))


def _append(spark, cfg, path, events: list[tuple]) -> None:
    spark.createDataFrame(events, _columns(cfg)).write.format("delta").mode("append").save(str(path))


def _versions(spark, cfg) -> dict:
    return {t: lake.current_version(spark, cfg.table_path(t)) for t in ("bronze", "quarantine", "batches")}


def _bronze(spark, cfg) -> dict:
    return {r.event_id: r.label for r in spark.read.format("delta").load(cfg.table_path("bronze")).collect()}


@pytest.fixture
def source(tmp_path):
    return tmp_path / "source"


def _config(tmp_path, source, *overrides: str):
    return clicks_config(tmp_path, "source.format=delta", f"source.path={source}", *overrides)


def test_snapshot_then_only_the_changes_then_nothing_new(spark, tmp_path, source):
    cfg = _config(tmp_path, source)
    _source(spark, cfg, source, [_event(cfg, "e1"), _event(cfg, "e2"), _event(cfg, "e3"),
                                 _event(cfg, "e4", i1="n/a")])
    first = ingest_table(spark, cfg)
    assert (first.batch_id, first.source_range, first.rows_read, first.accepted) == ("v0-v0", [0, 0], 4, 3)
    assert first.reasons == {"bad_type:i1": 1}
    quarantined = spark.read.format("delta").load(cfg.table_path("quarantine")).head()
    assert quarantined.source_file == f"delta.`{source}`@v0" and json.loads(quarantined.raw_record)["i1"] == "n/a"

    _append(spark, cfg, source, [_event(cfg, "e5", day=2), _event(cfg, "e6", day=2)])  # v1
    spark.sql(f"UPDATE delta.`{source}` SET label = 1 WHERE event_id = 'e2'")  # v2
    spark.sql(f"DELETE FROM delta.`{source}` WHERE event_id = 'e3'")  # v3
    changes = ingest_table(spark, cfg)
    assert (changes.batch_id, changes.source_range) == ("v1-v3", [1, 3])
    assert (changes.rows_read, changes.accepted, changes.quarantined) == (3, 2, 1)  # e5, e6; e2 again
    assert changes.reasons == {"duplicate_key_existing:v0-v0": 1}
    assert changes.skipped_lines == {"delete": 1, "update_preimage": 1}
    assert "1 delete change row(s) skipped" in changes.summary()
    assert _bronze(spark, cfg) == {"e1": 0, "e2": 0, "e3": 0, "e5": 0, "e6": 0}  # a delete lands nowhere

    versions = _versions(spark, cfg)
    again = ingest_table(spark, cfg)
    assert again.already_ingested and (again.batch_id, again.accepted) == ("v1-v3", 2)
    assert f"nothing new in delta.`{source}` after version 3" in again.summary()
    assert _versions(spark, cfg) == versions


def test_an_update_replaces_the_older_row_with_on_existing_key_update(spark, tmp_path, source):
    cfg = _config(tmp_path, source, "ingest.on_existing_key=update")
    _source(spark, cfg, source, [_event(cfg, "e1"), _event(cfg, "e2")])
    ingest_table(spark, cfg)
    _append(spark, cfg, source, [_event(cfg, "e3")])  # v1: inserted, then updated in the same range
    spark.sql(f"UPDATE delta.`{source}` SET label = 1 WHERE event_id IN ('e2', 'e3')")  # v2

    report = ingest_table(spark, cfg)
    assert (report.batch_id, report.rows_read, report.accepted, report.updated) == ("v1-v2", 3, 2, 1)
    assert report.reasons == {"duplicate_key": 1}  # e3's insert: its update in v2 is the later record
    assert _bronze(spark, cfg) == {"e1": 0, "e2": 1, "e3": 1}


def test_a_run_that_died_after_its_claim_is_finished_over_the_same_range(spark, tmp_path, source):
    """A run claimed v1-v1 in the ledger and died (the claim is all it left); v2 came after.
    The next run retries exactly that range, not one widened to v2, and the one after takes
    v2: no version is read twice. (A death after bronze's commit is `land`'s half-done batch,
    tested in test_ingest.py.)"""
    cfg = _config(tmp_path, source)
    _source(spark, cfg, source, [_event(cfg, "e1")])
    ingest_table(spark, cfg)
    _append(spark, cfg, source, [_event(cfg, "e2")])  # v1
    name, tables = f"delta.`{source}`", [cfg.table_path("bronze"), cfg.table_path("quarantine")]
    lake.claim_batch(spark, cfg.table_path("batches"), None, "ingest", "v1-v1", range_fingerprint(name, 1, 1), tables)
    _append(spark, cfg, source, [_event(cfg, "e3")])  # v2, after the crash

    retried = ingest_table(spark, cfg)
    assert (retried.batch_id, retried.accepted, retried.quarantined) == ("v1-v1", 1, 0)
    rest = ingest_table(spark, cfg)
    assert (rest.batch_id, rest.accepted, rest.quarantined) == ("v2-v2", 1, 0)
    assert spark.read.format("delta").load(cfg.table_path("bronze")).groupBy("event_id").count() \
        .where(F.col("count") > 1).count() == 0
    assert set(_bronze(spark, cfg)) == {"e1", "e2", "e3"}


def test_a_table_without_its_change_feed_is_refused_naming_the_fix(spark, tmp_path, source):
    cfg = _config(tmp_path, source)
    _source(spark, cfg, source, [_event(cfg, "e1")], change_feed=False)
    with pytest.raises(IngestError, match=r"source.path: .*ALTER TABLE delta.`.*` SET TBLPROPERTIES "
                                          r"\(delta.enableChangeDataFeed = true\)"):
        ingest_table(spark, cfg)
    assert _versions(spark, cfg) == {"bronze": None, "quarantine": None, "batches": None}

    spark.sql(f"ALTER TABLE delta.`{source}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")  # v1
    ingest_table(spark, cfg)  # the snapshot at v1
    spark.sql(f"ALTER TABLE delta.`{source}` SET TBLPROPERTIES (delta.enableChangeDataFeed = false)")  # v2
    _append(spark, cfg, source, [_event(cfg, "e2")])  # v3: its change is not recorded
    spark.sql(f"ALTER TABLE delta.`{source}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")  # v4
    versions = _versions(spark, cfg)
    with pytest.raises(IngestError, match=r"did not record its changes for all of versions 2 to 4.*ALTER TABLE"):
        ingest_table(spark, cfg)
    assert _versions(spark, cfg) == versions


def test_a_declared_column_the_table_lacks_is_refused_naming_it(spark, tmp_path, source):
    cfg = _config(tmp_path, source)
    spark.createDataFrame([("e1", 1)], "event_id string, user_id bigint").write.format("delta") \
        .option("delta.enableChangeDataFeed", "true").save(str(source))
    with pytest.raises(IngestError, match=r"source.schema: delta.`.*` has no column 'event_time'"):
        ingest_table(spark, cfg)
    assert _versions(spark, cfg) == {"bronze": None, "quarantine": None, "batches": None}


@pytest.mark.parametrize(("overrides", "said"), [
    (["source.table=db.t"], "source.table: a delta source is source.path .* or source.table .*, not both"),
    (["source.path=", "source.table=null"], "source.path: a delta source needs the table's path"),
    (["source.path=", "source.table=db.t; drop"], "source.table: 'db.t; drop' is not"),
])
def test_a_delta_source_is_named_by_exactly_one_of_path_and_table(tmp_path, overrides, said):
    with pytest.raises(ConfigError, match=rf"clicks.yaml: {said}"):
        _config(tmp_path, tmp_path / "source", *overrides)
    with pytest.raises(ConfigError, match="source.table: only a delta source is named by a catalog table"):
        clicks_config(tmp_path, "source.table=db.t")


def test_a_catalog_table_through_ingest_and_pipeline(spark, tmp_path):
    """`ingest` and `pipeline` over a table named in the session's catalog; neither takes a batch id."""
    cfg = clicks_config(tmp_path, "source.format=delta", "source.path=", "source.table=sources.clicks")
    spark.sql("CREATE SCHEMA IF NOT EXISTS sources")
    spark.sql(f"CREATE TABLE sources.clicks ({_columns(cfg)}) USING delta "
              "TBLPROPERTIES (delta.enableChangeDataFeed = true)")  # v0
    events = [_event(cfg, f"e{i}", day=1 + i % 6, label=i % 2, user=1 + i % 3, i1=str(i)) for i in range(60)]
    spark.createDataFrame(events[:40], _columns(cfg)).write.insertInto("sources.clicks")  # v1
    where = [f"--pipeline={CLICKS}", f"--set=lakehouse={tmp_path}/lake", "--set=source.format=delta",
             "--set=source.path=", "--set=source.table=sources.clicks"]

    code, printed, err = run_cli("ingest", *where)
    assert code == EXIT_OK, err
    assert "ingest batch v0-v1: read 40, accepted 40" in printed
    assert run_cli("ingest", *where, "--batch-id=v0-v1")[0] == EXIT_CONFIG
    assert run_cli("pipeline", *where, "--batch-id=v0-v1")[0] == EXIT_CONFIG
    assert pipeline_batches(spark, cfg) == [None]

    spark.createDataFrame(events[40:], _columns(cfg)).write.insertInto("sources.clicks")  # v2
    quick = ["--set=generate=null", "--set=train_torch=null", "--set=train_mllib.params={maxIter: 3, seed: 7}",
             "--set=train_mllib.grid={}", "--set=tracking.mode=disabled"]
    code, printed, err = run_cli("pipeline", *where, *quick, "--json")
    assert code == EXIT_OK, err + printed[-3000:]
    stages = json.loads(printed[printed.index("\n{") + 1:])
    assert next(iter(stages)) == "ingest v2-v2" and stages["ingest v2-v2"]["accepted"] == 20
    assert "features" in stages and spark.read.format("delta").load(cfg.table_path("bronze")).count() == 60
    code, printed, err = run_cli("ingest", *where)
    assert code == EXIT_OK and "nothing new in sources.clicks after version 2" in printed


def test_a_missing_source_table_is_refused(spark, tmp_path):
    cfg = _config(tmp_path, tmp_path / "nowhere")
    with pytest.raises(IngestError, match=r"source.path: delta.`.*nowhere` is not a Delta table"):
        ingest_table(spark, cfg)
    code, _, err = run_cli("ingest", f"--pipeline={CLICKS}", f"--set=lakehouse={tmp_path}/lake",
                           "--set=source.format=delta", f"--set=source.path={tmp_path}/nowhere")
    assert code == EXIT_INPUT and "is not a Delta table" in err
