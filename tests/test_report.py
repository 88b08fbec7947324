"""Report files of a diff run: contents, a headless Chromium screenshot of the HTML, S3 upload (moto)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import tempfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from reconcile.diff.errors import ReportError
from reconcile.report import upload_folder, write_all
from reconcile.report.html import GREEN, RED

CHROMIUM = Path("/usr/bin/chromium")


def context(verdict: str = "red") -> dict:
    red = verdict == "red"
    findings = [
        {"table": "ledger.entries", "kind": "changed", "key": [20], "columns": ["amount"],
         "source": {"entry_id": 20, "amount": "5.00"}, "target": {"entry_id": 20, "amount": "5.01"},
         "money_delta": "0.01", "currency": "USD"},
        {"table": "ledger.entries", "kind": "missing_in_target", "key": [10], "columns": [],
         "source": {"entry_id": 10, "amount": "-250.00", "memo": "<script>alert(1)</script>"}, "target": None,
         "money_delta": "250.00", "currency": "EUR"},
        {"table": "balances", "kind": "balance_mismatch", "key": [7], "columns": ["balance"],
         "source": {"balance": "10.00"}, "target": {"balance": "110.00"}, "money_delta": "100.00", "currency": "USD"},
    ] if red else []
    tables = {"ledger.entries": {"status": verdict, "missing": int(red), "extra": 0, "changed": int(red),
                                 "in_flight": 3, "rows_source": 1000, "rows_target": 999 if red else 1000},
              "ledger.accounts": {"status": "green", "missing": 0, "extra": 0, "changed": 0, "in_flight": 0,
                                  "rows_source": 40, "rows_target": 40}}
    summary = {"verdict": verdict, "persistent_mismatches": 2 if red else 0, "balance_differences": int(red),
               "in_flight": 3, "start_lsn": "0/16B3748", "tables": tables, "report_dir": "/tmp/x/run",
               "duration_seconds": 1.25, "run_id": "run-1", "status": verdict, "errors": {}}
    balances = {"status": verdict, "changed": int(red), "in_flight": 0,
                "details": {"by_kind": {"balance_mismatch": int(red)}, "accounts_source": 40, "accounts_target": 40,
                            "days": 12, "currencies": [{"currency": "USD", "balances_source": "0.00",
                                                        "balances_target": "100.00" if red else "0.00",
                                                        "entries_source": 500, "entries_target": 499,
                                                        "trial_source": "0", "trial_target": "0"}]}}
    return {"summary": summary, "findings": findings, "balances": balances,
            "results": [{"table": "ledger.entries", "queries": 12, "duration_ms": 800,
                         "details": {"lag_aware": True, "watermark_passed": True}}],
            "run": {"run_id": "run-1", "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00",
                    "settings": {"slot_name": "reconcile", "lag_wait_seconds": 60, "diff": {"segment_rows": 200000}}}}


def test_report_files(tmp_path):
    paths = write_all(tmp_path / "run-1", context("red"))
    assert [p.name for p in paths] == ["summary.json", "report.html", "summary.md", "findings.csv"]
    doc = json.loads(paths[0].read_text())
    assert doc["verdict"] == "red" and doc["tables"]["ledger.entries"]["missing"] == 1
    assert len(doc["details"]["findings"]) == 3
    html = paths[1].read_text()
    assert "RED: differences found" in html and RED in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html       # escaped
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)                      # nothing fetched
    assert "<svg" in html and "Largest money discrepancies" in html
    # Largest money discrepancy first.
    money = html[html.index("Largest money discrepancies"):html.index("Row findings")]
    assert money.index("250.00") < money.index("100.00") < money.index("0.01")
    md = paths[2].read_text()
    assert md.startswith("# Diff RED") and len(md.splitlines()) < 30
    rows = list(csv.DictReader(paths[3].open()))
    assert [r["kind"] for r in rows] == ["changed", "missing_in_target", "balance_mismatch"]
    assert rows[0]["money_delta"] == "0.01" and json.loads(rows[1]["key"]) == [10]


def _screenshot(html: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={out}", "--window-size=1280,2000",
                        html.resolve().as_uri()], check=True, capture_output=True, timeout=90)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium, Debian package 'chromium') "
                                                  "is not installed; CI installs it")
@pytest.mark.parametrize("verdict", ["red", "green"])
def test_html_renders_in_headless_chromium(tmp_path, verdict):
    from PIL import Image

    (paths) = write_all(tmp_path / verdict, context(verdict))
    shot = tmp_path / f"{verdict}.png"
    _screenshot(paths[1], shot)
    img = Image.open(shot).convert("RGB")
    assert img.size[0] >= 1200
    # The verdict banner spans the top of the page in the verdict's colour.
    want = _rgb(RED if verdict == "red" else GREEN)
    banner = [img.getpixel((x, 8)) for x in range(50, 1200, 50)]
    assert all(max(abs(a - b) for a, b in zip(px, want)) <= 6 for px in banner), banner[:3]
    # White headline text inside the banner (the verdict is readable, not just a coloured bar).
    band = img.crop((0, 0, 1280, 70)).getcolors(1 << 16)
    assert any(min(c) > 230 for _, c in band)
    # The rest of the page is not blank: many distinct colours, dark text on white.
    body = img.crop((0, 120, 1280, 900))
    colours = body.getcolors(1 << 20)
    assert colours is not None and len(colours) > 50
    assert any(max(c) < 80 for _, c in colours)


@mock_aws
def test_s3_upload(tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="reports")
    folder = tmp_path / "run-1"
    write_all(folder, context("red"))
    uri = upload_folder(folder, "s3://reports/diff/run-1", client=s3)
    assert uri == "s3://reports/diff/run-1"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="reports", Prefix="diff/")["Contents"])
    assert keys == ["diff/run-1/findings.csv", "diff/run-1/report.html", "diff/run-1/summary.json", "diff/run-1/summary.md"]
    head = s3.head_object(Bucket="reports", Key="diff/run-1/report.html")
    assert head["ContentType"].startswith("text/html")
    with pytest.raises(ReportError, match="s3://missing-bucket"):
        upload_folder(folder, "s3://missing-bucket/x", client=s3)
    with pytest.raises(ReportError):
        upload_folder(folder, "https://example.com/x", client=s3)
