"""Which spec and bronze version built a feature table, from the table's own commits.

The features job extends a table only if its spec built it; the training jobs and
publish-online read a table only then; publish-online also needs the bronze version a
pinned table version was built from.
"""

from __future__ import annotations

from pyspark.sql import SparkSession

from sparkml_ext import lake
from sparkml_ext.config import ConfigError
from sparkml_ext.feature_spec import JOB


def processed_version(spark: SparkSession, target: str, spec_digest: str, file: str,
                      version: int | None = None) -> int | None:
    """The bronze version the feature table covers at `version` (default: the latest); None
    for no table. Refuses (ConfigError) a table another spec built."""
    meta = lake.last_metadata(spark, target, JOB, version)
    if meta is None:
        return None
    if meta["spec"] != spec_digest:
        raise ConfigError(
            f"{file}: features: the feature spec changed since {target} was built "
            f"(spec {meta['spec']} → {spec_digest}); write to a new tables.features path"
        )
    return int(meta["bronze_version"])
