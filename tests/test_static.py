"""The code checks CI runs: mypy --strict on plugin/ and ruff's rule set (both configured in
pyproject.toml). Part of the pure tier: they need no real parts, only the test extras."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from helpers.realparts import need

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("tool, args", [
    ("mypy", ["-m", "mypy", "--config-file", "pyproject.toml"]),
    ("ruff", ["-m", "ruff", "check", "plugin", "tests"]),
])
def test_static_checks_pass(tool, args):
    need(importlib.util.find_spec(tool) is not None, f"{tool} (pip install -e .[test])")
    cp = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, cp.stdout[-6000:] + cp.stderr[-2000:]
