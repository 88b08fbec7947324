"""The Kinesis side of the reverse replay: a client for the configured stream (AWS or the local stand-in)."""

from __future__ import annotations

from typing import Any

from reconcile.reverse.settings import ReverseSettings


def kinesis_client(settings: ReverseSettings) -> Any:
    """A boto3 Kinesis client for ``[reverse]``: AWS credentials from the usual chain, or the local endpoint."""
    from reconcile.local.kinesis import client

    return client(settings.endpoint_url, settings.region)
