"""The job whose loaded classes become the tests' JVM archive (shipping.jvm_archive): a Delta
table written, merged into, read by version and by change feed, as the package's jobs do.

Usage: spark-submit tests/jvm_archive_job.py <empty folder>
"""

import sys

from pyspark.sql import functions as F

from sparkml_ext import lake
from sparkml_ext.session import get_spark

spark = get_spark("sparkml_ext-jvm-archive", {"spark.ui.enabled": "false"})
table = f"{sys.argv[1]}/t"
rows = spark.range(2000).select(F.col("id").cast("string").alias("key"), (F.col("id") % 7).alias("value"),
                                F.timestamp_seconds(F.col("id") * 60).alias("at"))
lake.append_once(rows, table, app_id="archive:1", partition_by=["value"],
                 properties={"delta.enableChangeDataFeed": "true"})
lake.merge_by_key(rows.where("value = 1").withColumn("value", F.lit(8)), table, "key", metadata={"job": "archive"})
data, version = lake.read_version(spark, table)
print(version, data.groupBy("value").count().orderBy("value").collect(),
      lake.read_changes(spark, table, 1, version).count())
spark.stop()
