"""Report files of a diff run: contents, a headless Chromium screenshot of the HTML, S3 upload (moto)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from reconcile.diff.errors import ReportError
from reconcile.report import upload_files, upload_folder, write_all
from reconcile.report.html import GREEN, RED
from tests.chromium import CHROMIUM, FOLD, WIDTH, above_the_fold, boxes, screenshot


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
                         "details": {"lag_aware": True, "watermark_passed": True, "key": ["entry_id"]}}],
            "run": {"run_id": "run-1", "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00",
                    "settings": {"slot_name": "reconcile", "lag_wait_seconds": 60, "diff": {"segment_rows": 200000}}}}


def test_report_files(tmp_path):
    paths = write_all(tmp_path / "run-1", context("red"))
    assert [p.name for p in paths] == ["summary.json", "report.html", "summary.md", "findings.csv"]
    doc = json.loads(paths[0].read_text())
    assert doc["verdict"] == "red" and doc["tables"]["ledger.entries"]["missing"] == 1
    assert len(doc["details"]["findings"]) == 3
    assert doc["details"]["attribution"]["faults"] == 2 and doc["details"]["attribution"]["unexplained"] == 1
    html = paths[1].read_text()
    assert "RED: 2 faults, 1 unexplained difference" in html and RED in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html   # escaped
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)                      # nothing fetched
    assert "<script" not in html and "<link" not in html
    # Readable cells: amounts with their currency, keys as col=value, exact digits kept.
    assert "+250.00 EUR" in html and "+0.01 USD" in html and "entry_id=10" in html
    assert '["target", 2551]' not in html and "{&#34;computed" not in html
    lists = html[html.index('id="unexplained"'):html.index('id="gate"')]
    assert lists.index("+100.00 USD") < lists.index('id="faults"')                    # the unexplained first
    faults = lists[lists.index('id="faults"'):]
    assert faults.index("+250.00 EUR") < faults.index("+0.01 USD")                    # largest money impact first
    md = paths[2].read_text()
    assert md.startswith("# Diff RED") and len(md.splitlines()) < 30
    rows = list(csv.DictReader(paths[3].open()))
    assert [r["kind"] for r in rows] == ["changed", "missing_in_target", "balance_mismatch"]
    assert rows[0]["money_delta"] == "0.01" and json.loads(rows[1]["key"]) == [10]


def test_a_long_value_is_shown_around_its_first_difference(tmp_path):
    ctx = context("red")
    big_s = {"doc": "x" * 131_000 + "A" + "y" * 50}
    big_t = {"doc": "x" * 131_000 + "B" + "y" * 50}
    ctx["findings"].append({"table": "app.docs", "kind": "changed", "key": [5], "columns": ["body"],
                            "source": {"id": 5, "body": big_s}, "target": {"id": 5, "body": big_t},
                            "money_delta": None, "currency": None})
    ctx["results"].append({"table": "app.docs", "details": {"key": ["id"]}})
    html = write_all(tmp_path / "run-1", ctx)[1].read_text()
    assert len(html) < 60_000                                   # 2 x 128 KiB are not printed whole
    assert "first difference at character 131,010" in html and "id=5" in html
    assert '<span class="hl">A</span>' in html and '<span class="hl">B</span>' in html


def test_ten_thousand_findings_stay_usable(tmp_path, capsys):
    """A run with 10,000 findings: the run page folds its lists and pages the detail; sizes are measured."""
    from reconcile.report.html import DETAIL_INLINE, LISTED, PAGE_ROWS
    from tests.test_report_attribution import DEMO, entry

    findings = []
    for i in range(5_000):
        s, t = entry(i, 10_000 + i, i % 97, "EUR", f"{i}.25"), entry(i, 10_000 + i, i % 97, "EUR", f"{i}.26")
        findings.append({"table": "ledger.entries", "kind": "changed", "key": [i], "columns": ["amount"], "source": s,
                         "target": t, "money_delta": "0.01", "currency": "EUR"})
        findings.append({"table": "balances", "kind": "unbalanced_txn", "key": ["target", 10_000 + i, "EUR"],
                         "columns": ["sum_of_entries"], "source": None, "target": {"sum_of_entries": "0.01"},
                         "money_delta": "0.01", "currency": "EUR"})
    ctx = context("red")
    ctx["summary"].update(persistent_mismatches=5_000, balance_differences=5_000)
    ctx["summary"]["tables"]["ledger.entries"].update(changed=5_000, missing=0)
    ctx.update(findings=findings, roles=DEMO)
    paths = write_all(tmp_path / "big", ctx)
    html = paths[1].read_text()
    pages = [p for p in paths if p.name.startswith("findings-")]
    assert len(pages) == 10_000 // PAGE_ROWS
    assert "RED: 5,000 faults, 0 unexplained differences" in html
    assert html.count('class="item"') <= LISTED + 2 and html.count("<tr>") < DETAIL_INLINE + 100
    sizes = {p.name: p.stat().st_size for p in paths}
    assert sizes["report.html"] < 1_500_000 and max(sizes[p.name] for p in pages) < 1_000_000
    page1 = pages[0].read_text()
    assert page1.count("<tr>") == PAGE_ROWS + 1 and "entry_id=0" in page1
    with capsys.disabled():
        print(f"\n10,000 findings: report.html {sizes['report.html']:,} B, {len(pages)} findings pages of "
              f"{min(sizes[p.name] for p in pages):,}-{max(sizes[p.name] for p in pages):,} B, summary.json "
              f"{sizes['summary.json']:,} B, findings.csv {sizes['findings.csv']:,} B")


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def assert_screen(shot: Path, verdict: str) -> None:
    """The screenshot is not blank, and the verdict banner spans the top in the verdict's colour."""
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (WIDTH, FOLD)
    want = _rgb(RED if verdict == "red" else GREEN)
    banner = [img.getpixel((x, 6)) for x in range(10, 1390, 40)]
    assert all(max(abs(a - b) for a, b in zip(px, want)) <= 6 for px in banner), banner[:3]
    band = img.crop((0, 0, WIDTH, 80)).getcolors(1 << 16)
    assert any(min(c) > 230 for _, c in band)                  # white headline text on the banner
    body = img.crop((0, 100, WIDTH, FOLD)).getcolors(1 << 20)
    assert body is not None and len(body) > 50 and any(max(c) < 80 for _, c in body)


def assert_lists_above_the_fold(page: Path, shot: Path) -> dict:
    """The verdict, the unexplained differences and the faults are laid out in the first 1400x900, and the
    screenshot shows something (not white) where the DOM says they are."""
    from PIL import Image

    found = boxes(page)
    assert above_the_fold(found["verdict"], whole=True), found["verdict"]
    assert above_the_fold(found["unexplained"]), found["unexplained"]
    assert above_the_fold(found["faults"]), found["faults"]
    assert found["unexplained"]["text"].startswith("Unexplained differences")
    assert found["faults"]["text"].startswith("Faults")
    img = Image.open(shot).convert("RGB")
    for name in ("unexplained", "faults"):
        b = found[name]
        head = img.crop((int(b["left"]) + 4, int(b["top"]) + 4, int(b["right"]) - 4, int(min(b["top"] + 36, FOLD))))
        assert any(sum(c) < 400 for _, c in head.getcolors(1 << 16)), f"{name}: no text in its heading"
    return found


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium, Debian package 'chromium') "
                                                  "is not installed; CI installs it")
@pytest.mark.parametrize("verdict", ["red", "green"])
def test_html_renders_in_headless_chromium(tmp_path, verdict):
    paths = write_all(tmp_path / verdict, context(verdict))
    shot = screenshot(paths[1], tmp_path / f"{verdict}.png")
    assert_screen(shot, verdict)
    found = assert_lists_above_the_fold(paths[1], shot)
    if verdict == "red":
        assert "2 faults, 1 unexplained difference" in found["verdict"]["text"]
        assert "+100.00 USD" in found["unexplained"]["text"] and "entry_id=10" in found["faults"]["text"]
    else:
        assert "GREEN" in found["verdict"]["text"] and "No row differs" in found["faults"]["text"]


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
    index = tmp_path / "index.html"
    index.write_text("<!DOCTYPE html>")
    assert upload_files([index], "s3://reports/diff/") == "s3://reports/diff"
    assert s3.head_object(Bucket="reports", Key="diff/index.html")["ContentType"].startswith("text/html")
    with pytest.raises(ReportError, match="s3://missing-bucket"):
        upload_folder(folder, "s3://missing-bucket/x", client=s3)
    with pytest.raises(ReportError):
        upload_folder(folder, "https://example.com/x", client=s3)
