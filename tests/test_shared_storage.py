"""Nothing depends on a worker's disk: relative report folders resolve against the config file, and
the expectations' Data Docs go to S3 next to the diff report (another worker closes the run)."""

from __future__ import annotations

import dataclasses
import os

import boto3
import pytest
from moto import mock_aws

from reconcile.config import load_config
from reconcile.diff.settings import DiffSettings
from reconcile.report import upload_folder

RUN = "7e0c3b5a-1d2f-4a6b-9c8d-0123456789ab"  # a diff run id (a uuid: the check run records it as part_of)


def test_relative_report_dir_is_next_to_the_config_file_wherever_the_task_runs(tmp_path, monkeypatch):
    conf = tmp_path / "etc" / "reconcile.toml"
    conf.parent.mkdir()
    conf.write_text('[diff]\nreport_dir = "out/reports"\n')
    elsewhere = tmp_path / "worker-2"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a worker's working directory
    assert load_config(conf, environ={}).diff.report_dir == str(conf.parent / "out" / "reports")
    # the default too, and an environment override; an absolute folder and an S3 URI stay as they are
    (conf.parent / "empty.toml").write_text("")
    assert load_config(conf.parent / "empty.toml", environ={}).diff.report_dir == str(conf.parent / "reports" / "diff")
    env = load_config(conf, environ={"RECONCILE__DIFF__REPORT_DIR": "r2"})
    assert env.diff.report_dir == str(conf.parent / "r2")
    conf.write_text(f'[diff]\nreport_dir = "{tmp_path / "abs"}"\ns3_uri = "s3://b/p"\n')
    cfg = load_config(conf, environ={})
    assert (cfg.diff.report_dir, cfg.diff.s3_uri) == (str(tmp_path / "abs"), "s3://b/p")
    # without a file: the working directory, made absolute (GX refuses a relative Data Docs folder)
    assert load_config(None, environ={}).diff.report_dir == str(elsewhere / "reports" / "diff")


@mock_aws
def test_recursive_upload_keeps_relative_paths(tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="shared")
    (tmp_path / "docs" / "data_docs" / "expectations").mkdir(parents=True)
    (tmp_path / "docs" / "data_docs" / "index.html").write_text("<html></html>")
    (tmp_path / "docs" / "data_docs" / "expectations" / "a@source.html").write_text("<html>a</html>")
    uri = upload_folder(tmp_path / "docs", "s3://shared/diff/r1/checks", client=s3, recursive=True)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="shared")["Contents"])
    assert uri == "s3://shared/diff/r1/checks"
    assert keys == ["diff/r1/checks/data_docs/expectations/a@source.html", "diff/r1/checks/data_docs/index.html"]
    assert s3.head_object(Bucket="shared", Key=keys[1])["ContentType"].startswith("text/html")
    # not recursive (the report folder): only its own files, as before
    assert upload_folder(tmp_path / "docs" / "data_docs", "s3://shared/flat", client=s3) == "s3://shared/flat"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="shared", Prefix="flat/")["Contents"]] == ["flat/index.html"]


@mock_aws
def test_checks_step_uploads_data_docs_and_survives_a_relative_folder(source_db, target_db, tmp_path, monkeypatch):
    from reconcile.pipeline.diff import checks_step
    from tests.test_dags import _ledger_pair

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="shared")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _ledger_pair(source_db, target_db, transactions=30)
    conf = tmp_path / "reconcile.toml"
    conf.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n[checks]\nsuites = ["ledger"]\n')
    cfg = load_config(conf, environ={})
    # A config built in code keeps a relative folder: GX gets it absolute, relative to the working directory.
    cfg = dataclasses.replace(cfg, stages={**cfg.stages, "diff": DiffSettings(report_dir="rel", s3_uri="s3://shared/diff")})
    monkeypatch.chdir(tmp_path)
    result = checks_step(cfg, sides=("source",), diff_run_id=RUN)
    assert result["data_docs_uri"] == f"s3://shared/diff/{RUN}/checks/data_docs/index.html"
    assert (tmp_path / "rel" / RUN / "checks" / "data_docs" / "index.html").is_file()
    s3 = boto3.client("s3", region_name="us-east-1")
    body = s3.get_object(Bucket="shared", Key=f"diff/{RUN}/checks/data_docs/index.html")["Body"].read().decode()
    assert "<html" in body.lower()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="shared", Prefix=f"diff/{RUN}/checks/")["Contents"]]
    assert len(keys) > 1 and all(k.startswith(f"diff/{RUN}/checks/data_docs/") for k in keys)
    assert not os.path.isabs(cfg.diff.report_dir)


def test_recursive_upload_to_a_missing_bucket_is_one_sentence(tmp_path):
    from reconcile.diff.errors import ReportError

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.html").write_text("x")
    with mock_aws():
        with pytest.raises(ReportError, match="s3://nope/p"):
            upload_folder(tmp_path / "d", "s3://nope/p", client=boto3.client("s3", region_name="us-east-1"),
                          recursive=True)
