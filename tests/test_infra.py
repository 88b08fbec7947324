"""infra/: the AWS side as code, checked with the tools platform teams use.

* every CloudFormation template passes cfn-lint (errors and warnings fail; a warning may only be
  silenced in the template's own cfn-lint config, with a written justification next to it);
* the IAM template grants nothing beyond the listed actions, on nothing beyond the listed
  resources (and the checker is shown to catch the usual ways of over-granting);
* dsql-lint passes on the DSQL role SQL, and both SQL files run as documented (psql, one
  statement per transaction) on the local stack: the DSQL stand-in and the logical-decoding source;
* the compose file parses and mounts dags/; the README's reconcile.toml snippet is valid config.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from cfnlint.api import lint, lint_file
from cfnlint.config import ManualArgs
from cfnlint.decode import decode

from reconcile.config import DEMO_TABLES, load_config
from reconcile.local import stack

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
CFN = INFRA / "cloudformation"
TEMPLATES = sorted(CFN.glob("*.yaml"))
TARGET_ROLES_SQL = INFRA / "sql" / "target-roles.sql"
SOURCE_GRANTS_SQL = INFRA / "sql" / "source-grants.sql"
COMPOSE = INFRA / "compose" / "docker-compose.yaml"

ALLOWED_ACTIONS = frozenset({
    "dsql:DbConnect", "dsql:DbConnectAdmin", "ssm:GetParameter", "ssm:PutParameter", "ssm:GetParameterHistory",
    "s3:PutObject", "cloudwatch:PutMetricData",
})
TRUST_ACTIONS = frozenset({"sts:AssumeRole"})
CLUSTER_REFS = ({"Ref": "ClusterArn"}, {"Ref": "PeerClusterArn"})
TRUSTED_REFS = ({"Ref": "TrustedPrincipalArn"}, {"Ref": "BootstrapPrincipalArn"})
GATE_ARN = {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}"
                       ":parameter${GateParameterName}"}
CHAIN_ARN = {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}"
                        ":parameter${ChainParameterName}"}
REPORTS_ARN = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ReportsBucket}/${ReportsPrefix}*"}
NAMESPACE_CONDITION = {"StringEquals": {"cloudwatch:namespace": {"Ref": "MetricsNamespace"}}}
NO_VALUE = {"Ref": "AWS::NoValue"}
# Metadata key next to cfn-lint's config: {rule id: why ignoring it is right for this template}.
JUSTIFICATIONS_KEY = "cfn-lint-justifications"


def _tool(name: str) -> str:
    """A console script of this venv (next to the interpreter), else one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; run `uv sync` (it is a project dependency)")
    return found


def _template(path: Path) -> dict:
    """A template as plain data; short tags (!Ref, !Sub ...) become their long form."""
    template, matches = decode(str(path))
    assert not matches, [m.message for m in matches]
    return json.loads(json.dumps(template))


def _describe(matches) -> str:
    return "\n".join(f"{m.rule.id} {m.filename}:{m.linenumber} {m.message}" for m in matches)


# --------------------------------------------------------------------------------------------
# cfn-lint


def test_templates_present():
    assert {p.name for p in TEMPLATES} >= {
        "dsql-cluster.yaml", "pipeline-iam.yaml", "aurora-source-params.yaml", "monitoring.yaml", "reverse-cdc.yaml"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_clean(path):
    # Regions come from each template's own Metadata cfn-lint config (DSQL is not in every Region).
    matches = lint_file(path, config=ManualArgs(include_checks=["I"]))
    blocking = [m for m in matches if m.rule.id[0] in "EW"]
    assert not blocking, "cfn-lint:\n" + _describe(matches)
    if matches:  # informational findings only: shown, not fatal
        print(_describe(matches))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_ignores_are_justified(path):
    metadata = _template(path).get("Metadata", {})
    ignored = metadata.get("cfn-lint", {}).get("config", {}).get("ignore_checks", [])
    justified = metadata.get(JUSTIFICATIONS_KEY, {})
    missing = [rule for rule in ignored if not str(justified.get(rule, "")).strip()]
    assert not missing, (f"{path.name} ignores {missing} without a reason: add "
                         f"Metadata.{JUSTIFICATIONS_KEY}.<rule>: <why it does not apply>")


def test_cfn_lint_catches_errors():
    """The harness really lints DSQL resources: a misspelt property and attribute are errors."""
    bad = (CFN / "dsql-cluster.yaml").read_text()
    bad = bad.replace("DeletionProtectionEnabled: true", "DeletionProtection: true")
    bad = bad.replace("!GetAtt Cluster.Endpoint", "!GetAtt Cluster.Hostname")
    ids = sorted(m.rule.id for m in lint(bad, regions=["us-east-1"]))
    assert "E3002" in ids and "E6101" in ids, ids


# --------------------------------------------------------------------------------------------
# The DSQL cluster and the source parameter group


def test_dsql_cluster_template():
    t = _template(CFN / "dsql-cluster.yaml")
    cluster = t["Resources"]["Cluster"]
    props = cluster["Properties"]
    assert cluster["Type"] == "AWS::DSQL::Cluster"
    assert props["DeletionProtectionEnabled"] is True  # literal: no parameter can turn it off
    assert cluster["DeletionPolicy"] == cluster["UpdateReplacePolicy"] == "Retain"
    assert props["KmsEncryptionKey"] == {"Fn::If": ["HasKmsKey", {"Ref": "KmsEncryptionKey"}, NO_VALUE]}
    multi = props["MultiRegionProperties"]["Fn::If"]
    assert multi[0] == "IsMultiRegion" and multi[2] == NO_VALUE
    assert set(multi[1]) == {"WitnessRegion", "Clusters"}
    assert {tag["Key"] for tag in props["Tags"]} >= {"Name", "Environment", "Application"}
    outputs = t["Outputs"]
    assert outputs["ClusterIdentifier"]["Value"] == {"Ref": "Cluster"}
    assert outputs["ClusterArn"]["Value"] == {"Fn::GetAtt": ["Cluster", "ResourceArn"]}
    assert outputs["Endpoint"]["Value"] == {"Fn::GetAtt": ["Cluster", "Endpoint"]}


def test_source_parameter_group_enables_logical_decoding():
    t = _template(CFN / "aurora-source-params.yaml")
    group = t["Resources"]["SourceParameterGroup"]
    params = group["Properties"]["Parameters"]
    assert group["Type"] == "AWS::RDS::DBClusterParameterGroup"
    assert set(t["Parameters"]["Family"]["AllowedValues"]) <= {"aurora-postgresql16", "aurora-postgresql17"}
    assert params["rds.logical_replication"] == "1"
    assert params["track_commit_timestamp"] == "1"
    assert "pg_stat_statements" in params["shared_preload_libraries"].split(",")
    # At least what the local stand-in of the source runs with (reconcile/local/stack.py: 20).
    for key, parameter in (("max_replication_slots", "MaxReplicationSlots"),
                           ("max_wal_senders", "MaxWalSenders"),
                           ("max_logical_replication_workers", "MaxLogicalReplicationWorkers")):
        assert params[key] == {"Ref": parameter}
    defaults = {p: t["Parameters"][p]["Default"] for p in ("MaxReplicationSlots", "MaxWalSenders")}
    assert min(defaults.values()) >= 20 and defaults["MaxWalSenders"] >= defaults["MaxReplicationSlots"]
    alarms = {r["Properties"]["MetricName"]: r["Properties"] for r in t["Resources"].values()
              if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == {"OldestReplicationSlotLag", "TransactionLogsDiskUsage"}
    for alarm in alarms.values():
        assert alarm["Namespace"] == "AWS/RDS"
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopicArn"}]
        assert alarm["Threshold"]["Ref"] in t["Parameters"]


# --------------------------------------------------------------------------------------------
# IAM: nothing beyond the listed actions and resources


def _flatten(value) -> list:
    """Every value a property may take: lists flattened, both Fn::If branches, AWS::NoValue dropped."""
    if isinstance(value, list):
        return [leaf for item in value for leaf in _flatten(item)]
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, when_true, when_false = value["Fn::If"]
        return _flatten(when_true) + _flatten(when_false)
    return [] if value == NO_VALUE else [value]


def _policy_documents(template: dict):
    """(resource name, "trust" | "identity", policy document) for every IAM policy in the template."""
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            yield name, "trust", props["AssumeRolePolicyDocument"]
            for policy in props.get("Policies", []):
                yield name, "identity", policy["PolicyDocument"]
        elif resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            yield name, "identity", props["PolicyDocument"]


def _statements(document: dict) -> list[dict]:
    statements = document["Statement"]
    return statements if isinstance(statements, list) else [statements]


def iam_violations(template: dict) -> list[str]:
    """Every way the template grants more than the pipeline's list; empty when it grants no more."""
    problems = []
    for name, resource in template["Resources"].items():
        if resource["Type"] not in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy"):
            problems.append(f"{name}: unexpected resource type {resource['Type']}")
        if "ManagedPolicyArns" in resource.get("Properties", {}):
            problems.append(f"{name}: attaches managed policies "
                            f"{resource['Properties']['ManagedPolicyArns']}")
    for name, kind, document in _policy_documents(template):
        for i, statement in enumerate(_statements(document)):
            where = f"{name} {kind} statement {statement.get('Sid', i)}"
            for key in ("NotAction", "NotResource", "NotPrincipal"):
                if key in statement:
                    problems.append(f"{where}: uses {key}")
            if statement.get("Effect") != "Allow":
                problems.append(f"{where}: Effect {statement.get('Effect')!r}")
            actions = _flatten(statement.get("Action", []))
            for action in actions:
                if not isinstance(action, str) or "*" in action:
                    problems.append(f"{where}: action {action!r} is not a single named action")
            if kind == "trust":
                if set(actions) != TRUST_ACTIONS:
                    problems.append(f"{where}: trust policy allows {actions}")
                principal = statement.get("Principal")
                if not isinstance(principal, dict) or set(principal) != {"AWS"} or not all(
                        p in TRUSTED_REFS for p in _flatten(principal["AWS"])):
                    problems.append(f"{where}: principal {principal!r} is not a trusted-principal parameter")
                continue
            resources = _flatten(statement.get("Resource", []))
            for action in actions:
                if action in TRUST_ACTIONS:
                    problems.append(f"{where}: {action} belongs in trust policies only")
                elif action not in ALLOWED_ACTIONS:
                    problems.append(f"{where}: action {action} is not on the list")
                elif action.startswith("dsql:"):
                    if not resources or not all(r in CLUSTER_REFS for r in resources) \
                            or CLUSTER_REFS[0] not in resources:
                        problems.append(f"{where}: {action} on {resources}, not the cluster ARN parameter")
                    if action == "dsql:DbConnectAdmin" and name != "BootstrapRole":
                        problems.append(f"{where}: dsql:DbConnectAdmin outside the bootstrap role")
                elif action == "ssm:GetParameterHistory":
                    if resources != [CHAIN_ARN]:
                        problems.append(f"{where}: {action} on {resources}, not the chain-head parameter")
                elif action.startswith("ssm:"):
                    if resources not in ([GATE_ARN], [CHAIN_ARN]):
                        problems.append(f"{where}: {action} on {resources}, not the gate or chain-head parameter")
                elif action == "s3:PutObject":
                    if resources != [REPORTS_ARN]:
                        problems.append(f"{where}: {action} on {resources}, not the reports prefix")
                elif action == "cloudwatch:PutMetricData" and (
                        resources != ["*"] or statement.get("Condition") != NAMESPACE_CONDITION):
                    problems.append(f"{where}: {action} without the cloudwatch:namespace condition")
            if "*" in resources and actions != ["cloudwatch:PutMetricData"]:
                problems.append(f"{where}: Resource '*' for {actions}")
    return problems


def _actions_by_principal(template: dict) -> dict[str, set[str]]:
    granted: dict[str, set[str]] = {}
    for name, kind, document in _policy_documents(template):
        if kind == "identity":
            for statement in _statements(document):
                granted.setdefault(name, set()).update(_flatten(statement["Action"]))
    return granted


@pytest.fixture(scope="module")
def iam_template() -> dict:
    return _template(CFN / "pipeline-iam.yaml")


def test_iam_grants_nothing_beyond_the_list(iam_template):
    assert iam_violations(iam_template) == []


def test_iam_each_principal_gets_exactly_its_actions(iam_template):
    assert _actions_by_principal(iam_template) == {
        "PipelineRole": {"dsql:DbConnect", "ssm:GetParameter", "ssm:PutParameter", "ssm:GetParameterHistory",
                         "s3:PutObject", "cloudwatch:PutMetricData"},
        "BootstrapRole": {"dsql:DbConnectAdmin"},
        "GateReaderPolicy": {"ssm:GetParameter"},
    }


def _statement(template: dict, sid: str) -> dict:
    for _, _, document in _policy_documents(template):
        for statement in _statements(document):
            if statement.get("Sid") == sid:
                return statement
    raise KeyError(sid)


def _pipeline_policy(template: dict) -> dict:
    return template["Resources"]["PipelineRole"]["Properties"]["Policies"][0]["PolicyDocument"]


OVERGRANTS = {
    "wildcard action": lambda t: _statement(t, "ReportUploads").update(Action=["s3:PutObject", "s3:*"]),
    "unlisted action": lambda t: _statement(t, "ReportUploads").update(
        Action=["s3:PutObject", "s3:GetObject"]),
    "bucket-wide uploads": lambda t: _statement(t, "ReportUploads").update(
        Resource={"Fn::Sub": "arn:${AWS::Partition}:s3:::${ReportsBucket}/*"}),
    "star resource": lambda t: _statement(t, "GateParameterReadWrite").update(Resource="*"),
    "chain head writable elsewhere": lambda t: _statement(t, "ChainHeadReadWrite").update(Resource="*"),
    "history of the state parameter": lambda t: _statement(t, "GateParameterReadWrite").update(
        Action=["ssm:GetParameter", "ssm:PutParameter", "ssm:GetParameterHistory"]),
    "metrics in any namespace": lambda t: _statement(t, "MetricsInOurNamespaceOnly").pop("Condition"),
    "dsql on every cluster": lambda t: _statement(t, "DsqlConnectAsCustomRole").update(Resource="*"),
    "admin for the pipeline": lambda t: _statement(t, "DsqlConnectAsCustomRole").update(
        Action=["dsql:DbConnect", "dsql:DbConnectAdmin"]),
    "assume role in identity policy": lambda t: _pipeline_policy(t)["Statement"].append(
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": {"Ref": "ClusterArn"}}),
    "NotAction": lambda t: _statement(t, "ReportUploads").update(NotAction="iam:*"),
    "managed policy attached": lambda t: t["Resources"]["PipelineRole"]["Properties"].update(
        ManagedPolicyArns=["arn:aws:iam::aws:policy/AdministratorAccess"]),
    "anyone may assume": lambda t: t["Resources"]["BootstrapRole"]["Properties"]
    ["AssumeRolePolicyDocument"]["Statement"][0].update(Principal={"AWS": "*"}),
    "extra IAM user": lambda t: t["Resources"].update(Extra={"Type": "AWS::IAM::User", "Properties": {}}),
}


@pytest.mark.parametrize("mutate", OVERGRANTS.values(), ids=OVERGRANTS.keys())
def test_iam_checker_catches_overgrants(iam_template, mutate):
    template = copy.deepcopy(iam_template)
    mutate(template)
    assert iam_violations(template)


def test_iam_parameter_patterns(iam_template):
    """CloudFormation refuses parameter values that would widen the grants (AllowedPattern)."""
    params = iam_template["Parameters"]

    def ok(name: str, value: str) -> bool:
        return re.fullmatch(params[name]["AllowedPattern"], value) is not None

    assert ok("ReportsPrefix", "reconcile/reports/") and ok("ReportsPrefix", "reports/")
    for bad in ("", "/", "*/", "reports/*/", "reports", "a//"):
        assert not ok("ReportsPrefix", bad), bad
    assert ok("GateParameterName", "/reconcile/cutover/state")
    for bad in ("", "/", "/reconcile/*", "reconcile/state"):
        assert not ok("GateParameterName", bad), bad
    assert ok("MetricsNamespace", "Reconcile") and not ok("MetricsNamespace", "AWS/RDS")
    assert not ok("ClusterArn", "*") and not ok("ClusterArn", "arn:aws:dsql:us-east-1:111122223333:cluster/*")
    assert not ok("TrustedPrincipalArn", "*")


def test_terraform_policies_match_the_list():
    main = (INFRA / "terraform" / "main.tf").read_text()
    assert re.search(r"deletion_protection_enabled\s*=\s*true", main)
    actions = [a for group in re.findall(r"actions\s*=\s*\[([^\]]*)\]", main)
               for a in re.findall(r'"([^"]+)"', group)]
    assert actions and set(actions) <= ALLOWED_ACTIONS
    for block in re.findall(r"statement\s*\{(.*?)\n  \}", main, re.DOTALL):
        if re.search(r'resources\s*=\s*\["\*"\]', block):
            assert '"cloudwatch:PutMetricData"' in block and "cloudwatch:namespace" in block, block
    terraform = shutil.which("terraform")
    if terraform:  # syntax check; `terraform validate` would need the provider downloaded
        run = subprocess.run([terraform, "fmt", "-check", "-recursive", str(INFRA / "terraform")],
                             check=False, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr


# --------------------------------------------------------------------------------------------
# The reverse replay's CDC stream (reverse-cdc.yaml)

STREAM_ARN = {"Fn::GetAtt": ["CdcStream", "Arn"]}
KINESIS_KEY = {"Ref": "KinesisKmsKeyArn"}
REVERSE_GRANTS = {
    # principal: {action: allowed resources}
    "CdcServiceRole": {"kinesis:PutRecord": [STREAM_ARN], "kinesis:PutRecords": [STREAM_ARN],
                       "kinesis:DescribeStreamSummary": [STREAM_ARN], "kinesis:ListShards": [STREAM_ARN],
                       "kms:GenerateDataKey": [KINESIS_KEY]},
    "ReverseConsumerPolicy": {
        "kinesis:GetRecords": [STREAM_ARN], "kinesis:GetShardIterator": [STREAM_ARN],
        "kinesis:ListShards": [STREAM_ARN], "kinesis:DescribeStreamSummary": [STREAM_ARN],
        "kms:Decrypt": [KINESIS_KEY], "secretsmanager:GetSecretValue": [{"Ref": "SourceSecretArn"}],
        "ssm:GetParameter": [{"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}"
                                         ":parameter${SourceParameterName}"}]},
    "StreamProvisionerRole": {
        **{a: [{"Ref": "ClusterArn"}, {"Fn::Sub": "${ClusterArn}/stream/*"}]
           for a in ("dsql:CreateStream", "dsql:GetStream", "dsql:DeleteStream", "dsql:ListStreams")},
        "iam:PassRole": [{"Fn::GetAtt": ["CdcServiceRole", "Arn"]}], "kms:Decrypt": [{"Ref": "ClusterKmsKeyArn"}],
        "logs:CreateLogStream": [{"Fn::GetAtt": ["StreamProvisionerLogs", "Arn"]}],
        "logs:PutLogEvents": [{"Fn::GetAtt": ["StreamProvisionerLogs", "Arn"]}]},
}
REVERSE_TRUST = {"CdcServiceRole": "dsql.amazonaws.com", "StreamProvisionerRole": "lambda.amazonaws.com"}


def _identity_statements(template: dict):
    """(principal, statement) of every identity statement; an Fn::If statement counts as its true branch."""
    for name, kind, document in _policy_documents(template):
        if kind != "identity":
            continue
        for statement in _statements(document):
            if set(statement) == {"Fn::If"}:
                statement = statement["Fn::If"][1]
            yield name, statement


def reverse_iam_violations(template: dict) -> list[str]:
    """Every grant of reverse-cdc.yaml beyond :data:`REVERSE_GRANTS`, and every trust beyond its service."""
    problems = []
    for name, resource in template["Resources"].items():
        if resource["Type"].startswith("AWS::IAM::") and name not in REVERSE_GRANTS:
            problems.append(f"{name}: unexpected IAM resource {resource['Type']}")
        if "ManagedPolicyArns" in resource.get("Properties", {}):
            problems.append(f"{name}: attaches managed policies")
    for name, kind, document in _policy_documents(template):
        if kind == "trust":
            for statement in _statements(document):
                if statement.get("Principal") != {"Service": REVERSE_TRUST.get(name)} \
                        or statement.get("Action") != "sts:AssumeRole" or statement.get("Effect") != "Allow":
                    problems.append(f"{name}: trusts {statement.get('Principal')} for {statement.get('Action')}")
    for name, statement in _identity_statements(template):
        where = f"{name} statement {statement.get('Sid')}"
        for key in ("NotAction", "NotResource", "NotPrincipal"):
            if key in statement:
                problems.append(f"{where}: uses {key}")
        if statement.get("Effect") != "Allow":
            problems.append(f"{where}: Effect {statement.get('Effect')!r}")
        resources = _flatten(statement.get("Resource", []))
        for action in _flatten(statement.get("Action", [])):
            allowed = REVERSE_GRANTS.get(name, {}).get(action)
            if allowed is None:
                problems.append(f"{where}: action {action} is not on the list")
            elif not resources or any(r not in allowed for r in resources):
                problems.append(f"{where}: {action} on {resources}")
            if action == "iam:PassRole" and statement.get("Condition") != {
                    "StringEquals": {"iam:PassedToService": "dsql.amazonaws.com"}}:
                problems.append(f"{where}: iam:PassRole not limited to DSQL")
    return problems


@pytest.fixture(scope="module")
def reverse_template() -> dict:
    return _template(CFN / "reverse-cdc.yaml")


def test_no_native_dsql_stream_resource_so_a_custom_resource_creates_it(reverse_template):
    """If cfn-lint's registry ever gains an AWS::DSQL stream type, this fails: switch the template to it."""
    import cfnlint

    providers = Path(cfnlint.__file__).parent / "data" / "schemas" / "providers" / "us-east-1.json"
    dsql_types = set(re.findall(r'"(AWS::DSQL::\w+)"', providers.read_text()))
    assert dsql_types == {"AWS::DSQL::Cluster"}, dsql_types
    stream = reverse_template["Resources"]["DsqlCdcStream"]
    assert stream["Type"] == "Custom::DsqlCdcStream"
    props = stream["Properties"]
    assert props["ServiceToken"] == {"Fn::GetAtt": ["StreamProvisioner", "Arn"]}
    assert props["KinesisStreamArn"] == STREAM_ARN and props["RoleArn"] == {"Fn::GetAtt": ["CdcServiceRole", "Arn"]}
    code = reverse_template["Resources"]["StreamProvisioner"]["Properties"]["Code"]["ZipFile"]
    compile(code, "index.py", "exec")  # the inline function is valid Python
    assert 'ordering="UNORDERED"' in code and 'format="JSON"' in code and "delete_stream" in code
    # the function's boto3 call matches the DSQL API this boto3 knows
    import boto3

    shape = boto3.client("dsql", region_name="us-east-1").meta.service_model.operation_model("CreateStream").input_shape
    assert {"clusterIdentifier", "targetDefinition", "ordering", "format", "clientToken"} <= set(shape.members)


def test_reverse_cdc_stream_is_encrypted_with_two_shards_or_on_demand(reverse_template):
    t = reverse_template
    stream = t["Resources"]["CdcStream"]
    props = stream["Properties"]
    assert stream["Type"] == "AWS::Kinesis::Stream" and stream["DeletionPolicy"] == "Retain"
    assert props["StreamEncryption"]["EncryptionType"] == "KMS"
    assert props["StreamEncryption"]["KeyId"] == {"Fn::If": ["HasKinesisKey", KINESIS_KEY, "alias/aws/kinesis"]}
    assert t["Parameters"]["StreamMode"]["Default"] == "ON_DEMAND"
    assert props["ShardCount"] == {"Fn::If": ["IsProvisioned", {"Ref": "ShardCount"}, NO_VALUE]}
    assert t["Parameters"]["ShardCount"]["MinValue"] >= 2 and props["MaxRecordSizeInKiB"] == 10240
    assert t["Parameters"]["RetentionPeriodHours"]["MinValue"] >= 24
    assert t["Parameters"]["StreamName"]["Default"] == "reconcile-cdc"  # = [reverse] stream_name's default
    from reconcile.reverse.settings import ReverseSettings

    assert ReverseSettings().stream_name == "reconcile-cdc"
    assert t["Outputs"]["KinesisStreamArn"]["Value"] == STREAM_ARN
    assert t["Outputs"]["DsqlStreamArn"]["Value"] == {"Fn::GetAtt": ["DsqlCdcStream", "Arn"]}


def test_reverse_cdc_iam_grants_nothing_beyond_the_list(reverse_template):
    assert reverse_iam_violations(reverse_template) == []
    granted: dict[str, set[str]] = {}
    for name, statement in _identity_statements(reverse_template):
        granted.setdefault(name, set()).update(_flatten(statement["Action"]))
    assert granted == {name: set(actions) for name, actions in REVERSE_GRANTS.items()}
    trust = reverse_template["Resources"]["CdcServiceRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_the_consumer_may_call_what_the_reverse_replayer_calls(reverse_template):
    """Every Kinesis call of reconcile/reverse/ is granted to the consumer (boto3 method -> IAM action)."""
    calls = set()
    for path in (ROOT / "reconcile" / "reverse").glob("*.py"):
        calls |= set(re.findall(r"self\.kinesis\.([a-z_]+)\(", path.read_text()))
    assert calls >= {"list_shards", "get_shard_iterator", "get_records"}, calls
    needed = {"kinesis:" + "".join(w.capitalize() for w in c.split("_")) for c in calls}
    assert needed <= set(REVERSE_GRANTS["ReverseConsumerPolicy"])


REVERSE_OVERGRANTS = {
    "consumer may put": lambda t: _reverse_statement(t, "ReadEveryShard")["Action"].append("kinesis:PutRecords"),
    "any stream": lambda t: _reverse_statement(t, "ReadEveryShard").update(Resource="*"),
    "pass role anywhere": lambda t: _reverse_statement(t, "PassTheServiceRoleToDsqlOnly").pop("Condition"),
    "DSQL trusts anyone": lambda t: t["Resources"]["CdcServiceRole"]["Properties"]["AssumeRolePolicyDocument"]
    ["Statement"][0].update(Principal={"AWS": "*"}),
    "any secret": lambda t: _reverse_statement(t, "SourceCredentialsSecret").update(Resource="*"),
}


def _reverse_statement(template: dict, sid: str) -> dict:
    for _, statement in _identity_statements(template):
        if statement.get("Sid") == sid:
            return statement
    raise KeyError(sid)


@pytest.mark.parametrize("mutate", REVERSE_OVERGRANTS.values(), ids=REVERSE_OVERGRANTS.keys())
def test_reverse_iam_checker_catches_overgrants(reverse_template, mutate):
    template = copy.deepcopy(reverse_template)
    mutate(template)
    assert reverse_iam_violations(template)


# --------------------------------------------------------------------------------------------
# SQL


def _dsql_lint(path: Path) -> dict:
    run = subprocess.run([_tool("dsql-lint"), str(path), "--format", "json"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert run.stdout, run.stderr
    return json.loads(run.stdout)


def test_dsql_lint_passes_on_target_roles():
    report = _dsql_lint(TARGET_ROLES_SQL)
    (result,) = report["files"]
    assert result["error"] is None and result["diagnostics"] == [], json.dumps(result, indent=2)
    assert report["summary"]["errors"] == report["summary"]["warnings"] == 0
    sql = TARGET_ROLES_SQL.read_text()
    assert re.search(r"^CREATE ROLE reconcile_pipeline WITH LOGIN;$", sql, re.MULTILINE)
    assert re.search(r"^AWS IAM GRANT reconcile_pipeline TO 'arn:aws:iam::\d{12}:role/[^']+';$", sql,
                     re.MULTILINE)
    assert not re.search(r"^\s*(BEGIN|COMMIT|START TRANSACTION)\b", sql, re.MULTILINE | re.IGNORECASE)


def test_dsql_lint_enforces_one_ddl_per_transaction(tmp_path):
    """Negative control: the same statements in one transaction are refused by dsql-lint."""
    statements = "\n".join(line for line in TARGET_ROLES_SQL.read_text().splitlines()
                           if line and not line.startswith("--"))
    wrapped = tmp_path / "wrapped.sql"
    wrapped.write_text(f"BEGIN;\n{statements}\nCOMMIT;\n")
    messages = [d["message"] for d in _dsql_lint(wrapped)["files"][0]["diagnostics"]]
    assert any("DDL" in m and "transaction" in m for m in messages), messages


def _psql(conninfo: str, sql: str, *, single_transaction: bool = False) -> subprocess.CompletedProcess:
    """Run a script the way the docs say (psql, autocommit: each statement its own transaction)."""
    return subprocess.run([str(stack.bin_path("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                           *(["--single-transaction"] if single_transaction else []),
                           "-d", conninfo, "-f", "-"], input=sql, check=False, capture_output=True,
                          text=True, timeout=60)


def _drop_role(conninfo: str, role: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def test_target_roles_run_on_the_dsql_stand_in(target_db):
    role = f"reconcile_pipeline_{uuid.uuid4().hex[:8]}"  # roles are server-wide: keep runs apart
    sql, iam_grants = re.subn(r"^AWS IAM GRANT .*$", "-- (AWS IAM GRANT: DSQL only, see dsql-lint)",
                              TARGET_ROLES_SQL.read_text(), flags=re.MULTILINE)
    assert iam_grants == 1
    sql = re.sub(r"\breconcile_pipeline\b", role, sql)
    with psycopg.connect(target_db, autocommit=True) as conn:  # tables admin created earlier
        conn.execute("CREATE SCHEMA reconcile")
        conn.execute("CREATE TABLE reconcile.runs (run_id uuid PRIMARY KEY)")
    try:
        # The stand-in refuses the file as one transaction, as DSQL does (one DDL per transaction)...
        refused = _psql(target_db, sql, single_transaction=True)
        assert refused.returncode != 0 and "multiple ddl statements" in refused.stderr, refused.stderr
        # ...and runs it statement by statement.
        run = _psql(target_db, sql)
        assert run.returncode == 0, run.stderr
        with psycopg.connect(target_db, autocommit=True) as conn:
            def can(query: str, *args) -> bool:
                return conn.execute(query, (role, *args)).fetchone()[0]

            flags = conn.execute("SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication "
                                 "FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            assert flags == (True, False, False, False, False)
            for schema in ("reconcile", "ledger"):
                assert can("SELECT has_schema_privilege(%s, %s, 'USAGE, CREATE')", schema)
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                assert can("SELECT has_table_privilege(%s, 'reconcile.runs', %s)", privilege)
            for privilege in ("TRUNCATE", "REFERENCES", "TRIGGER"):
                assert not can("SELECT has_table_privilege(%s, 'reconcile.runs', %s)", privilege)
            assert not can("SELECT has_database_privilege(%s, current_database(), 'CREATE')")
    finally:
        _drop_role(target_db, role)


def test_source_grants_run_on_the_source(source_db):
    from reconcile.workload.schema import create_schema

    role = f"reconcile_replay_{uuid.uuid4().hex[:8]}"
    dbname = psycopg.conninfo.conninfo_to_dict(source_db)["dbname"]
    sql = re.sub(r"\breconcile_replay\b", role, SOURCE_GRANTS_SQL.read_text())
    sql, renamed = re.subn(r"\bON DATABASE ledger\b", f'ON DATABASE "{dbname}"', sql)
    assert renamed == 1
    created_rds_replication = False
    with psycopg.connect(source_db, autocommit=True) as conn:
        create_schema(conn)
        # Stand-in for RDS's predefined role (plain PostgreSQL has none).
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication'").fetchone():
            conn.execute("CREATE ROLE rds_replication NOLOGIN")
            created_rds_replication = True
    try:
        run = _psql(source_db, sql)
        assert run.returncode == 0, run.stderr
        with psycopg.connect(source_db, autocommit=True) as conn:
            def can(query: str, *args) -> bool:
                return conn.execute(query, (role, *args)).fetchone()[0]

            assert can("SELECT pg_has_role(%s, 'rds_replication', 'MEMBER')")
            assert can("SELECT has_database_privilege(%s, current_database(), 'CONNECT, CREATE')")
            for table in DEMO_TABLES:
                assert can("SELECT has_table_privilege(%s, %s, 'SELECT')", table.name)
                for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
                    assert not can("SELECT has_table_privilege(%s, %s, %s)", table.name, privilege)
            published = {f"{s}.{t}" for s, t in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'reconcile_pub'")}
            assert published == {t.name for t in DEMO_TABLES}
    finally:
        _drop_role(source_db, role)
        if created_rds_replication:
            _drop_role(source_db, "rds_replication")


# --------------------------------------------------------------------------------------------
# Monitoring: alarms and dashboard on the metrics reconcile.metrics publishes


def _dashboard_json(template: dict) -> dict:
    """The dashboard body with its ${...} substituted by sample values (it must then be JSON)."""
    body, names = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    values = {"AWS::Region": "us-east-1", "MetricsNamespace": "Reconcile", "ReplayLagThresholdSeconds": "120",
              "ReverseLagThresholdSeconds": "120", "Migration": "abc.dsql.us-east-1.on.aws/reconcile"}
    assert set(names) == {"Migration"} and names["Migration"] == {"Ref": "MigrationName"}

    def value(match: re.Match) -> str:
        name = match[1]
        if name.endswith(".Arn"):
            return f"arn:aws:cloudwatch:us-east-1:111122223333:alarm:{name[:-4]}"
        assert name in values, f"unknown substitution ${{{name}}}"
        return values[name]

    return json.loads(re.sub(r"\$\{([^}]+)\}", value, body))


def test_monitoring_alarms_watch_published_metrics():
    from reconcile.metrics import METRIC_UNITS

    t = _template(CFN / "monitoring.yaml")
    alarms = {name: r["Properties"] for name, r in t["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    watched = {p["MetricName"]: p for p in alarms.values()}
    assert set(watched) == {"ReplayLagSeconds", "DeadLettersOpen", "ReconciliationRed", "ReverseReplayLagSeconds",
                            "ReverseDeadLettersOpen"}
    for metric, p in watched.items():
        assert metric in METRIC_UNITS
        assert p["Namespace"] == {"Ref": "MetricsNamespace"}
        assert p["Dimensions"] == [{"Name": "Migration", "Value": {"Ref": "MigrationName"}}], metric
        assert p["AlarmActions"] == {"Fn::If": ["HasTopic", [{"Ref": "AlarmTopicArn"}], NO_VALUE]}
    assert watched["DeadLettersOpen"]["Threshold"] == 1 and watched["ReconciliationRed"]["Threshold"] == 1
    assert watched["ReplayLagSeconds"]["TreatMissingData"] == "breaching"  # a silent replay is a lagging one
    # the reverse replay publishes only after write cutover: its silence before that pages nobody
    assert watched["ReverseReplayLagSeconds"]["TreatMissingData"] == "missing"
    assert watched["ReverseReplayLagSeconds"]["Threshold"] == {"Ref": "ReverseLagThresholdSeconds"}
    assert watched["ReverseDeadLettersOpen"]["Threshold"] == 1
    # the namespace parameter accepts exactly what the IAM policy's condition does
    iam = _template(CFN / "pipeline-iam.yaml")["Parameters"]["MetricsNamespace"]
    assert t["Parameters"]["MetricsNamespace"]["AllowedPattern"] == iam["AllowedPattern"]
    assert t["Parameters"]["MetricsNamespace"]["Default"] == iam["Default"] == "Reconcile"


def test_monitoring_dashboard_shows_every_published_metric():
    from reconcile.metrics import METRIC_UNITS

    board = _dashboard_json(_template(CFN / "monitoring.yaml"))
    shown: set[str] = set()
    for widget in board["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if isinstance(line[0], dict):  # a SEARCH expression
                shown.update(re.findall(r'MetricName="(\w+)"', line[0]["expression"]))
            else:
                assert line[0] == "Reconcile" and line[2:4] == ["Migration", "abc.dsql.us-east-1.on.aws/reconcile"]
                shown.add(line[1])
    assert shown - set(METRIC_UNITS) == set(), "the dashboard shows a metric nobody publishes"
    assert set(METRIC_UNITS) - shown <= {"ExpectationsEvaluated"}, "a published metric is missing from the dashboard"
    alarms = next(w for w in board["widgets"] if w["type"] == "alarm")["properties"]["alarms"]
    assert len(alarms) == 5


# --------------------------------------------------------------------------------------------
# Local Airflow and the README


def test_compose_parses_and_mounts_dags():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"airflow-metadata", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor"} <= set(services)
    assert services["airflow-metadata"]["image"].startswith("postgres:")
    airflow = {name: s for name, s in services.items() if name != "airflow-metadata"}
    for name, service in airflow.items():
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).is_file(), name
        mounts = {}
        for volume in service["volumes"]:
            host, container = volume.split(":")[:2]
            mounts[container] = host
        assert "/opt/airflow/dags" in mounts, f"{name} does not mount dags/"
        assert (COMPOSE.parent / mounts["/opt/airflow/dags"]).resolve() == ROOT / "dags", name
        env = service["environment"]
        assert "@airflow-metadata/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
    dockerfile = (ROOT / services["airflow-scheduler"]["build"]["dockerfile"]).read_text()
    version = re.search(r"^ARG AIRFLOW_VERSION=(\d+)\.(\d+)\.\d+$", dockerfile, re.MULTILINE)
    assert version and (int(version[1]), int(version[2])) >= (3, 1) and int(version[1]) == 3
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}", dockerfile, re.MULTILINE)
    assert re.search(r"pip install .*/opt/reconcile", dockerfile)


def test_readme_target_snippet_is_valid_config(tmp_path):
    readme = (INFRA / "README.md").read_text()
    (snippet,) = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    config_file = tmp_path / "reconcile.toml"
    config_file.write_text(snippet)
    target = load_config(config_file, environ={}).target
    assert (target.kind, target.user, target.region) == ("dsql", "reconcile_pipeline", "us-east-1")
    assert target.endpoint.endswith(".dsql.us-east-1.on.aws")
