"""What an embedded Spark needs to reach the S3 locations of a pipeline (`s3a://`).

Hadoop's S3A connector (`hadoop-aws`, the same version as the Hadoop client pyspark ships,
with the AWS SDK bundle it depends on) from Maven Central, and where the store is from
the environment only, as the AWS tools read it: `AWS_ENDPOINT_URL` (an S3-compatible
server; unset for AWS itself), `AWS_REGION`. Credentials are never settings: S3A's default
chain reads `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) or an
instance role. Under spark-submit the package is the submitter's to add (`--packages`, README:
"On object storage"); the endpoint settings are still added here when the submitter set none.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import urlparse

from sparkml_ext.session import DELTA_PACKAGE
from sparkml_ext.storage import s3_endpoint

# pyspark 4.2.0 ships hadoop-client-api 3.5.0; S3A must be the same Hadoop release
# (tests/test_object_store.py checks the two agree).
HADOOP_AWS_PACKAGE = "org.apache.hadoop:hadoop-aws:3.5.0"


def spark_settings(uris: Iterable[str | None]) -> dict[str, str]:
    """Session settings for a pipeline whose locations include `uris`: none unless one is
    on S3A; then the connector's package beside Delta's, and the endpoint from the environment."""
    if not any(uri and uri.startswith("s3a://") for uri in uris):
        return {}
    settings = {"spark.jars.packages": f"{DELTA_PACKAGE},{HADOOP_AWS_PACKAGE}"}
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
