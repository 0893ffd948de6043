"""One local SparkSession with Delta for the whole test run (real Spark, real Delta)."""

from __future__ import annotations

import os

import pytest

# MLflow tracking is tested in test_tracking.py (which switches it on); elsewhere every
# tracked MLlib model would be saved, copied and reloaded by MLflow (~20 s a fit). The
# spark-submit and Airflow tests' jobs inherit this too.
os.environ.setdefault("SPARKML_EXT_TRACKING", "disabled")


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from sparkml_ext.session import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_spark(
        "sparkml_ext-tests",
        {
            "spark.master": "local[2]",
            "spark.sql.shuffle.partitions": "2",
            "spark.ui.enabled": "false",
            "spark.sql.warehouse.dir": str(warehouse),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={warehouse}",
        },
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
