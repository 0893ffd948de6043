"""Writers racing for one Delta table on S3, each a Spark application of its own (so that the
session is the package's for an S3 location, whatever else the test process runs):

    python tests/s3_writers.py append <table URI> <writer name> <commits>
    python tests/s3_writers.py plain <table URI> <commits>
    python tests/s3_writers.py race <commit file URI>

`append`: `commits` one-row commits through `lake.append_once`, each with its own
transaction id, as ingest appends a batch. `plain`: `commits` one-row appends with Spark's
own writer and no transaction id, as a user's job writes, then the rows the table holds, as
JSON. `race`: two threads write one commit file through
the log store the session configures (300,000 lines each, so both are past the "is it
there?" check before either upload completes) and print each one's outcome as JSON.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from pyspark.sql import SparkSession

from sparkml_ext import lake
from sparkml_ext.object_store import LOG_STORE_CLASS, spark_settings
from sparkml_ext.session import get_spark


def session(name: str, location: str) -> SparkSession:
    spark = get_spark(name, {"spark.master": "local[1]", "spark.ui.enabled": "false",
                             **spark_settings([location])})
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def append(table: str, writer: str, commits: int) -> None:
    spark = session(f"appender-{writer}", table)
    for i in range(commits):
        rows = spark.createDataFrame([(writer, i)], "writer string, i int")
        lake.append_once(rows, table, app_id=f"{writer}-{i}", attempts=10)
    spark.stop()


def plain(table: str, commits: int) -> None:
    spark = session("plain-appender", table)
    for i in range(commits):
        spark.createDataFrame([(i,)], "i int").write.format("delta").mode("append").save(table)
    print(json.dumps(sorted(row.i for row in spark.read.format("delta").load(table).collect())))
    spark.stop()


def race(commit_file: str) -> None:
    from py4j.protocol import Py4JJavaError

    spark = session("log-store-race", commit_file)
    jvm, conf = spark._jvm, spark._jsc.hadoopConfiguration()
    store, path = getattr(jvm, LOG_STORE_CLASS)(conf), jvm.org.apache.hadoop.fs.Path(commit_file)

    def write(writer: str) -> str:
        actions = jvm.java.util.Collections.nCopies(300_000, json.dumps({"writer": writer})).iterator()
        try:
            store.write(path, actions, False, conf)
            return "committed"
        except Py4JJavaError as err:
            return f"{err.java_exception.getClass().getName()} caused by {err.java_exception.getCause()}"

    with ThreadPoolExecutor(2) as pool:
        print(json.dumps(dict(zip("ab", pool.map(write, "ab"), strict=True))))
    spark.stop()


if __name__ == "__main__":
    if sys.argv[1] == "append":
        append(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "plain":
        plain(sys.argv[2], int(sys.argv[3]))
    else:
        race(sys.argv[2])
