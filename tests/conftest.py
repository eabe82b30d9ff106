"""Shared pytest configuration for abiguard's tests."""
from __future__ import annotations

import os
import sys

# tests/ on sys.path: the lab drivers (tests/lab) and helpers import as packages
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "plugin")
if PLUGIN not in sys.path:
    sys.path.insert(0, PLUGIN)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "lab: needs real parts (root, /dev/kvm, libvirtd/virsh/qemu, the arm64 kernel lab); "
        "skips loudly when unavailable, fails instead when CI=true",
    )
