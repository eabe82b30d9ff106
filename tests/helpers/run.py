"""Run the real ``abiguard`` command line from the checkout, bounded in time."""
from __future__ import annotations

import os
import subprocess
import sys

PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "plugin")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = PLUGIN + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def abiguard(*args: str, stdin: str | None = None, timeout: float = 60,
             env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "abiguard", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=dict(env(), **(env_extra or {})))
