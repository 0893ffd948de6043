"""catalog.schema: each job names the Delta tables it wrote in Spark's catalog, as external tables."""

from __future__ import annotations

import contextlib
import io

import pytest

from sparkml_ext.cli import EXIT_FAILED, EXIT_OK, main
from sparkml_ext.config import ConfigError, load_config

CLICKS = "conf/pipelines/clicks.yaml"


def _run(root, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    where = [f"--set=lakehouse={root}/lake", f"--set=source.path={root}/landing"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv[:1], "--pipeline", CLICKS, *where, *argv[1:]])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_jobs_name_what_they_wrote_and_refuse_a_name_taken_elsewhere(spark, fresh_lake):
    root = fresh_lake("catalog")
    cfg = load_config(CLICKS, [f"lakehouse={root}/lake"])
    code, printed, _ = _run(root, "ingest", "--batch-id=batch-00000", "--set=catalog.schema=clicks_a")
    assert code == EXIT_OK and "already ingested" in printed
    assert "catalog: clicks_a.bronze, clicks_a.quarantine, clicks_a.batches" in printed
    for name in ("bronze", "quarantine", "batches"):
        by_name, by_path = spark.table(f"clicks_a.{name}"), spark.read.format("delta").load(cfg.table_path(name))
        assert by_name.count() == by_path.count() > 0
        location = spark.sql(f"DESCRIBE DETAIL clicks_a.{name}").head()["location"]
        assert location.removeprefix("file:").rstrip("/") == cfg.table_path(name)

    assert _run(root, "features", "--set=catalog.schema=clicks_a")[0] == EXIT_OK  # nothing new: still named
    assert spark.table("clicks_a.features").count() == spark.read.format("delta").load(
        cfg.table_path("features")).count()
    assert _run(root, "ingest", "--batch-id=batch-00000", "--set=catalog.schema=clicks_a")[0] == EXIT_OK

    elsewhere = fresh_lake("catalog-elsewhere")  # another lakehouse, the same names
    code, _, said = _run(elsewhere, "features", "--set=catalog.schema=clicks_a")
    assert code == EXIT_FAILED
    assert f"features failed: clicks_a.features already names the table at file:{root}/lake" in said
    assert spark.sql("DESCRIBE DETAIL clicks_a.features").head()["location"].startswith(f"file:{root}/")


@pytest.mark.parametrize("schema", ["main.clicks.x", "1abc", "a-b", "a;drop"])
def test_a_bad_schema_name_is_refused_naming_the_key(schema):
    with pytest.raises(ConfigError, match=rf"{CLICKS}: catalog.schema: '{schema}' is not"):
        load_config(CLICKS, [f"catalog.schema={schema}"])
