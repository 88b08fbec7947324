"""Who acts on a gate, proven: the authenticated identity recorded next to the name a person types.

``--by`` is what a caller asserts. Next to it the gate records who the caller was authenticated as:

- on the command line, the AWS identity from STS ``GetCallerIdentity`` (the credentials the command
  runs with; no IAM permission is needed to call it);
- in the ``reconcile_cutover`` DAG, the Airflow user who answered the approval step (Airflow's auth
  manager authenticated them).

The two-person rule compares these identities' *principals*, not names. The principal of an AWS
identity is its ARN, except for an assumed role: the session name of an assumed role is chosen by
whoever assumes it, so two sessions of one role are one principal (the role), unless the role is an
IAM Identity Center role (``AWSReservedSSO_*``), whose session name is the signed-in user, set by
the identity provider. Identities from different channels (AWS and Airflow) cannot be told apart as
different people, so the rule refuses to pair them.

>>> aws_principal("arn:aws:sts::123456789012:assumed-role/Deployer/alice")
'arn:aws:iam::123456789012:role/Deployer'
>>> aws_principal("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin_0a1b/alice@example.com")
'arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin_0a1b/alice@example.com'
>>> aws_principal("arn:aws:iam::123456789012:user/bob")
'arn:aws:iam::123456789012:user/bob'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from reconcile.gates.errors import GateError

__all__ = ["IdentityUnavailable", "airflow_responder", "aws_caller", "aws_principal", "checked_identity",
           "principal"]

_ASSUMED = re.compile(r"arn:(?P<partition>[\w-]+):sts::(?P<account>\d+):assumed-role/(?P<role>[^/]+)/(?P<session>.+)")
KINDS = ("aws", "airflow")


class IdentityUnavailable(GateError):
    """The caller could not be authenticated (no AWS credentials, STS unreachable)."""


def aws_principal(arn: str) -> str:
    """The principal an AWS ARN stands for (see the module docstring)."""
    m = _ASSUMED.fullmatch(arn)
    if m is None or m["role"].startswith("AWSReservedSSO_"):
        return arn
    return f"arn:{m['partition']}:iam::{m['account']}:role/{m['role']}"


def aws_caller(config: Any = None, *, client: Any = None) -> dict[str, Any]:
    """The AWS identity this process runs as (STS ``GetCallerIdentity``).

    Returns:
        ``{"kind": "aws", "arn", "account", "user_id", "principal"}``.

    Raises:
        IdentityUnavailable: no credentials, or STS refused or could not be reached (the message names
            the error class or code only, never a credential).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    region = None
    if config is not None:
        region = config.gates.ssm_region or getattr(config.target, "region", None) or None
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    try:
        sts = client or boto3.client("sts", region_name=region)
        got = sts.get_caller_identity()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise IdentityUnavailable(f"AWS STS refused to say who is calling ({code}); check the credentials this "
                                  "command runs with, or approve through the reconcile_cutover DAG.") from None
    except BotoCoreError as exc:
        raise IdentityUnavailable(f"AWS STS could not authenticate the caller ({type(exc).__name__}); export AWS "
                                  "credentials (or AWS_PROFILE) for this command, or approve through the "
                                  "reconcile_cutover DAG.") from None
    arn = str(got["Arn"])
    return {"kind": "aws", "arn": arn, "account": str(got["Account"]), "user_id": str(got["UserId"]),
            "principal": aws_principal(arn)}


def airflow_responder(user: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The identity of the Airflow user who answered an approval step (``responded_by_user``), or None."""
    if not user or user.get("id") in (None, ""):
        return None
    uid = str(user["id"])
    return {"kind": "airflow", "id": uid, "name": None if user.get("name") is None else str(user["name"]),
            "principal": uid}


def checked_identity(identity: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``identity`` as recorded (a plain dict), after checking its shape; None stays None.

    Raises:
        GateError: it is not one of :func:`aws_caller` or :func:`airflow_responder`'s results.
    """
    if identity is None:
        return None
    doc = dict(identity)
    if doc.get("kind") not in KINDS or not isinstance(doc.get("principal"), str) or not doc["principal"]:
        raise GateError("The authenticated identity handed to the gate is malformed; pass what "
                        "reconcile.gates.approver.aws_caller or airflow_responder returns.")
    return doc


def principal(identity: Mapping[str, Any] | None) -> str | None:
    """``kind:principal`` of an identity (what the two-person rule compares), None when unauthenticated."""
    if not identity:
        return None
    return f"{identity.get('kind')}:{identity.get('principal')}"
