"""Ingest's integrity promises on real Spark + Delta: a refused batch lands nothing, every
line is accounted for, a key is unique across batches, and features never see a key twice.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
from chispa import assert_df_equality
from clickdata import clicks_config, line, write_batch
from hostile import hostile_file
from pyspark.sql import functions as F

from sparkml_ext import lake
from sparkml_ext.feature_spec import feature_columns
from sparkml_ext.features import FeaturesError, build_features
from sparkml_ext.ingest import IngestError, ingest_batch

TABLES = ("bronze", "quarantine", "batches", "features")


def _delta(spark, path):
    return spark.read.format("delta").load(path)


def _state(spark, cfg) -> dict:
    """Each table's version and rows, to compare before and after a refusal."""
    state = {}
    for table in TABLES:
        path = cfg.table_path(table)
        version = lake.current_version(spark, path)
        rows = None
        if version is not None:
            rows = sorted(json.dumps(r.asDict(), default=str, sort_keys=True)
                          for r in _delta(spark, path).drop("recorded_at", "quarantined_at").collect())
        state[table] = (version, rows)
    return state


def _events(prefix: str, count: int, user: str = "1", day: int = 1) -> list[str]:
    return [line(f"{prefix}-{i}", user_id=user, event_time=f"2026-01-0{day} 10:{i:02d}:00", label=str(i % 2))
            for i in range(count)]


@pytest.fixture(scope="module")
def landed_once(spark, tmp_path_factory) -> Path:
    """A lakehouse with one committed batch (b1) and its feature table, built once."""
    root = tmp_path_factory.mktemp("landed")
    write_batch(root / "landing" / "b1", _events("e", 8) + _events("f", 4, user="2"))
    cfg = clicks_config(root)
    ingest_batch(spark, cfg, "b1")
    build_features(spark, cfg)
    return root


@pytest.fixture
def landed(landed_once, tmp_path):
    """This test's own copy of `landed_once` (Delta tables name their files relative to
    the table's folder, so a copied table is the same table); its config."""
    shutil.copytree(landed_once, tmp_path, dirs_exist_ok=True)
    return clicks_config(tmp_path)


def _refused_then_retried(spark, cfg, batch: str, write_bad, write_good, error: str) -> None:
    """The batch is refused with `error`, every table is as it was, and the corrected
    content then lands under the same batch id."""
    before = _state(spark, cfg)
    write_bad()
    with pytest.raises(IngestError, match=error):
        ingest_batch(spark, cfg, batch)
    build_features(spark, cfg)
    assert _state(spark, cfg) == before
    assert lake.ledger_record(spark, cfg.table_path("batches"), "ingest", batch) is None

    write_good()
    report = ingest_batch(spark, cfg, batch)
    assert report.accepted + report.quarantined == report.rows_read > 0
    assert build_features(spark, cfg).feature_version is not None


def test_a_batch_that_does_not_reconcile_lands_nothing_and_can_be_retried(spark, tmp_path):
    """A JSON line holding an array is two records (or none) for one line: refused."""
    cfg = clicks_config(tmp_path, "source.format=json", "source.options={}")
    good = {"event_id": "j1", "user_id": 1, "event_time": "2026-01-01 10:00:00", "label": 1}
    write_batch(tmp_path / "landing" / "b1", [json.dumps(good)], name="part-0.json")
    ingest_batch(spark, cfg, "b1")
    build_features(spark, cfg)
    folder = tmp_path / "landing" / "b2"
    pair = [{**good, "event_id": "j3"}, {**good, "event_id": "j4"}]
    records = [json.dumps({**good, "event_id": "j2"}), json.dumps(pair)]  # 3 records, 2 lines
    _refused_then_retried(
        spark, cfg, "b2",
        lambda: write_batch(folder, records, name="part-0.json"),
        lambda: write_batch(folder, records[:1], name="part-0.json"),
        r"counts do not reconcile: .*part-0.json: 3 records for 2 lines\); nothing was written",
    )


@pytest.mark.parametrize(("mode", "bad", "error"), [
    ("ingest.on_bad_record=fail", line("bad", numeric="n/a"), r"bad record in .*\(bad_type:i1"),
    ("ingest.on_existing_key=fail", line("e-0"),
     r"key 'e-0' in .* is already in bronze \(batch b1\); on_existing_key is 'fail'"),
], ids=["bad-record", "existing-key"])
def test_a_fail_mode_refusal_lands_nothing_and_can_be_retried(spark, tmp_path, landed, mode, bad, error):
    cfg = clicks_config(tmp_path, mode)
    folder = tmp_path / "landing" / "b2"
    _refused_then_retried(spark, cfg, "b2", lambda: write_batch(folder, _events("g", 3) + [bad]),
                          lambda: write_batch(folder, _events("g", 3)), error)


def test_an_unreadable_file_lands_nothing_and_can_be_retried(spark, tmp_path, landed):
    folder = tmp_path / "landing" / "b2"
    whole = gzip.compress("".join(f"{x}\n" for x in _events("g", 50)).encode())

    def write_truncated():
        write_batch(folder, _events("h", 2))
        (folder / "part-1.tsv.gz").write_bytes(whole[: len(whole) // 2])

    def write_whole():
        (folder / "part-1.tsv.gz").write_bytes(whole)

    _refused_then_retried(spark, landed, "b2", write_truncated, write_whole, r"cannot read .*part-1.tsv.gz")


def test_every_hostile_line_is_landed_quarantined_or_holds_no_record(spark, tmp_path):
    cfg = clicks_config(tmp_path)
    folder = tmp_path / "landing" / "b1"
    folder.mkdir(parents=True)
    good = _events("ok", 5)
    (folder / "part-0.tsv").write_bytes(b"\n".join([
        *(x.encode() for x in good),
        b"", b"   ", b"\t\t", b"\x00",                          # empty, blank, blank, blank
        line("nul\x00inside").encode(),                         # control_char:event_id
        ";".join(line("semi").split("\t")).encode(),            # malformed
        line("latin", category="caf\xe9").encode("latin-1"),    # bad_encoding
        (line("extra") + "\tsurplus").encode(),                 # malformed
        "\t".join(line("short").split("\t")[:-1]).encode(),     # malformed
        line("huge", category="x" * 1_100_000).encode(),        # too_long
        line("bell", category="ding\x07").encode(),             # control_char:c1
        line("last").encode(),                                  # no final newline
    ]))

    report = ingest_batch(spark, cfg, "b1")
    assert report.reasons == {"blank": 3, "control_char:event_id": 1, "malformed": 3, "bad_encoding": 1,
                              "too_long": 1, "control_char:c1": 1}
    assert (report.rows_read, report.accepted, report.quarantined) == (16, 6, 10)
    quarantine = _delta(spark, cfg.table_path("quarantine"))
    assert sorted(r.raw_record for r in quarantine.where("reason = 'blank'").collect()) == ["\x00", "\t\t", "   "]
    assert len(quarantine.where("reason = 'too_long'").head().raw_record) > 1_100_000  # kept whole


def test_a_header_line_per_file_is_skipped_and_counted(spark, tmp_path):
    cfg = clicks_config(tmp_path, "source.options.header=true")
    header = "\t".join(cfg.source.schema)
    folder = tmp_path / "landing" / "b1"
    write_batch(folder, ["", header, *_events("a", 3)], name="part-0.tsv")
    write_batch(folder, [header, *_events("b", 2)], name="part-1.tsv")
    report = ingest_batch(spark, cfg, "b1")
    assert (report.rows_read, report.accepted, report.quarantined) == (5, 5, 0)
    assert report.skipped_lines == {"header": 2, "comment": 0}


def test_fuzzed_hostile_batches_account_for_every_line(spark, tmp_path):
    """200 seeded hostile files (5 to 40 lines each, random breakage, re-delivered lines of
    earlier batches), landed as 5 batches of 40: each batch reconciles, each file's records
    are exactly its non-empty lines (counted here from the bytes), and bronze keys stay unique."""
    cfg = clicks_config(tmp_path)
    rng = random.Random(20261129)
    delivered: list[str] = []
    for number in range(5):
        batch = f"fuzz-{number}"
        files = [hostile_file(rng, f"{batch}-f{i}", delivered, huge=(number, i) == (2, 7)) for i in range(40)]
        folder = tmp_path / "landing" / batch
        folder.mkdir(parents=True)
        for f in files:
            (folder / f"{f.name}.tsv").write_bytes(f.content)
        report = ingest_batch(spark, cfg, batch)

        assert report.rows_read == sum(f.records for f in files) == report.accepted + report.quarantined, batch
        assert report.reasons.get("blank", 0) == sum(f.blank for f in files), batch
        landed = Counter(r._source_file.rsplit("/", 1)[-1] for r in
                         _delta(spark, cfg.table_path("bronze")).where(F.col("_batch_id") == batch).select("_source_file").collect())
        landed += Counter(r.source_file.rsplit("/", 1)[-1] for r in
                          _delta(spark, cfg.table_path("quarantine")).where(F.col("batch_id") == batch).select("source_file").collect())
        assert landed == {f"{f.name}.tsv": f.records for f in files if f.records}, batch
        delivered += [x.decode(errors="replace") for f in files for x in f.lines() if x.startswith(f.name.encode())][:40]

    bronze = _delta(spark, cfg.table_path("bronze"))
    assert bronze.count() == bronze.select("event_id").distinct().count()
    reasons = Counter(r.reason.split(":")[0] for r in _delta(spark, cfg.table_path("quarantine")).select("reason").collect())
    assert {"blank", "malformed", "bad_encoding", "control_char", "duplicate_key", "duplicate_key_existing",
            "too_long", "bad_type", "check", "missing"} <= set(reasons)


def test_a_redelivered_batch_lands_nothing_and_leaves_features_unchanged(spark, tmp_path, landed):
    features_before = _state(spark, landed)["features"]
    bronze_before = lake.current_version(spark, landed.table_path("bronze"))
    write_batch(tmp_path / "landing" / "b1-again", _events("e", 8) + _events("f", 4, user="2"))
    report = ingest_batch(spark, landed, "b1-again")

    assert (report.rows_read, report.accepted, report.quarantined) == (12, 0, 12)
    assert report.reasons == {"duplicate_key_existing:b1": 12}
    assert lake.current_version(spark, landed.table_path("bronze")) == bronze_before
    assert build_features(spark, landed).feature_version is None
    assert _state(spark, landed)["features"] == features_before


def test_update_mode_replaces_older_rows_and_features_equal_a_full_rebuild(spark, tmp_path, landed):
    """A CDC-style batch: later versions of held keys replace them (one moves to another
    user), an older version is quarantined, a late event lands among earlier ones; the
    incremental feature table then equals one built from scratch over the same bronze."""
    cfg = clicks_config(tmp_path, "ingest.on_existing_key=update")
    write_batch(tmp_path / "landing" / "b2", [
        line("e-1", user_id="1", event_time="2026-01-01 10:30:00", label="1"),   # later: replaces
        line("e-2", user_id="2", event_time="2026-01-01 10:45:00", label="0"),   # later, other user
        line("f-3", user_id="2", event_time="2026-01-01 09:00:00", label="1"),   # older: quarantined
        line("late", user_id="1", event_time="2026-01-01 10:04:30", label="1"),  # new, among e-4, e-5
        line("new", user_id="3", event_time="2026-01-02 08:00:00", label="0"),
    ])
    report = ingest_batch(spark, cfg, "b2")
    assert (report.accepted, report.updated, report.reasons) == (4, 2, {"older_than_existing:b1": 1})
    bronze = _delta(spark, cfg.table_path("bronze"))
    assert bronze.count() == 12 + 2 == bronze.select("event_id").distinct().count()
    moved = bronze.where("event_id = 'e-2'").head()
    assert (moved.user_id, moved._batch_id) == (2, "b2")

    build_features(spark, cfg)
    full = clicks_config(tmp_path / "full", f"tables.bronze={cfg.table_path('bronze')}")
    build_features(spark, full)
    columns = ["event_id", "user_id", *feature_columns(cfg.features)["numeric"]]
    incremental = _delta(spark, cfg.table_path("features")).select(columns)
    assert_df_equality(incremental, _delta(spark, full.table_path("features")).select(columns),
                       ignore_row_order=True, ignore_nullable=True)


def test_features_refuse_a_key_bronze_holds_twice(spark, tmp_path, landed):
    bronze = landed.table_path("bronze")
    copy = _delta(spark, bronze).where("event_id = 'e-3'").withColumn("_batch_id", F.lit("old-code"))
    lake.append_once(copy, bronze, app_id="test:duplicate")
    before = _state(spark, landed)["features"]
    with pytest.raises(FeaturesError, match=r"'e-3' \(2 rows, batches b1, old-code\)"):
        build_features(spark, landed)
    assert _state(spark, landed)["features"] == before
