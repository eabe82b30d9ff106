"""Gatekeeping for tests that need real parts (root, /dev/kvm, libvirtd, the arm64 lab).

Locally such a test skips with a loud reason; under CI (CI=true) a missing part fails
the test instead, because CI's .ci/run installs and starts everything they need.
"""
from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def need(condition: bool, what: str) -> None:
    if condition:
        return
    message = f"REAL PART MISSING: {what}"
    if in_ci():
        pytest.fail(message + " (CI must provide it: see .ci/run)", pytrace=False)
    pytest.skip(message)


def need_kvm() -> None:
    need(os.path.exists("/dev/kvm"), "/dev/kvm (a host with KVM)")
    need(os.access("/dev/kvm", os.R_OK | os.W_OK), "read/write access to /dev/kvm (run as root)")


def need_commands(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    need(not missing, "commands " + ", ".join(missing))
