"""Importing Great Expectations leaves a task log readable: none of its ~200 import-time INFO lines."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
from reconcile.checks.gxrun import import_gx
gx = import_gx()
print("imported", gx.__name__)
"""


def test_importing_gx_logs_nothing_at_info():
    # A fresh interpreter: GX must not be imported yet, its decorators log while the modules load.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.splitlines()
    assert lines[-1] == "imported great_expectations"
    assert not [line for line in lines if "Skipping registering function" in line]
    assert not [line for line in lines if line.startswith("great_expectations")], lines[:5]
