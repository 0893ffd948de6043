"""What an embedded Spark needs to reach the S3 locations of a pipeline (`s3a://`).

Hadoop's S3A connector (`hadoop-aws`, the same version as the Hadoop client pyspark ships,
with the AWS SDK bundle it depends on) from Maven Central, and where the store is from
the environment only, as the AWS tools read it: `AWS_ENDPOINT_URL` (an S3-compatible
server; unset for AWS itself), `AWS_REGION`. Credentials are never settings: S3A's default
chain reads `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) or an
instance role. Delta commits through the package's conditional-PUT log store
(docs/object-storage.md), so that several applications may write one table. Under
spark-submit the packages and that jar are the submitter's to add (`--packages`, `--jars`:
README, "On object storage"); the other settings are still added here when the submitter
set none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from sparkml_ext.session import DELTA_PACKAGE
from sparkml_ext.storage import s3_endpoint

# pyspark 4.2.0 ships hadoop-client-api 3.5.0; S3A must be the same Hadoop release
# (tests/test_object_store.py checks the two agree).
HADOOP_AWS_PACKAGE = "org.apache.hadoop:hadoop-aws:3.5.0"

log = logging.getLogger(__name__)


# Delta commits on S3 through a conditional PUT (jvm/src: ConditionalPutS3LogStore, built by
# scripts/build_jar.py into the package), so that several applications may write one table.
LOG_STORE_JAR = str(Path(__file__).parent / "jars" / "sparkml-ext-delta.jar")
LOG_STORE_CLASS = "io.sparkmlext.delta.ConditionalPutS3LogStore"
COMMIT_SETTINGS = {
    "spark.jars": LOG_STORE_JAR,
    "spark.delta.logStore.s3a.impl": LOG_STORE_CLASS,
    "spark.hadoop.fs.s3a.create.conditional.enabled": "true",
}


def spark_settings(uris: Iterable[str | None]) -> dict[str, str]:
    """Session settings for a pipeline whose locations include `uris`: none unless one is
    on S3A; then the connector's package beside Delta's, the log store that lets several
    applications commit to one table, and the endpoint from the environment."""
    if not any(uri and uri.startswith("s3a://") for uri in uris):
        return {}
    settings = {"spark.jars.packages": f"{DELTA_PACKAGE},{HADOOP_AWS_PACKAGE}"}
    if os.path.exists(LOG_STORE_JAR):
        settings |= COMMIT_SETTINGS
    else:
        log.warning("%s is missing (build it: python scripts/build_jar.py): Delta commits on S3 fall back "
                    "to its single-writer log store; run one writing application per table", LOG_STORE_JAR)
    endpoint = s3_endpoint()
    if endpoint:  # an S3-compatible server: buckets as paths, TLS as its URL says
        settings |= {
            "spark.hadoop.fs.s3a.endpoint": endpoint,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(urlparse(endpoint).scheme == "https").lower(),
        }
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        settings["spark.hadoop.fs.s3a.endpoint.region"] = region
    return settings
