from pathlib import Path

import pytest

from sparkml_ext.session import DELTA_EXCLUDES, DELTA_PACKAGE, GC_LOCKER_RETRIES, session_settings

CONF = Path(__file__).resolve().parents[1] / "conf" / "spark"


def test_embedded_session_has_delta_and_none_of_its_duplicate_jars(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.range(3).write.format("delta").save(path)
    assert spark.read.format("delta").load(path).count() == 3
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    conf = spark.sparkContext.getConf()
    assert DELTA_PACKAGE in conf.get("spark.jars.packages")
    jars = [Path(jar).name for jar in conf.get("spark.jars").split(",")]
    assert any(name.startswith("io.delta_delta-spark") for name in jars)
    excluded = tuple(f"{item.replace(':', '_')}-" for item in DELTA_EXCLUDES.split(","))  # Ivy's names
    assert [name for name in jars if name.startswith(excluded)] == []
    # conftest passes its own JVM options: the retries must reach the JVM too (default: 2)
    jvm = spark.sparkContext._jvm
    hotspot = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.com.sun.management.HotSpotDiagnosticMXBean._java_lang_class)
    assert hotspot.getVMOption("GCLockerRetryAllocationCount").getValue() == "100"


@pytest.mark.parametrize("name", ["local.conf", "cluster.conf"])
def test_spark_profiles_ask_for_the_same_delta_jars_and_gc_retries_as_the_embedded_session(name):
    lines = (CONF / name).read_text().splitlines()  # one setting per line: simple tools read these too
    settings = dict(line.split(None, 1) for line in lines if line.strip() and not line.startswith("#"))
    assert settings["spark.jars.packages"].strip() == DELTA_PACKAGE
    assert settings["spark.jars.excludes"].strip() == DELTA_EXCLUDES
    task_jvms = ["spark.driver"] + (["spark.executor"] if name == "cluster.conf" else [])
    for jvm in task_jvms:
        assert GC_LOCKER_RETRIES in settings[f"{jvm}.extraJavaOptions"]


def test_scoped_settings_yield_to_the_session_or_override_it_and_put_back_what_it_held(spark):
    """Tuning yields to a value the session has; a write's own settings replace it for the
    block. Either way the session holds afterwards what it held before, even after an error."""
    held, unset = "spark.sql.shuffle.partitions", "spark.databricks.delta.commitInfo.userMetadata"
    before = spark.conf.get(held)
    with session_settings(spark, {held: "3", unset: "x"}, override=False):
        assert (spark.conf.get(held), spark.conf.get(unset)) == (before, "x")
    with pytest.raises(RuntimeError), session_settings(spark, {held: "3", unset: "y"}, override=True):
        assert (spark.conf.get(held), spark.conf.get(unset)) == ("3", "y")
        raise RuntimeError("the block failed")
    assert (spark.conf.get(held), spark.conf.get(unset, None)) == (before, None)
