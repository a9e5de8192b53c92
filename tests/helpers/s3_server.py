"""A real S3-protocol server for the tests: moto's standalone server (`python -m moto.server`, from the package
registry, S3 only) in its own process on a free port, with a bucket made through boto3 as an operator would. A
process of its own, so a test can stop it (the store unreachable) and start it again on the same port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx

from tests.helpers.e2e_service import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ftaas-test", "AWS_SECRET_ACCESS_KEY": "ftaas-test-secret"}


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, **CREDENTIALS},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.endpoint, timeout=1)
                return
            except httpx.HTTPError:
                assert self.proc.poll() is None, "moto's server exited"
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.2)

    def stop(self) -> None:
        """Gone: nothing answers on the port until start(). moto keeps its buckets in memory, so they go too."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **_boto_credentials()).create_bucket(
            Bucket=name
        )

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """What a service process needs to use the bucket."""
        url = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")
        return {"FTAAS_STORE_URL": url, "FTAAS_S3_ENDPOINT": self.endpoint, **CREDENTIALS}


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


@contextmanager
def s3_server():
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
