"""A real S3 server on loopback (moto's, from PyPI), for the tests and `make s3-server`.

    python scripts/s3_server.py [--port 9000] [--bucket lake]

runs until interrupted, after printing the environment a job needs to use it
(`AWS_ENDPOINT_URL` and test credentials). moto's server also speaks DynamoDB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from loopback import free_port

# Test credentials: moto accepts any; real ones never belong in a file.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@contextmanager
def s3_server(bucket: str, port: int | None = None, log: str = os.devnull) -> Iterator[dict[str, str]]:
    """Start the server with `bucket` in it; yields the environment that points at it."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(url, server)
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL": url}
        _create_bucket(bucket, env)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_until_up(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {server.returncode} before it served {url}")
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the S3 server did not answer at {url} within {seconds:.0f} s")


def _create_bucket(bucket: str, env: dict[str, str]) -> None:
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                 aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", default="lake")
    args = parser.parse_args()
    with s3_server(args.bucket, args.port, log="/dev/stderr") as env:
        for name, value in env.items():
            print(f"export {name}={value}")
        print(f"export SPARKML_EXT_LAKEHOUSE=s3a://{args.bucket}/lakehouse", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
