#!/usr/bin/env python3
"""Probe wall time: x86 here (KVM part alone and with QEMU/libvirt), arm64 per lab kernel
as a share of that kernel's boot.

    .venv/bin/python tests/bench/bench_probe.py [--lab-dir DIR]

arm64 numbers come from an arm64 lab run (tests/lab/armlab_matrix.py; ``--lab-dir`` reuses
one, otherwise a probe-only run is made here, about a minute): ``probe_seconds`` is the
probe's own time inside the kernel; the boot time is the host seconds from QEMU start
until the kernel ran /init.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

from benchutil import HERE, median_ms  # noqa: E402  (puts the checkout on sys.path)

from abiguard.probe import host as probe  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab-dir")
    args = ap.parse_args()
    if os.path.exists("/dev/kvm") and os.uname().machine == "x86_64":
        print(f"x86 probe, KVM part:            {median_ms(probe.probe_kvm, 20):8.1f} ms (median of 20)")
        print(f"x86 probe, with QEMU + libvirt: {median_ms(lambda: probe.probe_host(True), 5):8.1f} ms (median of 5)")
    else:
        print("x86 probe: no /dev/kvm here (REAL PART MISSING)")
    lab = args.lab_dir
    tmp = None
    if not lab:
        tmp = tempfile.TemporaryDirectory(prefix="abiguard-armlab-")
        lab = tmp.name
        subprocess.run([sys.executable, os.path.join(HERE, "..", "lab", "armlab_matrix.py"), lab, "--skip-replay"],
                       check=True, timeout=1800)
    print(f"{'arm64 host':40} {'probe s':>8} {'boot s':>8} {'probe/boot':>10}")
    for path in sorted(glob.glob(os.path.join(lab, "lab", "*-probe.json"))):
        name = os.path.basename(path)[:-len("-probe.json")]
        with open(path) as f:
            labinfo = json.load(f)
        with open(os.path.join(lab, "profiles", name + ".json")) as f:
            seconds = json.load(f)["meta"]["probe_seconds"]
        boot = labinfo["host_timeline_seconds"]["init_started"]
        print(f"{name:40} {seconds:8.2f} {boot:8.1f} {seconds / boot:10.3f}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
