"""A Kinesis Data Streams endpoint for the local stack: moto's server, in a thread of this process.

Aurora DSQL delivers CDC into a Kinesis stream *you* own; locally that stream is served by moto
(``moto[server]``), which speaks the real Kinesis wire protocol, so the reverse replayer talks to it
through the same boto3 client it uses against AWS (only ``endpoint_url`` differs). moto gives each
shard small integer sequence numbers, keeps every record (no retention limit) and supports
``SplitShard``/``MergeShards`` as API calls, but keeps routing new records to a closed parent shard (AWS
routes them to its children) and reports the parent's ``EndingSequenceNumber`` as its last record so
far. On AWS, sequence numbers are large decimal strings: code compares them as integers either way.

>>> server = LocalKinesis().start()        # doctest: +SKIP
>>> ensure_stream(client(server.url), "cdc", shards=2)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from typing import Any

from reconcile.errors import LocalStackError

REGION = "us-east-1"
LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
"""moto accepts any credentials; these keep boto3 from looking for real ones."""


class LocalKinesis:
    """moto's server on 127.0.0.1 (a free port unless given), started and stopped by its owner.

    ``process=True`` runs it as its own process (``python -m moto.server``) instead of a thread: a
    benchmark then measures the consumer, not the consumer and the server sharing one interpreter lock.
    """

    def __init__(self, port: int = 0, *, process: bool = False) -> None:
        self.port = port
        self.process = process
        self._server: Any = None
        self._proc: subprocess.Popen | None = None
        self.url: str | None = None

    def _start_process(self) -> LocalKinesis:
        port = self.port or _free_port()
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not _port_open(port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise LocalStackError("moto's server did not start (is moto[server] installed? `uv sync`)")
            time.sleep(0.05)
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        return self

    def start(self) -> LocalKinesis:
        if self.process:
            return self._start_process()
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:  # pragma: no cover - the dev dependency group brings it
            raise LocalStackError("the local Kinesis stream needs moto's server (`uv sync` installs moto[server])") \
                from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.port = port
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(30)
            self._proc = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalKinesis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def client(endpoint_url: str | None, region: str = REGION, **kwargs: Any) -> Any:
    """A boto3 Kinesis client; with an ``endpoint_url`` (the local server) it carries dummy credentials."""
    import boto3

    extra = dict(LOCAL_CREDENTIALS) if endpoint_url else {}
    return boto3.client("kinesis", endpoint_url=endpoint_url, region_name=region, **extra, **kwargs)


def ensure_stream(kinesis: Any, name: str, *, shards: int = 2, timeout: float = 30.0) -> str:
    """Create the stream when missing (``shards`` provisioned shards, 10 MiB records) and wait for ACTIVE.

    On AWS, create the stream for DSQL as its guide says (``ON_DEMAND``, ``MaxRecordSizeInKiB=10240``):
    this helper serves the local stand-in, where a fixed shard count makes reading every shard matter.
    Returns the stream ARN.
    """
    try:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    except kinesis.exceptions.ResourceNotFoundException:
        kinesis.create_stream(StreamName=name, ShardCount=shards, MaxRecordSizeInKiB=10240)
        summary = None
    deadline = time.monotonic() + timeout
    while summary is None or summary["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise LocalStackError(f"Kinesis stream {name} did not become ACTIVE within {timeout:.0f} s")
        time.sleep(0.05)
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    return summary["StreamARN"]
