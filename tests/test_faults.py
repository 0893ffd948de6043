"""Faults on the data side, with real kills, real files and real mounts.

Each test asserts that nothing was lost and nothing was duplicated. Already proven
elsewhere and not repeated here: a re-run of a committed batch writes nothing and a
half-done batch is completed (test_ingest.py), the pipeline's jobs re-run via spark-submit
change nothing (test_airflow_dag.py), incremental features equal a full run
(test_features.py).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clickdata import CLICKS, clicks_config, line, write_batch
from faultkit import (
    click_lines,
    commits,
    data_files,
    finish,
    kill_group,
    launch,
    mounted,
    submit_command,
    wait_for,
)
from shipping import QUICK_JVMS

from sparkml_ext import lake
from sparkml_ext.config import ConfigError, load_config
from sparkml_ext.features import build_features
from sparkml_ext.ingest import IngestError, ingest_batch
from sparkml_ext.session import EMBEDDED_CONF


def _where(root: Path) -> list[str]:
    return [f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing"]


def _delta(spark, path):
    return spark.read.format("delta").load(str(path))


def _exactly(spark, path, expected_ids: set[str]) -> None:
    """The table holds each expected event id once and nothing else."""
    table = _delta(spark, path)
    assert table.count() == len(expected_ids)
    assert {r.event_id for r in table.select("event_id").collect()} == expected_ids


def _ids(lines: list[str]) -> set[str]:
    return {x.split("\t", 1)[0] for x in lines}


# --- 1. SIGKILL during a table write ------------------------------------------------------

@pytest.mark.slow
def test_sigkill_during_ingest_write_keeps_last_version_and_rerun_lands_once(spark, tmp_path):
    cfg = clicks_config(tmp_path)
    first, second = click_lines("b1", 50), click_lines("b2", 30_000)
    write_batch(tmp_path / "landing" / "b1", first)
    write_batch(tmp_path / "landing" / "b2", second)
    ingest_batch(spark, cfg, "b1")
    bronze = Path(cfg.table_path("bronze"))
    committed, files_before = commits(bronze), data_files(bronze)

    log = tmp_path / "ingest.log"
    proc = launch(submit_command("ingest", "--batch-id", "b2", *_where(tmp_path)), log)
    wait_for(lambda: data_files(bronze) - files_before, proc, log, "b2's first bronze data file")
    kill_group(proc)

    assert commits(bronze) == committed, "the kill came after the commit: nothing was tested"
    orphans = data_files(bronze) - files_before
    assert orphans, "no file of the killed write is left to hide"
    _exactly(spark, bronze, _ids(first))  # readable, and the killed write's files are invisible
    assert lake.ledger_record(spark, cfg.table_path("batches"), "ingest", "b2").committed is False

    report = ingest_batch(spark, cfg, "b2")
    assert (report.rows_read, report.accepted, report.quarantined) == (30_000, 30_000, 0)
    _exactly(spark, bronze, _ids(first) | _ids(second))


@pytest.mark.slow
def test_sigkill_during_features_merge_keeps_last_version_and_rerun_completes(spark, tmp_path):
    cfg = clicks_config(tmp_path)
    first, second = click_lines("b1", 200), click_lines("b2", 20_000)
    write_batch(tmp_path / "landing" / "b1", first)
    write_batch(tmp_path / "landing" / "b2", second)
    ingest_batch(spark, cfg, "b1")
    build_features(spark, cfg)
    ingest_batch(spark, cfg, "b2")
    features = Path(cfg.table_path("features"))
    committed, files_before = commits(features), data_files(features)

    log = tmp_path / "features.log"
    proc = launch(submit_command("features", *_where(tmp_path)), log)
    wait_for(lambda: data_files(features) - files_before, proc, log, "the MERGE's first data file")
    kill_group(proc)

    assert commits(features) == committed, "the kill came after the commit: nothing was tested"
    assert data_files(features) - files_before
    _exactly(spark, features, _ids(first))

    report = build_features(spark, cfg)
    assert (report.previous_bronze_version, report.rows_in) == (0, 20_000)
    _exactly(spark, features, _ids(first) | _ids(second))


# --- 3. Two ingest jobs appending to one table at the same time -----------------------------

@pytest.mark.slow
def test_two_concurrent_ingest_jobs_each_land_exactly_once(spark, concurrent_ingests):
    run = concurrent_ingests  # faultkit.run_concurrent_ingests, started with the session
    for name, (code, output) in run.outcomes.items():
        assert code == 0, output[-3000:]
        assert f"ingest batch {name}: read 2000, accepted 2000, quarantined 0" in output

    cfg = clicks_config(run.root)
    _exactly(spark, cfg.table_path("bronze"), _ids(run.batches["b1"]) | _ids(run.batches["b2"]))
    for name in run.batches:
        assert lake.ledger_record(spark, cfg.table_path("batches"), "ingest", name).committed


def test_conflicting_table_creation_is_retried_and_both_writes_land(spark, tmp_path, caplog):
    """Two writers creating one table collide (ProtocolChangedException); the loser retries."""
    target = str(tmp_path / "table")
    rows = spark.range(0, 400).selectExpr("cast(id as string) as event_id", "id % 2 as half")
    versions, errors = {}, []

    def write(half: int) -> None:
        try:
            versions[half] = lake.append_once(rows.where(f"half = {half}"), target, app_id=f"w{half}")
        except Exception as err:  # surfaced below
            errors.append(err)

    with caplog.at_level(logging.WARNING, logger="sparkml_ext.lake"):
        threads = [threading.Thread(target=write, args=(half,)) for half in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert sorted(versions.values()) == [0, 1]  # each write knows its own commit
    _exactly(spark, target, {str(i) for i in range(400)})
    retries = [r.getMessage() for r in caplog.records if "concurrent commit" in r.getMessage()]
    assert retries and "retry 1 of 2" in retries[0], "no conflict happened: nothing was tested"


# --- 8. Task retry -------------------------------------------------------------------------

@pytest.mark.slow
def test_tasks_failing_on_first_attempt_still_write_exactly_once(spark, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("faultkit.py")), "retry-job",
         str(tmp_path / "lake"), str(markers)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **QUICK_JVMS},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(markers.iterdir())) >= 4, "no task failed on its first attempt"

    appended = _delta(spark, tmp_path / "lake" / "appended")
    assert appended.count() == appended.select("id").distinct().count() == 1000
    assert commits(tmp_path / "lake" / "appended") == ["00000000000000000000.json"]
    merged = _delta(spark, tmp_path / "lake" / "merged")
    assert merged.count() == merged.select("id").distinct().count() == 1500
    by_value = {r.value: r["count"] for r in merged.groupBy("value").count().collect()}
    assert by_value == {"v2": 500, "v3": 1000}


def test_speculation_is_never_turned_on():
    """Speculative copies of a task would run our side effects twice."""
    for profile in Path("conf/spark").glob("*.conf"):
        lines = [x.split(None, 1) for x in profile.read_text().splitlines() if x.strip() and x[0] != "#"]
        assert dict(lines).get("spark.speculation", "false").strip() == "false", profile
    assert EMBEDDED_CONF["spark.speculation"] == "false"
    assert load_config(CLICKS).spark.get("spark.speculation", "false") == "false"


# --- 5. Bad input corpus -------------------------------------------------------------------

def test_bad_record_corpus_is_quarantined_by_reason_and_counts_reconcile(spark, tmp_path):
    """One batch, many files, every kind of bad record; test_ingest covers the basic kinds."""
    cfg = clicks_config(tmp_path)
    folder = tmp_path / "landing" / "b1"
    good = click_lines("ok", 20)
    write_batch(folder, good, "part-0-good.tsv")
    write_batch(folder, [x.replace("\t", ",") for x in click_lines("comma", 3)], "part-1-commas.csv")
    (folder / "part-2-latin1.tsv").write_bytes(
        (line("latin", category="caf\xe9") + "\n").encode("latin-1") + (line("utf8", category="caf\xe9") + "\n").encode()
    )
    write_batch(folder, [
        line("extra-col") + "\tsurplus",
        "\t".join(line("short-row").split("\t")[:20]),
        line("", user_id="9"),                                   # key is an empty field: null
        line("no-user", user_id=""),
        line("overflow", user_id="99999999999999999999"),        # does not fit bigint
        line("negative-user", user_id="-3"),
        line("bad-date", event_time="2026-13-45 25:61:00"),
        line("label-2", label="2"),
        line("negative-numeric", numeric="-1"),
        line("ok-1", user_id="2"),                               # duplicate of a good id, other file
        line("twice"), line("twice"),                            # duplicate within one file
    ], "part-3-odd.tsv")

    report = ingest_batch(spark, cfg, "b1")
    expected_reasons = {
        "malformed": 3 + 2, "bad_encoding": 1, "missing:event_id": 1, "missing:user_id": 1,
        "bad_type:user_id": 1, "check:user_id_positive": 1, "bad_type:event_time": 1,
        "check:label_is_binary": 1, "check:numerics_non_negative": 1, "duplicate_key": 2,
    }
    assert report.reasons == expected_reasons
    assert report.rows_read == 20 + 3 + 2 + 12 == report.accepted + report.quarantined
    accepted = _ids(good) | {"utf8", "twice"}
    _exactly(spark, cfg.table_path("bronze"), accepted)
    utf8 = _delta(spark, cfg.table_path("bronze")).where("event_id = 'utf8'").head()
    assert utf8.c1 == "caf\xe9"
    latin = _delta(spark, cfg.table_path("quarantine")).where("reason = 'bad_encoding'").head()
    assert latin.source_file.endswith("part-2-latin1.tsv") and latin.raw_record.startswith("latin\t")


def _parquet_batch(folder: Path, columns: dict[str, list], name: str = "part-0.parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / name)
    return folder / name


def _event_columns(ids: list[str | None], **extra: list) -> dict[str, list]:
    """Parquet columns for clicks.yaml: the keys typed, every other declared column as text."""
    n = len(ids)
    columns = {c: pa.array(["1.5"] * n, pa.string()) for c in load_config(CLICKS).source.schema}
    columns.update(event_id=pa.array(ids, pa.string()), user_id=pa.array([7] * n, pa.int64()),
                   label=pa.array([1] * n, pa.int32()),
                   event_time=pa.array(["2026-01-02 03:04:05"] * n, pa.string()))
    return {**columns, **{name: pa.array(values, pa.string()) for name, values in extra.items()}}


def _truncated(folder: Path) -> None:
    whole = _parquet_batch(folder, _event_columns(["t1", "t2"]), "part-1.parquet").read_bytes()
    (folder / "part-1.parquet").write_bytes(whole[: len(whole) // 2])


def _garbage(folder: Path) -> None:
    _parquet_batch(folder, _event_columns(["g1"]), "part-1.parquet")
    (folder / "part-1.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4)


def _empty(folder: Path) -> None:
    (folder / "part-0.parquet").unlink()
    _parquet_batch(folder, _event_columns([]), "part-0.parquet")


def _new_column(folder: Path) -> None:
    _parquet_batch(folder, _event_columns(["n1", "n2"], campaign=["spring", None]), "part-1.parquet")


@pytest.mark.parametrize("spoil, message", [
    (_truncated, r"cannot read file:.*/b1/part-1\.parquet \(corrupt or truncated file"),
    (_garbage, r"cannot read file:.*/b1/part-1\.parquet \(corrupt or truncated file"),
    (_empty, r"holds no records; nothing was written"),
    (_new_column, r"columns that are not in source\.schema: \['campaign'\]; set ingest\.schema_evolution"),
], ids=["truncated", "not-parquet", "zero-rows", "new-column"])
def test_unreadable_or_drifted_parquet_batch_is_refused_naming_it(spark, tmp_path, spoil, message):
    cfg = clicks_config(tmp_path, "source.format=parquet")
    folder = tmp_path / "landing" / "b1"
    _parquet_batch(folder, _event_columns(["p1", None]))
    spoil(folder)
    with pytest.raises(IngestError, match=message):
        ingest_batch(spark, cfg, "b1")
    for table in ("bronze", "quarantine"):
        assert lake.current_version(spark, cfg.table_path(table)) is None


# --- 6. Schema drift -----------------------------------------------------------------------

def test_schema_evolution_adds_a_new_column_when_switched_on(spark, tmp_path):
    cfg = clicks_config(tmp_path, "source.format=parquet", "ingest.schema_evolution=true")
    _parquet_batch(tmp_path / "landing" / "b1", _event_columns(["a1", "a2"]))
    ingest_batch(spark, cfg, "b1")
    _parquet_batch(tmp_path / "landing" / "b2", _event_columns(["n1", "n2", None], campaign=["spring", None, "x"]))
    report = ingest_batch(spark, cfg, "b2")

    assert (report.rows_read, report.accepted, report.reasons) == (3, 2, {"missing:event_id": 1})
    bronze = _delta(spark, cfg.table_path("bronze"))
    got = {r.event_id: r.campaign for r in bronze.select("event_id", "campaign").collect()}
    assert got == {"a1": None, "a2": None, "n1": "spring", "n2": None}
    raw = _delta(spark, cfg.table_path("quarantine")).head().raw_record
    assert '"campaign":"x"' in raw  # the quarantined record keeps the new column too


# --- 7. Unwritable lakehouse ---------------------------------------------------------------

@pytest.mark.slow
def test_table_under_a_file_exits_1_naming_the_path_and_writes_nothing(spark, tmp_path):
    """ENOTDIR stops root as well (chmod does not): bronze's folder would be inside a file."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    write_batch(tmp_path / "landing" / "b1", click_lines("b1", 10))
    log = tmp_path / "ingest.log"
    code, output = finish(launch(submit_command(
        "ingest", "--batch-id", "b1", *_where(tmp_path), f"--set=tables.bronze={blocker}/bronze"), log), log)

    assert code == 1, output[-3000:]
    assert re.search(rf"ingest failed: cannot write to {blocker}/bronze: .*; nothing was written", output)
    assert lake.current_version(spark, clicks_config(tmp_path).table_path("batches")) is None  # not even claimed
    assert not (tmp_path / "lake" / "quarantine").exists()


def test_read_only_table_is_refused_before_anything_is_written(spark, tmp_path):
    cfg = clicks_config(tmp_path)
    write_batch(tmp_path / "landing" / "b1", click_lines("b1", 10))
    write_batch(tmp_path / "landing" / "b2", click_lines("b2", 10))
    ingest_batch(spark, cfg, "b1")
    bronze = Path(cfg.table_path("bronze"))
    with mounted(bronze, "readonly"):
        with pytest.raises(lake.StorageError, match=rf"cannot write to {bronze}: .*Read-only file system"):
            ingest_batch(spark, cfg, "b2")
    assert lake.ledger_record(spark, cfg.table_path("batches"), "ingest", "b2") is None
    _exactly(spark, bronze, _ids(click_lines("b1", 10)))
    ingest_batch(spark, cfg, "b2")
    _exactly(spark, bronze, _ids(click_lines("b1", 10)) | _ids(click_lines("b2", 10)))


def test_disk_full_during_the_write_commits_nothing_and_rerun_lands_once(spark, tmp_path):
    cfg = clicks_config(tmp_path)
    lines = click_lines("b1", 5_000)
    write_batch(tmp_path / "landing" / "b1", lines)
    bronze = Path(cfg.table_path("bronze"))
    with mounted(bronze, "tmpfs", "64k"):
        with pytest.raises(Exception, match="No space left on device"):
            ingest_batch(spark, cfg, "b1")
        assert commits(bronze) == []  # files may be half written, but no commit names them
    assert not lake.ledger_record(spark, cfg.table_path("batches"), "ingest", "b1").committed
    assert lake.current_version(spark, cfg.table_path("quarantine")) is None
    report = ingest_batch(spark, cfg, "b1")
    assert (report.rows_read, report.accepted) == (5_000, 5_000)
    _exactly(spark, bronze, _ids(lines))


# --- Path confinement ----------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("tables.bronze=../elsewhere/bronze", "tables.bronze"),
    ("tables.batches=_meta/../../x", "tables.batches"),
])
def test_table_paths_cannot_climb_out_of_the_lakehouse(override, key):
    with pytest.raises(ConfigError, match=rf"^{CLICKS}: {key}: .* escapes the lakehouse"):
        load_config(CLICKS, [override])


@pytest.mark.parametrize("batch_id, input_path, key", [
    ("../../etc", None, "--batch-id"),
    ("a/b", None, "--batch-id"),
    ("b1", "{root}/landing/../secrets", "--input"),
    ("b1", "/etc", "--input"),
])
def test_batch_and_input_paths_stay_under_the_landing_root(spark, tmp_path, batch_id, input_path, key):
    cfg = clicks_config(tmp_path)
    (tmp_path / "secrets").mkdir()
    given = input_path.format(root=tmp_path) if input_path else None
    with pytest.raises(ConfigError, match=rf"{CLICKS}: {key}: "):
        ingest_batch(spark, cfg, batch_id, given)
    assert cfg.batch_path("b1", f"{tmp_path}/landing/other-folder") == f"{tmp_path}/landing/other-folder"
