"""Publishing the cutover state to an AWS SSM parameter (String; the plain state name).

Applications read the parameter (``ssm:GetParameter``, the ``GateReaderPolicy`` in infra); the
pipeline role may get and put it, nothing else, so the value is written only when it differs
(``GetParameter`` then ``PutParameter(Overwrite=True)``): publishing twice writes once.
"""

from __future__ import annotations

import os
from typing import Any

from reconcile.gates.errors import PublishFailed

__all__ = ["publish_ssm", "resolve_region"]


def resolve_region(config: Any) -> str:
    """[gates] ssm_region, else the DSQL target's region, else AWS_REGION / AWS_DEFAULT_REGION.

    Raises:
        PublishFailed: no region is known.
    """
    region = config.gates.ssm_region or getattr(config.target, "region", None) \
        or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise PublishFailed("No AWS region is known for the SSM parameter; set [gates] ssm_region "
                            "(RECONCILE__GATES__SSM_REGION) or AWS_REGION, then run `reconcile gate publish`.")
    return region


def publish_ssm(name: str, value: str, region: str, *, client: Any = None) -> dict[str, Any]:
    """Make the parameter ``name`` hold ``value``; returns ``{"name", "region", "value", "changed", "previous"}``.

    Raises:
        PublishFailed: AWS refused or could not be reached (the message names the error code only).
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    ssm = client or boto3.client("ssm", region_name=region)
    previous = None
    try:
        try:
            previous = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
                raise
        changed = previous != value
        if changed:
            ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True,
                              Description="reconcile cutover state (written by `reconcile gate publish`)")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise PublishFailed(f"AWS SSM refused to publish the cutover state to {name} in {region} ({code}); check the "
                            "role's ssm:GetParameter/ssm:PutParameter permission, then run `reconcile gate publish`."
                            ) from None
    except BotoCoreError as exc:
        raise PublishFailed(f"AWS SSM could not be reached to publish the cutover state to {name} in {region} "
                            f"({type(exc).__name__}); check credentials and network, then run "
                            "`reconcile gate publish`.") from None
    return {"name": name, "region": region, "value": value, "changed": changed, "previous": previous}
