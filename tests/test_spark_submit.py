"""spark-submit with the local profile, as a user runs a job: the exit codes of refusals.

The whole chain of jobs, each its own spark-submit, and a rerun that changes nothing run
in the Airflow test (tests/test_airflow_dag.py), which submits them exactly this way.
"""

from __future__ import annotations

import pytest
from shipping import submit

pytestmark = pytest.mark.slow


def test_missing_batch_exits_3_and_writes_nothing(tmp_path):
    where = [f"--set=lakehouse={tmp_path}/lake", f"--set=source.path={tmp_path}/landing"]
    missing = submit("ingest", "--batch-id", "b-absent", *where)
    assert missing.returncode == 3
    # spark-submit merges the Python driver's stderr into its own stdout.
    assert "b-absent does not exist; nothing was written" in missing.stdout
    assert not (tmp_path / "lake").exists()


def test_broken_config_exits_2_naming_the_key(tmp_path):
    result = submit("ingest", "--batch-id", "b1", "--set", "generate.rows=lots")
    assert result.returncode == 2
    assert "conf/pipelines/clicks.yaml: generate.rows: expected int" in result.stdout

