"""The one place that builds or finds a SparkSession.

Three ways to run, one function:

* embedded (plain ``python``/``sparkml-ext``): ``local[*]`` with Delta's extension and
  catalog, the Delta jars from Maven Central, settings sized for a small machine;
* under ``spark-submit``: whatever the submitter set (master, resources, packages) wins;
  we only add what is missing and never touch master or resources;
* on Databricks: the existing session, untouched.

Where the embedded JVM's own output goes (Ivy's report, log4j, Spark's log lines) is the
caller's choice (`jvm_output`); `sparkml_ext.console` decides it for the CLI.

What a job lends the session for one block is scoped here too: settings
(`session_settings`) and cached frames (`cached`), both given back when the block ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

# Maven Central serves the Delta 4.4 jars for Spark 4.2 as 4.4.0; the Python package
# delta-spark 4.4.1 is a thin wrapper over the same JVM API (its 4.4.1 jar was never
# published there), so the jar version is pinned here rather than derived from pip.
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"

# Delta's POM also pulls older copies of libraries that Spark ships itself (Hadoop client,
# Parquet, Jackson, logging, codecs). Spark's copies come first on the classpath, so the
# older ones are dead weight: every spark-submit copied ~60 MB of them to its executors.
DELTA_EXCLUDES = ",".join([
    "org.apache.hadoop:hadoop-client-api", "org.apache.hadoop:hadoop-client-runtime",
    *[f"org.apache.parquet:parquet-{name}" for name in
      ("column", "common", "encoding", "format-structures", "hadoop", "jackson")],
    *[f"com.fasterxml.jackson.core:jackson-{name}" for name in ("annotations", "core", "databind")],
    *[f"org.apache.logging.log4j:log4j-{name}" for name in ("api", "core", "slf4j2-impl")],
    "org.slf4j:slf4j-api", "org.xerial.snappy:snappy-java", "com.github.luben:zstd-jni",
    "io.airlift:aircompressor", "commons-pool:commons-pool", "com.google.code.findbugs:jsr305",
    "org.roaringbitmap:RoaringBitmap", "org.roaringbitmap:shims",
])

DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

# Whole-stage code generation fuses a stage into one Java method, and HotSpot never
# JIT-compiles a method over 8,000 bytes of bytecode: the features job's first stage, which
# computes every row column of a wide table at once (a hundred columns made 14,156 bytes),
# ran in the bytecode interpreter. At this limit Spark runs such a stage operator by
# operator, in methods the JIT compiles (those columns took half the time; the whole job 9%
# less, benchmarks/engine.py at 4M rows; the generator's rows 30% less at 1M). Only for the
# jobs that compute such rows, the features write and the generator: MLlib's pipeline
# transforms ran 4x slower with it (figures: benchmarks/README.md), so `session_settings`
# scopes it to them.
WIDE_STAGE_CONF = {"spark.sql.codegen.hugeMethodLimit": "8000"}

# Java 17's G1 throws OutOfMemoryError after 2 retries while JNI code (lz4, snappy, zstd)
# holds the GC locker (JDK-8192647, fixed in Java 22): tasks compressing shuffle blocks on
# every core hit that with most of the heap free. Local tasks run in the driver's JVM.
GC_LOCKER_RETRIES = "-XX:+UnlockDiagnosticVMOptions -XX:GCLockerRetryAllocationCount=100"

# Sane for 2 cores and a few GiB: UTC so event dates do not depend on the machine, no
# speculation (our jobs have side effects). 64 shuffle partitions that adaptive execution
# coalesces to the data's size, so small inputs become a task or two and large ones stay
# small per task (a few fixed partitions ran the heap out). Small Tungsten pages: every
# broadcast hash relation holds at least one page for as long as its plan lives, and a
# pipeline transform holds one per vocabulary lookup (figures: benchmarks/README.md).
EMBEDDED_CONF = {
    "spark.master": "local[*]",
    "spark.jars.packages": DELTA_PACKAGE,
    "spark.jars.excludes": DELTA_EXCLUDES,
    "spark.driver.memory": "4g",
    "spark.buffer.pageSize": "2m",
    "spark.driver.extraJavaOptions": GC_LOCKER_RETRIES,
    "spark.sql.shuffle.partitions": "64",
    "spark.sql.adaptive.enabled": "true",
    "spark.default.parallelism": "4",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.speculation": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
}


class DeltaNotAvailable(RuntimeError):
    """The JVM has no Delta classes: the submitter forgot the Delta package."""


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands Python its gateway port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def jvm_running() -> bool:
    """Whether this process has its driver JVM already: a live session's, a stopped one's
    (pyspark keeps the JVM for the next session), spark-submit's or Databricks'."""
    from pyspark import SparkContext

    return under_spark_submit() or on_databricks() or SparkContext._gateway is not None


def java_causes(err: BaseException) -> list[Any]:
    """A py4j error's Java exception and its causes, outermost first (20 at most: a cause
    loop ends too); [] for an error that did not come from the JVM."""
    chain = [getattr(err, "java_exception", None)]
    while chain[-1] is not None and len(chain) <= 20:
        chain.append(chain[-1].getCause())
    return [cause for cause in chain if cause is not None]


def get_spark(app_name: str = "sparkml_ext", conf: Mapping[str, str] | None = None,
              jvm_output: Path | None = None) -> SparkSession:
    """Return the session for this process, creating it only where we own it.

    `conf` holds extra settings (for example from a pipeline's ``spark:`` section);
    they never override what spark-submit or Databricks already set. `jvm_output` is a
    file that the JVM this call starts appends its stdout and stderr to; a JVM that runs
    already (see `jvm_running`) keeps its output where it goes.
    """
    if on_databricks():
        return SparkSession.builder.getOrCreate()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    builder = SparkSession.builder.appName(app_name)
    wanted = dict(DELTA_SQL_CONF)
    if not under_spark_submit():
        wanted = {**EMBEDDED_CONF, **wanted}
        # Python workers must run this interpreter (with numpy, pyarrow, this package),
        # not whatever `python3` is first on PATH; pyspark reads it at context start.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    wanted.update(conf or {})
    java_options = wanted.get("spark.driver.extraJavaOptions", GC_LOCKER_RETRIES)
    if not under_spark_submit() and GC_LOCKER_RETRIES not in java_options:
        # a caller's own JVM options (say, -D properties) come with the retries, not instead
        wanted["spark.driver.extraJavaOptions"] = f"{GC_LOCKER_RETRIES} {java_options}"
    if under_spark_submit():
        from pyspark import SparkConf

        submitted = SparkConf()
        wanted = {k: v for k, v in wanted.items() if not submitted.contains(k)}
    for key, value in wanted.items():
        builder = builder.config(key, value)
    if jvm_output is not None and not jvm_running():
        _start_jvm(app_name, wanted, jvm_output)
    spark = builder.getOrCreate()
    _require_delta(spark)
    return spark


@contextmanager
def session_settings(spark: SparkSession, settings: Mapping[str, str], *, override: bool) -> Iterator[None]:
    """Run the block with `settings` in the session's conf, and put back what it held before.

    override=False for tuning: a value the session already has (the submitter's, the
    pipeline's ``spark:`` section) wins. override=True for what one write must carry (a
    MERGE takes its commit metadata and txn id from the session, not from writer options).
    """
    before = {name: spark.conf.get(name, None) for name in settings}
    chosen = {name: value for name, value in settings.items() if override or before[name] is None}
    for name, value in chosen.items():
        spark.conf.set(name, value)
    try:
        yield
    finally:
        for name in chosen:
            if before[name] is None:
                spark.conf.unset(name)
            else:
                spark.conf.set(name, before[name])


@contextmanager
def cached(frame: DataFrame) -> Iterator[DataFrame]:
    """`frame` persisted for a block that reads it several times, and released when the block
    ends, also when it fails: a cached frame holds executor memory until it is unpersisted."""
    frame = frame.persist()
    try:
        yield frame
    finally:
        frame.unpersist()


def _start_jvm(app_name: str, settings: Mapping[str, str], output: Path) -> None:
    """Start the driver JVM and its SparkContext as `getOrCreate` would, but with the JVM's
    stdout and stderr appended to `output`; the builder then finds that context.

    `launch_gateway` takes Popen's arguments for this very purpose. The JVM keeps the file
    it was born with, so log4j's console appender, Ivy's report, the launcher's warnings
    and the Python workers it forks all write there, while this process's own stdout and
    stderr stay as they are (no file descriptor is swapped, even for a moment).
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    spark_conf = SparkConf().setAppName(app_name).setAll(list(settings.items()))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "ab") as log:
        gateway = launch_gateway(spark_conf, popen_kwargs={"stdout": log, "stderr": log})
    SparkContext(conf=spark_conf, gateway=gateway)


def _require_delta(spark: SparkSession) -> None:
    from py4j.java_gateway import JavaClass

    # py4j resolves names through Spark's class loader, which holds --packages jars;
    # an unknown name comes back as a JavaPackage instead of a JavaClass.
    if not isinstance(spark.sparkContext._jvm.io.delta.tables.DeltaTable, JavaClass):
        raise DeltaNotAvailable(
            "Delta Lake's jars are not on Spark's classpath. Add "
            f"'--packages {DELTA_PACKAGE}' to spark-submit, or use "
            "'--properties-file conf/spark/local.conf'."
        )


if __name__ == "__main__":
    # `python -m sparkml_ext.session`: start and stop a session once, so the Delta jars are
    # fetched at install time rather than in the middle of the first job.
    get_spark("sparkml_ext-setup").stop()
    print("Spark with Delta is ready")
