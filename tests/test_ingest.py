"""Ingest on real local Spark + Delta: every record lands once, in bronze or quarantine."""

from __future__ import annotations

import json

import pytest
from chispa import assert_df_equality
from clickdata import clicks_config, line, write_batch
from pyspark.sql import functions as F

from sparkml_ext import lake
from sparkml_ext.config import ConfigError
from sparkml_ext.ingest import IngestError, ingest_batch


@pytest.fixture
def cfg_for(tmp_path):
    def make(*overrides: str):
        return clicks_config(tmp_path, *overrides)

    return make


GOOD = [line(f"e{i}", user_id=str(i % 3 + 1), label=str(i % 2)) for i in range(12)]
BAD = {
    "check:label_is_binary": line("bad-label", label="7"),
    "bad_type:i1": line("bad-number", numeric="n/a!"),
    "malformed": "a\tline\twith too few fields",
    "missing:event_id": line("", user_id="4"),
    "duplicate_key": line("e1", user_id="2", label="1"),
    "bad_type:event_time": line("bad-time", event_time="yesterday"),
}


def _versions(spark, cfg):
    return {t: lake.current_version(spark, cfg.table_path(t)) for t in ("bronze", "quarantine", "batches")}


def test_every_bad_kind_is_quarantined_with_its_reason(spark, cfg_for, tmp_path):
    cfg = cfg_for()
    write_batch(tmp_path / "landing" / "b1", GOOD + list(BAD.values()))
    report = ingest_batch(spark, cfg, "b1")

    assert (report.rows_read, report.accepted, report.quarantined) == (18, 12, 6)
    assert report.reasons == {reason: 1 for reason in BAD}
    quarantine = spark.read.format("delta").load(cfg.table_path("quarantine"))
    raw_by_reason = {r.reason: r.raw_record for r in quarantine.collect()}
    assert raw_by_reason["malformed"] == BAD["malformed"]
    assert raw_by_reason["check:label_is_binary"] == BAD["check:label_is_binary"]
    assert quarantine.where(F.col("batch_id") != "b1").count() == 0

    bronze = spark.read.format("delta").load(cfg.table_path("bronze"))
    assert bronze.schema["event_time"].dataType.simpleString() == "timestamp"
    assert bronze.schema["i1"].dataType.simpleString() == "double"
    got = bronze.where(F.col("event_id").isin("e0", "e1")).select("event_id", "user_id", "label", "i1", "c26", "event_date")
    expected = spark.createDataFrame(
        [("e0", 1, 0, 1.5, "a1b2c3d4"), ("e1", 2, 1, 1.5, "a1b2c3d4")],
        "event_id string, user_id bigint, label int, i1 double, c26 string",
    ).withColumn("event_date", F.to_date(F.lit("2026-01-01")))
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_rerun_of_same_batch_adds_nothing(spark, cfg_for, tmp_path):
    cfg = cfg_for()
    write_batch(tmp_path / "landing" / "b1", GOOD + [BAD["malformed"]])
    first = ingest_batch(spark, cfg, "b1")
    versions = _versions(spark, cfg)
    again = ingest_batch(spark, cfg, "b1")

    assert again.already_ingested and not first.already_ingested
    assert (again.accepted, again.quarantined) == (first.accepted, first.quarantined) == (12, 1)
    assert _versions(spark, cfg) == versions
    assert spark.read.format("delta").load(cfg.table_path("bronze")).count() == 12


def test_half_done_batch_is_completed_not_duplicated(spark, cfg_for, tmp_path):
    """A crash after bronze committed but before the ledger did: the re-run finishes it."""
    cfg = cfg_for()
    write_batch(tmp_path / "landing" / "b1", GOOD + [BAD["malformed"]])
    ingest_batch(spark, cfg, "b1")
    ledger = cfg.table_path("batches")
    spark.sql(f"DELETE FROM delta.`{ledger}` WHERE status = 'committed'")

    report = ingest_batch(spark, cfg, "b1")
    assert report.versions == {"bronze": None, "quarantine": None}
    assert (report.rows_read, report.accepted, report.quarantined) == (13, 12, 1)
    assert spark.read.format("delta").load(cfg.table_path("bronze")).count() == 12


def test_reused_batch_id_with_new_content_is_refused(spark, cfg_for, tmp_path):
    cfg = cfg_for()
    folder = write_batch(tmp_path / "landing" / "b1", GOOD)
    ingest_batch(spark, cfg, "b1")
    versions = _versions(spark, cfg)
    write_batch(folder, GOOD + [line("e-new")])
    with pytest.raises(lake.BatchConflict, match="'b1' was already used by ingest for different content"):
        ingest_batch(spark, cfg, "b1")
    assert _versions(spark, cfg) == versions


def test_the_fingerprint_is_the_lines_a_batch_lands_whatever_their_order(spark, cfg_for, tmp_path):
    """A batch is hashed from its lines in the one read that counts them: the same lines in
    another order land the same rows (it is the batch already ingested), a CSV's header is
    part of its identity, and a change of one character is other content."""
    cfg = cfg_for("source.options.header='true'")
    header = "\t".join(cfg.source.schema)
    folder = write_batch(tmp_path / "landing" / "b1", [header, *GOOD])
    first = ingest_batch(spark, cfg, "b1")
    assert first.accepted == len(GOOD) and first.skipped_lines["header"] == 1
    versions = _versions(spark, cfg)
    write_batch(folder, [header, *reversed(GOOD)])
    assert ingest_batch(spark, cfg, "b1").already_ingested
    for other in ([GOOD[0], header, *GOOD[1:]], [header, *GOOD[:-1], GOOD[-1].replace("\t1\t", "\t0\t", 1)]):
        write_batch(folder, other)
        with pytest.raises(lake.BatchConflict, match="'b1' was already used by ingest for different content"):
            ingest_batch(spark, cfg, "b1")
    assert _versions(spark, cfg) == versions


def test_a_batch_recorded_by_its_bytes_is_compared_by_its_bytes(spark, cfg_for, tmp_path):
    """A batch whose ledger entry hashes its bytes (another encoding here; every batch before
    the one-pass scan) is compared that way on a re-run, not taken for other content."""
    folder = write_batch(tmp_path / "landing" / "b1", GOOD)
    ingest_batch(spark, cfg_for("source.options.encoding=ISO-8859-1"), "b1")
    [recorded] = [r.fingerprint for r in lake.ledger_entries(spark, cfg_for().table_path("batches"), "ingest").collect()
                  if r.status == "committed"]
    assert not recorded.startswith("lines:")
    assert ingest_batch(spark, cfg_for(), "b1").already_ingested
    write_batch(folder, GOOD + [line("e-new")])
    with pytest.raises(lake.BatchConflict, match="different content"):
        ingest_batch(spark, cfg_for(), "b1")


def test_fail_fast_names_the_first_bad_record_and_writes_nothing(spark, cfg_for, tmp_path):
    cfg = cfg_for("ingest.on_bad_record=fail")
    write_batch(tmp_path / "landing" / "b1", GOOD + [BAD["bad_type:i1"]])
    with pytest.raises(IngestError, match=r"bad record in .*part-00000.tsv \(bad_type:i1.*bad-number"):
        ingest_batch(spark, cfg, "b1")
    assert _versions(spark, cfg) == {"bronze": None, "quarantine": None, "batches": None}


@pytest.mark.parametrize("content", [None, "", "\n\n"], ids=["missing", "empty-file", "blank-lines"])
def test_missing_or_empty_input_is_a_clear_error(spark, cfg_for, tmp_path, content):
    cfg = cfg_for()
    if content is not None:
        (tmp_path / "landing" / "b1").mkdir(parents=True)
        (tmp_path / "landing" / "b1" / "part-00000.tsv").write_text(content)
    with pytest.raises(IngestError, match="nothing was written"):
        ingest_batch(spark, cfg, "b1")
    assert _versions(spark, cfg) == {"bronze": None, "quarantine": None, "batches": None}


def test_json_batch_types_and_malformed_lines(spark, cfg_for, tmp_path):
    cfg = cfg_for("source.format=json", "source.options={}")
    good = {"event_id": "j1", "user_id": 5, "event_time": "2026-01-02 03:04:05", "label": 1, "i1": 2.5, "c1": "ff"}
    records = [
        json.dumps(good),
        json.dumps({**good, "event_id": "j2", "i2": "twelve"}),
        json.dumps({k: v for k, v in good.items() if k != "user_id"} | {"event_id": "j3"}),
        '{"event_id": "j4", "user_id": ',
    ]
    write_batch(tmp_path / "landing" / "b1", records, name="part-00000.json")
    report = ingest_batch(spark, cfg, "b1")
    assert (report.rows_read, report.accepted) == (4, 1)
    assert report.reasons == {"bad_type:i2": 1, "missing:user_id": 1, "malformed": 1}


def test_parquet_batch_with_missing_column_is_refused(spark, cfg_for, tmp_path):
    cfg = cfg_for("source.format=parquet")
    spark.createDataFrame([("p1", 1)], "event_id string, user_id bigint").write.parquet(
        str(tmp_path / "landing" / "b1")
    )
    with pytest.raises(IngestError, match=r"missing columns \['event_time', 'label'"):
        ingest_batch(spark, cfg, "b1")


def test_invalid_check_expression_names_the_check(spark, cfg_for, tmp_path):
    cfg = cfg_for("source.checks.broken=no_such_column > 1")
    write_batch(tmp_path / "landing" / "b1", GOOD)
    with pytest.raises(ConfigError, match=r"source.checks.broken: 'no_such_column > 1' is not valid"):
        ingest_batch(spark, cfg, "b1")


def test_without_a_key_column_the_key_is_derived_from_the_typed_content(spark, cfg_for, tmp_path):
    """Records equal in every (typed) column are one event; records that differ anywhere, two."""
    cfg = cfg_for("source.key=record_key")
    assert cfg.source.derives_key
    write_batch(tmp_path / "landing" / "b1", [line("e1", numeric="3"), line("e1", numeric="3.0"),
                                              line("e1", numeric="4"), line("e2")])
    write_batch(tmp_path / "landing" / "b2", [line("e2"), line("e3")])
    first, second = ingest_batch(spark, cfg, "b1"), ingest_batch(spark, cfg, "b2")

    assert (first.accepted, first.reasons) == (3, {"duplicate_key": 1})  # "3.0" is the double 3
    assert (second.accepted, second.reasons) == (1, {"duplicate_key_existing:b1": 1})  # e2 again
    bronze = spark.read.format("delta").load(cfg.table_path("bronze"))
    keys = [r.record_key for r in bronze.select("record_key").collect()]
    assert len(set(keys)) == 4 and all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    with pytest.raises(ConfigError, match="ingest.on_existing_key: 'update' needs a key column"):
        cfg_for("source.key=record_key", "ingest.on_existing_key=update")
