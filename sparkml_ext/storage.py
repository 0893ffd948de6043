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

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.fs as pafs

if TYPE_CHECKING:
    from botocore.exceptions import ClientError  # the s3 extra

S3_SCHEMES = ("s3://", "s3a://")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of a local path or of any URI pyarrow opens, and the path in it."""
    if uri.startswith("s3a://"):
        uri = "s3://" + uri.removeprefix("s3a://")
    return pafs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))


def s3_endpoint() -> str | None:
    """The S3-compatible server the environment names (None: AWS itself), as the AWS SDKs read it."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def described(uri: str) -> str:
    """`uri` as an error message names it: with the S3 endpoint when it is not AWS's."""
    endpoint = s3_endpoint()
    return f"{uri} at {endpoint}" if endpoint and uri.startswith(S3_SCHEMES) else uri


def join(root: str, *names: str) -> str:
    """`root`/`names`: a local path joined as the OS does, a URI with `/`."""
    if "://" in root:
        return "/".join([root.rstrip("/"), *names])
    return os.path.join(root, *names)


def read_whole(uri: str) -> pa.Buffer:
    """The whole file at `uri` in one read: on S3 one GET of the object (a stream without a
    buffer would fetch it in small ranged GETs: 8 MB/s against 500 MB/s here)."""
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as source:
        return source.read_buffer()


def write_whole(uri: str, data: bytes) -> None:
    """Publish `data` as the file at `uri` in one step, without a rename on an object store.

    A reader sees the old file, or none, or all of `data`, never a part: a local file is
    written aside (`.<name>-*.tmp`), fsynced and renamed over its name, the rename made
    durable; an object store's upload of the whole bytes becomes visible only once complete.
    """
    fs, path = filesystem(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    folder = os.path.dirname(path)
    aside = _written_aside(folder, f".{os.path.basename(path)}-", data)
    try:
        os.replace(aside, path)
    except BaseException:
        os.unlink(aside)
        raise
    fd = os.open(folder, os.O_RDONLY)  # the rename itself survives a crash right after it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_file(source: str, target: str) -> None:
    """Copy one file between any two stores `filesystem` opens (streamed, not read whole)."""
    source_fs, source_path = filesystem(source)
    target_fs, target_path = filesystem(target)
    pafs.copy_files(source_path, target_path, source_filesystem=source_fs,
                    destination_filesystem=target_fs)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the file at `uri` while the block runs: the path itself for a
    local file, else a temporary copy (for tools that take only paths, such as MLflow)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sparkml-ext-") as folder:
        local = os.path.join(folder, os.path.basename(path))
        copy_file(uri, local)
        yield local


def create_once(uri: str, data: bytes) -> bool:
    """Write `data` as a new file at `uri` unless one is there already; False if one was.

    All or nothing, and exclusive where the store can say so: a local file is written
    aside and hard-linked to its name (link fails on an existing name), an S3 object is
    put with `If-None-Match: *` (S3 refuses it when the key exists). Two writers racing for
    one name: exactly one wins, and a reader never sees a partial file. Another store is
    checked first and then written: exclusive only for one writer at a time.

    A put refused by an object with the same bytes counts as written: on S3 that is this
    put's own, stored before its reply was lost. So `data` must be unique to the writer.
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


def _written_aside(folder: str, prefix: str, data: bytes) -> str:
    """A new temporary file `<folder>/<prefix>*.tmp` holding `data`, on disk (fsynced)."""
    os.makedirs(folder, exist_ok=True)
    fd, aside = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(aside)
        raise
    return aside


def _link_if_absent(path: str, data: bytes) -> bool:
    aside = _written_aside(os.path.dirname(path), ".create-once-", data)
    try:
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
    client = boto3.client("s3")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as err:
        if _error_code(err) not in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise
    # Refused: the key is taken (or another put of it is in flight). Taken by this very put,
    # if S3 stored it and the reply was lost, so that botocore's retry found it there.
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    except ClientError as err:
        if _error_code(err) == "NoSuchKey":
            return False  # the put in flight is another writer's: it is not stored yet
        raise


def _error_code(err: ClientError) -> str | None:
    """S3's error code of a botocore ClientError ("PreconditionFailed", "NoSuchKey", ...)."""
    return err.response.get("Error", {}).get("Code")
