"""One Spark application appending `commits` one-row commits to a Delta table, as one of
several writers racing for the same table (tests/test_object_store.py starts two).

    python tests/delta_appender.py <table URI> <writer name> <commits>

The session is the package's own for that location (`object_store.spark_settings`: S3A and
the conditional-PUT log store); each append goes through `lake.append_once` with its own
transaction id, as ingest appends a batch.
"""

from __future__ import annotations

import sys

from sparkml_ext import lake
from sparkml_ext.object_store import spark_settings
from sparkml_ext.session import get_spark


def main(table: str, writer: str, commits: int) -> None:
    spark = get_spark(f"appender-{writer}", {"spark.master": "local[1]", "spark.ui.enabled": "false",
                                             **spark_settings([table])})
    spark.sparkContext.setLogLevel("ERROR")
    for i in range(commits):
        rows = spark.createDataFrame([(writer, i)], "writer string, i int")
        lake.append_once(rows, table, app_id=f"{writer}-{i}", attempts=10)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
