"""spark-submit with the local profile, as a user runs a job: exit codes and a rerun.

The whole chain of jobs, each its own spark-submit, and its rerun run in the Airflow
test (tests/test_airflow_dag.py), which submits them exactly this way.
"""

from __future__ import annotations

import pytest
from clickdata import line, write_batch
from shipping import report_of, submit

pytestmark = pytest.mark.slow


def test_ingest_via_spark_submit_is_idempotent(tmp_path):
    write_batch(tmp_path / "landing" / "b1", [line(f"e{i}") for i in range(30)] + ["garbage line"])
    where = [f"--set=lakehouse={tmp_path}/lake", f"--set=source.path={tmp_path}/landing", "--json"]

    first = report_of(submit("ingest", "--batch-id", "b1", *where))
    assert (first["rows_read"], first["accepted"], first["quarantined"]) == (31, 30, 1)
    assert first["accepted"] + first["quarantined"] == first["rows_read"]
    second = report_of(submit("ingest", "--batch-id", "b1", *where))
    assert second["already_ingested"] is True
    assert second["accepted"] == 30 and second["versions"] == first["versions"]

    missing = submit("ingest", "--batch-id", "b-absent", *where)
    assert missing.returncode == 3
    # spark-submit merges the Python driver's stderr into its own stdout.
    assert "b-absent does not exist; nothing was written" in missing.stdout


def test_broken_config_exits_2_naming_the_key(tmp_path):
    result = submit("ingest", "--batch-id", "b1", "--set", "generate.rows=lots")
    assert result.returncode == 2
    assert "conf/pipelines/clicks.yaml: generate.rows: expected int" in result.stdout

