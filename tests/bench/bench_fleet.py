#!/usr/bin/env python3
"""The fleet's growth curve: ``fleet baseline`` and ``fleet status`` over 10, 100, 1,000
and 10,000 hosts, against the same run's cost of reading one profile.

    .venv/bin/python tests/bench/bench_fleet.py [--sizes 10,100,1000,10000] [--runs 3]

Fleets are made of the bundled real profiles (8 arm64 kernels and CPUs, 3 x86 hosts),
rebuilt into up to 50 distinct ones (tests/helpers/fleetgen.py), with many hosts pointing
at each; 10 VMs per host up to 10,000 VMs, each an aarch64 domain XML pinned (contract and
boot stamp, as ``abiguard pin`` writes them) to one of 10 real contracts.

- baseline: the real command line, a fresh interpreter each run:
  ``abiguard fleet baseline --arch aarch64 --no-libvirt -o /dev/null``, wall time.
- status: a fresh interpreter each run doing what ``abiguard fleet status`` does once the
  hosts' libvirt has answered: read the directory, read every VM's domain XML as the hook
  does, judge, and write the JSON and the text (libvirt itself is not timed: its answer
  time is the network's).
- one profile: ``profile.load`` of the largest bundled profile, in this run.

Goals (issue 14): baseline over 10,000 hosts with <= 50 profiles <= 1 s; status for
10,000 VMs x 1,000 hosts <= 10 s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchutil import HERE, PLUGIN, median_ms  # noqa: E402  (puts the checkout on sys.path)

TESTS = os.path.dirname(HERE)
sys.path.insert(0, TESTS)

from abiguard.model import profile  # noqa: E402
from helpers.fleetgen import ARM64, distinct, make_fleet  # noqa: E402

DISTINCT = 50
CONTRACTS = 10
VMS_PER_HOST = 10
MAX_VMS = 10_000


def domain_xmls(count: int) -> list[bytes]:
    """``count`` pinned aarch64 domain XMLs over CONTRACTS real contracts."""
    from abiguard.model import contract
    from abiguard.xml.contract import to_xml_text
    from abiguard.xml.edit import boot_stamp
    from lab.twohost import TwoHost

    docs = distinct(CONTRACTS, ARM64)
    lab = TwoHost()
    templates = []
    for i, doc in enumerate(docs):
        sealed = contract.from_profile(profile.Profile.from_json(doc, f"doc {i}"))
        meta = "<metadata>" + to_xml_text(sealed) + boot_stamp(sealed).decode() + "</metadata>"
        templates.append(lab.render_guest("aarch64", "VMNAME", metadata=meta, kernel="/boot/guest"))
    return [templates[i % len(templates)].replace("VMNAME", f"vm{i:05d}", 1).encode() for i in range(count)]


def status_child(root: str, vms: int) -> None:
    """One ``fleet status`` after libvirt answered (a fresh interpreter: imports count)."""
    t0 = time.perf_counter()
    xmls = domain_xmls(vms)
    t1 = time.perf_counter()
    from abiguard.fleet import status
    from abiguard.fleet.judge import Judge
    from abiguard.fleet.store import Store
    from abiguard.fleet.vms import from_xml

    store = Store(root)
    records = store.records()
    profiles = store.profiles_of(records)
    hosts = [r.name for r in records]
    fleet_vms = [from_xml(hosts[i % len(hosts)], f"vm{i:05d}", "running", x) for i, x in enumerate(xmls)]
    judge = Judge()
    doc = status.compute(records, profiles, fleet_vms, {}, judge)
    text = json.dumps(doc, sort_keys=True, indent=1)
    lines = status.lines(doc)
    t2 = time.perf_counter()
    assert all(vm.contract is not None and vm.problem is None for vm in fleet_vms), "a VM did not read"
    print(json.dumps({"seconds": t2 - t1, "setup": t1 - t0, "checks": judge.checks, "json_bytes": len(text),
                      "lines": len(lines), "imports_and_all": t2 - t0}))


def run_cli(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=PLUGIN)
    t0 = time.perf_counter()
    cp = subprocess.run([sys.executable, "-m", "abiguard", *args], capture_output=True, text=True, env=env,
                        timeout=600)
    dt = time.perf_counter() - t0
    if cp.returncode != 0:
        raise SystemExit(f"abiguard {' '.join(args)} failed: {cp.stderr[-2000:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,1000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--status-child", nargs=2, metavar=("DIR", "VMS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.status_child:
        status_child(args.status_child[0], int(args.status_child[1]))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    largest = max(ARM64, key=os.path.getsize)
    one = median_ms(lambda: profile.load(largest), 20)
    start = statistics.median(run_cli(["fleet", "--help"]) for _ in range(args.runs)) * 1000
    docs = distinct(DISTINCT)
    tmp = tempfile.mkdtemp(prefix="abiguard-bench-fleet.", dir="/var/tmp")
    rows = []
    try:
        for n in sizes:
            root = os.path.join(tmp, str(n))
            os.makedirs(root)
            kinds = docs[:min(n, DISTINCT)]
            make_fleet(root, n, kinds)
            vms = min(n * VMS_PER_HOST, MAX_VMS)
            base = statistics.median(
                run_cli(["fleet", "baseline", "--fleet", root, "--arch", "aarch64", "--no-libvirt", "-o", os.devnull])
                for _ in range(args.runs))
            runs = []
            for _ in range(args.runs):
                cp = subprocess.run([sys.executable, __file__, "--status-child", root, str(vms)], capture_output=True,
                                    text=True, timeout=600)
                if cp.returncode != 0:
                    raise SystemExit(f"status child failed: {cp.stderr[-2000:]}")
                runs.append(json.loads(cp.stdout))
            stat = statistics.median(r["seconds"] for r in runs)
            rows.append((n, len(kinds), vms, base, stat, runs[0]["checks"], runs[0]["json_bytes"]))
            shutil.rmtree(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"one profile read (profile.load, {os.path.basename(largest)}, "
          f"{os.path.getsize(largest) // 1024} KB): {one:.2f} ms; 'abiguard fleet --help': {start:.0f} ms")
    print("| hosts | distinct profiles | VMs | fleet baseline s | = profile reads | fleet status s "
          "| = profile reads | engine checks | status JSON KB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, kinds, vms, base, stat, checks, size in rows:
        print(f"| {n:,} | {kinds} | {vms:,} | {base:.2f} | {base * 1000 / one:.0f} | {stat:.2f} "
              f"| {stat * 1000 / one:.0f} | {checks} | {size // 1024:,} |")
    worst = {n: (base, stat, vms) for n, _k, vms, base, stat, _c, _s in rows}
    if 10_000 in worst:
        print(f"goal baseline 10,000 hosts <= 1 s: {'met' if worst[10_000][0] <= 1.0 else 'MISSED'}")
    if 1_000 in worst:
        print(f"goal status 10,000 VMs x 1,000 hosts <= 10 s: {'met' if worst[1_000][1] <= 10.0 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
