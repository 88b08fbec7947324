"""The audit trail's chain head, published outside the database: an SSM parameter and its history.

The hash chain of :mod:`reconcile.gates.trail` catches an edited, removed or inserted row, but not
someone who rewrites every row and the head row consistently (whoever can write the control schema
can recompute SHA-256). So after every event the head (``seq``, ``hash``, ``event_id``) is written
to the SSM parameter ``[gates] chain_parameter`` (a String holding that JSON), and SSM keeps each
value as a version (the last 100) with its time. Writing the parameter needs AWS credentials that a
database writer need not have.

Verifying (``gate status``, ``gate history``, and every approval) reads the parameter's history
before the trail and checks every published head against the trail: the event at that ``seq`` must
exist and carry that hash. Because each event's hash covers the previous one's, any rewrite of an
event at or before a published head changes that head's hash: a consistent rewrite of every row plus
the head row breaks here. Events after the latest published head (a publish that failed, or one in
flight) are reported as not pinned yet; the next event, or ``reconcile gate publish``, pins them.

Publishing never moves the parameter backwards (a slower concurrent writer leaves a newer head in
place), and writes only when the head changed.
"""

from __future__ import annotations

import json
from typing import Any

from reconcile.gates.errors import PublishFailed

__all__ = ["check_pins", "publish_head", "read_pins"]


def _client(config: Any, client: Any) -> Any:
    import boto3

    from reconcile.gates.ssm import resolve_region

    return client or boto3.client("ssm", region_name=resolve_region(config))


def _fail(config: Any, what: str, exc: Exception) -> PublishFailed:
    from botocore.exceptions import ClientError

    name = config.gates.chain_parameter
    code = exc.response.get("Error", {}).get("Code", "error") if isinstance(exc, ClientError) else type(exc).__name__
    return PublishFailed(f"AWS SSM could not {what} the audit trail's published head {name} ({code}); check the "
                         "role's ssm:GetParameterHistory/ssm:PutParameter permission and the network, then run "
                         "`reconcile gate publish`.")


def _parse(value: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("seq"), int) or not isinstance(doc.get("hash"), str):
        return None
    return doc


def read_pins(config: Any, *, client: Any = None) -> list[dict[str, Any]] | None:
    """Every published head SSM still keeps, oldest first: ``{"version", "seq", "hash", "at"}`` (a value that
    is not a head gets ``seq`` None). None when ``[gates] chain_parameter`` is unset; [] when never published.

    Raises:
        PublishFailed: SSM could not be read.
    """
    name = config.gates.chain_parameter
    if not name:
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    out: list[dict[str, Any]] = []
    try:
        ssm = _client(config, client)
        kwargs: dict[str, Any] = {"Name": name, "MaxResults": 50}
        while True:
            page = ssm.get_parameter_history(**kwargs)
            for p in page.get("Parameters", []):
                doc = _parse(str(p.get("Value", "")))
                at = p.get("LastModifiedDate")
                out.append({"version": p.get("Version"), "seq": doc["seq"] if doc else None,
                            "hash": doc["hash"] if doc else None, "at": at.isoformat() if at else None})
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return []
        raise _fail(config, "read", exc) from None
    except BotoCoreError as exc:
        raise _fail(config, "read", exc) from None
    return sorted(out, key=lambda p: p["version"] or 0)


def publish_head(config: Any, head: dict[str, Any], *, client: Any = None) -> dict[str, Any] | None:
    """Write ``head`` (``seq``, ``hash``, ``event_id``) to ``[gates] chain_parameter`` when it is newer than
    what the parameter holds. Returns ``{"name", "seq", "changed", "version"}``, None when unset.

    Raises:
        PublishFailed: SSM refused or could not be reached.
    """
    name = config.gates.chain_parameter
    if not name:
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    value = json.dumps({"seq": int(head["seq"]), "hash": head["hash"], "event_id": head.get("event_id")},
                       sort_keys=True, separators=(",", ":"))
    try:
        ssm = _client(config, client)
        current = None
        try:
            current = _parse(ssm.get_parameter(Name=name)["Parameter"]["Value"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
                raise
        if current is not None and current["seq"] >= int(head["seq"]):
            return {"name": name, "seq": current["seq"], "changed": False, "version": None}
        put = ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True,
                                Description="reconcile audit trail chain head (written after every gate event)")
    except (ClientError, BotoCoreError) as exc:
        raise _fail(config, "write", exc) from None
    return {"name": name, "seq": int(head["seq"]), "changed": True, "version": put.get("Version")}


def check_pins(rows: list[dict[str, Any]], pins: list[dict[str, Any]]) -> dict[str, Any]:
    """Check every published head against the trail's rows (in chain order).

    Returns:
        ``{"pins", "pinned_seq", "unpinned_events", "breaks": [{"seq", "event_id", "problem"}]}``.
    """
    by_seq = {r["seq"]: r for r in rows if r.get("seq") is not None}
    end = max(by_seq, default=0)
    breaks: list[dict[str, Any]] = []
    pinned = 0
    for p in pins:
        where = f"published outside the database at {p['at']} (SSM version {p['version']})"
        if p["seq"] is None:
            breaks.append({"seq": None, "event_id": None,
                           "problem": f"the chain head {where} is not a chain head: the parameter was overwritten"})
            continue
        pinned = max(pinned, p["seq"])
        row = by_seq.get(p["seq"])
        if row is None:
            if p["seq"] > 0:
                breaks.append({"seq": p["seq"], "event_id": None,
                               "problem": f"the chain head {where} is event {p['seq']}, but the trail ends at event "
                                          f"{end}: events were removed"})
        elif row["event_hash"] != p["hash"]:
            breaks.append({"seq": p["seq"], "event_id": str(row["event_id"]),
                           "problem": f"event {p['seq']} does not match the chain head {where}: the trail was "
                                      "rewritten (every row and the head recomputed)"})
    return {"pins": len(pins), "pinned_seq": pinned, "unpinned_events": max(0, end - pinned), "breaks": breaks}
