#!/usr/bin/env python3
"""Wall time of the installed hook for ``migrate begin`` against ``python3 -c pass``.

    .venv/bin/python tests/bench/bench_hook.py [--runs N]

A realistic arm64 domain XML (virtio disk, NIC, serial, graphics-free, the contract of a
7.2 host in <metadata>) goes to the real hook shim (as `abiguard install` writes it, run
by the same interpreter) on a host whose cached profile is the bundled 7.2 one. Both
commands alternate, so machine noise hits both alike. Goal: median ratio <= 1.5.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "plugin"))

from abiguard import contract, install, profile  # noqa: E402
from abiguard.cli import builtin_profiles  # noqa: E402

DOMAIN = """<domain type='kvm'>
  <name>bench-vm</name>
  <uuid>6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10</uuid>
  <metadata>
    <app:owner xmlns:app="urn:example:app">team-storage</app:owner>
    {contract}
  </metadata>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>4</vcpu>
  <os>
    <type arch='aarch64' machine='virt-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/AAVMF/AAVMF_CODE.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/bench-vm_VARS.fd</nvram>
    <boot dev='hd'/>
  </os>
  <features><acpi/><gic version='3'/><pmu state='on'/></features>
  <cpu mode='host-passthrough' check='none'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/bench-vm.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='pci' index='0' model='pcie-root'/>
    {ports}
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><target type='system-serial' port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""


def timed(cmd: list[str], stdin: bytes, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    cp = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=30)
    dt = time.perf_counter() - t0
    if cp.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({cp.returncode}): {cp.stderr.decode()[-500:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    p72 = [p for p in builtin_profiles() if p.endswith("7.2.13+deb14-arm64.json")][0]
    host = profile.load(p72)
    sealed = contract.from_profile(host)
    ports = "\n    ".join(f"<controller type='pci' index='{i}' model='pcie-root-port'/>" for i in range(1, 9))
    xml = DOMAIN.format(contract=contract.to_xml_text(sealed), ports=ports).encode()
    with tempfile.TemporaryDirectory(prefix="abiguard-bench-") as root:
        os.makedirs(os.path.join(root, "var/lib/abiguard"))
        profile.save(host, os.path.join(root, "var/lib/abiguard/host-profile.json"))
        shim = os.path.join(root, "qemu-hook")
        with open(shim, "w") as f:
            f.write(install.render("qemu", sys.executable))
        os.chmod(shim, 0o755)
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "ABIGUARD_ROOT": root}
        hook = [shim, "bench-vm", "migrate", "begin", "-"]
        out = subprocess.run(hook, input=xml, capture_output=True, env=env, timeout=30)
        assert out.returncode == 0 and b"urn:abiguard:stamp:1" in out.stdout, out.stderr
        base, hooked = [], []
        for _ in range(args.runs):
            base.append(timed([sys.executable, "-c", "pass"], b"", env))
            hooked.append(timed(hook, xml, env))
    mb, mh = statistics.median(base), statistics.median(hooked)
    print(f"domain XML: {len(xml)} bytes; host profile: {os.path.getsize(p72)} bytes; runs: {args.runs}")
    print(f"python3 -c pass      median {mb * 1000:6.1f} ms  (min {min(base) * 1000:.1f})")
    print(f"hook migrate begin   median {mh * 1000:6.1f} ms  (min {min(hooked) * 1000:.1f})")
    print(f"ratio (median)       {mh / mb:.2f}  (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
