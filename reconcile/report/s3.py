"""Upload a report folder to S3 (``[diff] s3_uri``); boto3's default credential chain."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from reconcile.diff.errors import ReportError

_TYPES = {".html": "text/html; charset=utf-8", ".md": "text/markdown; charset=utf-8",
          ".json": "application/json", ".csv": "text/csv; charset=utf-8"}


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``.

    >>> parse_uri("s3://reports/diff/run1")
    ('reports', 'diff/run1')
    """
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise ReportError(f"{uri!r} is not an S3 URI; write it as s3://bucket/prefix")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ReportError(f"{uri!r} names no bucket; write it as s3://bucket/prefix")
    return bucket, prefix.strip("/")


def upload_folder(folder: str | Path, uri: str, *, client=None, recursive: bool = False) -> str:
    """Upload every file of ``folder`` (with ``recursive``, of its subfolders too, keeping their relative
    paths) under ``uri``; returns the URI of the uploaded folder.

    Raises:
        ReportError: the upload failed (the message names the bucket and the fix, never a secret).
    """
    base = Path(folder)
    paths = [p for p in sorted(base.rglob("*") if recursive else base.iterdir()) if p.is_file()]
    return upload_files(paths, uri, client=client, base=base)


def upload_files(paths: list[Path], uri: str, *, client=None, base: str | Path | None = None) -> str:
    """Upload ``paths`` under ``uri`` (by their names, or by their paths relative to ``base``); returns ``uri``
    normalised (as :func:`upload_folder`).

    Raises:
        ReportError: the upload failed (the message names the bucket and the fix, never a secret).
    """
    bucket, prefix = parse_uri(uri)
    if client is None:
        import boto3
        client = boto3.client("s3")
    try:
        for path in paths:
            path = Path(path)
            name = path.relative_to(base).as_posix() if base is not None else path.name
            key = f"{prefix}/{name}" if prefix else name
            ctype = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            client.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": ctype})
    except Exception as exc:  # botocore errors: say what failed, keep it one line
        name = type(exc).__name__
        raise ReportError(f"uploading the diff report to s3://{bucket}/{prefix} failed ({name}: "
                          f"{str(exc).splitlines()[0][:200]}); check the bucket name and that your AWS "
                          "credentials allow s3:PutObject there") from None
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
