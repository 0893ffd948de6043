"""The file system behind a path or URI, for code that reads and writes files without Spark.

One rule for every such caller (model store, run records, report pages, shards, the
Airflow DAG): a bare path is local and made absolute, anything with a scheme goes to
whatever `pyarrow.fs` opens for it (file://, s3://, gs://, hdfs://); Hadoop's `s3a://`,
which the Spark jobs use, names the same object as `s3://`. An S3 endpoint other than
AWS comes from the environment (`AWS_ENDPOINT_URL`), as pyarrow and boto3 both read it.
pyarrow only (boto3 where an S3 write must be conditional), so the torch side (`deep/`)
may import it too.
"""

from __future__ import annotations

import os
import tempfile

import pyarrow.fs as pafs

S3_SCHEMES = ("s3://", "s3a://")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of a local path or of any URI pyarrow opens, and the path in it."""
    if uri.startswith("s3a://"):
        uri = "s3://" + uri.removeprefix("s3a://")
    return pafs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))


def create_once(uri: str, data: bytes) -> bool:
    """Write `data` as a new file at `uri` unless one is there already; False if one was.

    All or nothing, and exclusive where the store can say so: a local file is written
    aside and hard-linked to its name (link fails on an existing name), an S3 object is
    put with `If-None-Match: *` (S3 refuses it when the key exists). Two writers racing for
    one name: exactly one wins, and a reader never sees a partial file. Another store is
    checked first and then written: exclusive only for one writer at a time.
    """
    if uri.startswith(S3_SCHEMES):
        return _put_if_absent(uri, data)
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return _link_if_absent(path, data)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    with fs.open_output_stream(path) as out:
        out.write(data)
    return True


def _link_if_absent(path: str, data: bytes) -> bool:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, aside = tempfile.mkstemp(dir=folder, prefix=".create-once-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(aside)


def _put_if_absent(uri: str, data: bytes) -> bool:
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError as err:
        raise RuntimeError(f"writing {uri} once needs boto3 ({err}): pip install 'sparkml-ext[s3]'") from None
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False  # there already, or another writer's put of the same key is in flight
        raise
