#!/usr/bin/env python3
"""Run the whole arm64 lab: probe every lab host, then replay every host's register
stream on every other host (the verdict engine's ground truth).

    tests/lab/armlab_matrix.py OUTDIR [--jobs N] [--hosts NAME,...]

OUTDIR/profiles/<host>.json     host profiles (what ``abiguard probe --kvm-only`` wrote there)
OUTDIR/groundtruth/<host>.json  replays of every profile's streams on <host>
OUTDIR/lab/<host>-<phase>.json  boot timings and console facts per boot
OUTDIR/summary.json             wall times

Hosts are real Debian arm64 kernels under qemu-system-aarch64 TCG with EL2 (see
armlab.sh); the emulated CPU is part of a host's identity.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ARMLAB = os.path.join(HERE, "armlab.sh")

#: (kernel prefix, emulated CPU): the four Debian generations with QEMU's "max" CPU, and
#: 6.12 / 7.x on two real CPU models (cortex-a72: v8.0, nVHE; neoverse-n1: v8.2, VHE)
HOSTS: tuple[tuple[str, str], ...] = (
    ("5.10", "max"), ("6.1", "max"), ("6.12", "max"), ("7", "max"),
    ("6.12", "cortex-a72"), ("7", "cortex-a72"), ("6.12", "neoverse-n1"), ("7", "neoverse-n1"),
)


def kernel_versions() -> dict[str, str]:
    out = subprocess.run([ARMLAB, "list"], check=True, capture_output=True, text=True).stdout
    kvers = sorted(line.split("\t")[0] for line in out.splitlines() if line.strip())
    resolved = {}
    for prefix, _cpu in HOSTS:
        match = [k for k in kvers if k.startswith(prefix + ".") or k.startswith(prefix + "-")
                 or k.startswith(prefix + "+")]
        if not match:
            raise SystemExit(f"armlab: no fetched kernel for {prefix} (have {kvers})")
        resolved[prefix] = match[-1]
    return resolved


def host_name(kver: str, cpu: str) -> str:
    return kver if cpu == "max" else f"{kver}-{cpu}"


def boot(kver: str, cpu: str, tag: str, results: str) -> dict:
    name = host_name(kver, cpu)
    env = dict(os.environ, ARMLAB_RESULTS=results, ARMLAB_NAME=name)
    started = time.monotonic()
    proc = subprocess.run([ARMLAB, "run", kver, tag, cpu], env=env, capture_output=True, text=True,
                          timeout=900)
    path = os.path.join(results, name + ".json")
    if proc.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"{name} ({tag}) failed rc={proc.returncode}: {proc.stderr[-2000:]}")
    with open(path) as f:
        doc = json.load(f)
    doc["lab"]["driver_wall_seconds"] = round(time.monotonic() - started, 1)
    return doc


def phase(tag: str, hosts: list[tuple[str, str]], jobs: int, tmp: str) -> dict[str, dict]:
    results = os.path.join(tmp, tag)
    os.makedirs(results, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {host_name(k, c): pool.submit(boot, k, c, tag, results) for k, c in hosts}
        return {name: fut.result() for name, fut in futures.items()}


def write(path: str, doc: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps(doc, sort_keys=True, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--jobs", type=int, default=2, help="parallel boots (default %(default)s)")
    ap.add_argument("--hosts", help="comma-separated host names to run (default: all)")
    ap.add_argument("--skip-replay", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    subprocess.run([ARMLAB, "fetch"], check=True, stdout=subprocess.DEVNULL)
    t_fetch = time.monotonic() - t0
    kvers = kernel_versions()
    hosts = [(kvers[p], c) for p, c in HOSTS]
    if args.hosts:
        wanted = set(args.hosts.split(","))
        hosts = [h for h in hosts if host_name(*h) in wanted]
    tmp = os.path.join(args.outdir, ".runs")
    shutil.rmtree(tmp, ignore_errors=True)
    summary: dict = {"fetch_seconds": round(t_fetch, 1), "hosts": [host_name(*h) for h in hosts]}

    t1 = time.monotonic()
    env = dict(os.environ, ARMLAB_MODE="probe")
    subprocess.run([ARMLAB, "build", "matrix-probe"], check=True, env=env, stdout=subprocess.DEVNULL)
    probed = phase("matrix-probe", hosts, args.jobs, tmp)
    for name, doc in probed.items():
        write(os.path.join(args.outdir, "profiles", name + ".json"), doc["result"])
        write(os.path.join(args.outdir, "lab", name + "-probe.json"), doc["lab"])
    summary["probe_phase_seconds"] = round(time.monotonic() - t1, 1)

    if not args.skip_replay:
        t2 = time.monotonic()
        env = dict(os.environ, ARMLAB_MODE="replay", ARMLAB_INPUTS=os.path.join(args.outdir, "profiles"))
        subprocess.run([ARMLAB, "build", "matrix-replay"], check=True, env=env, stdout=subprocess.DEVNULL)
        replayed = phase("matrix-replay", hosts, args.jobs, tmp)
        for name, doc in replayed.items():
            result = doc["result"]
            write(os.path.join(args.outdir, "groundtruth", name + ".json"), {
                "destination": name,
                "destination_profile_digest": result["profile"]["digest"],
                "replays": result["replays"],
            })
            write(os.path.join(args.outdir, "lab", name + "-replay.json"), doc["lab"])
        summary["replay_phase_seconds"] = round(time.monotonic() - t2, 1)
    summary["total_seconds"] = round(time.monotonic() - t0, 1)
    write(os.path.join(args.outdir, "summary.json"), summary)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
