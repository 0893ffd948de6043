"""The file system behind a path or URI, for code that reads and writes files without Spark.

One rule for every such caller (model store, run records, report pages, shards, the
Airflow DAG): a bare path is local and made absolute, anything with a scheme goes to
whatever `pyarrow.fs` opens for it (file://, s3://, gs://, hdfs://). pyarrow only, so the
torch side (`deep/`) may import it too.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of a local path or of any URI pyarrow opens, and the path in it."""
    return pafs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
