"""Smoke tests of the two-host libvirt lab itself (tests/lab/twohost.sh).

    cd /work/main && python3 -m pytest -q -m lab tests/test_twohost_smoke.py
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.conftest_twohost import require_lab, twohost  # noqa: F401  (fixture)
from lab.twohost import TwoHost

pytestmark = pytest.mark.lab

REAL_MOUNTPOINTS = ("/etc/abiguard", "/var/lib/abiguard", "/var/log/abiguard", "/run/libvirt")


def etc_libvirt_fingerprint(root: str = "/etc/libvirt") -> str:
    """Names, modes and contents of everything under the REAL /etc/libvirt."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        h.update(f"D {dirpath} {oct(os.lstat(dirpath).st_mode)}\n".encode())
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            h.update(f"F {p} {oct(st.st_mode)} {st.st_size}\n".encode())
            if os.path.isfile(p) and not os.path.islink(p):
                h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()


REAL_ETC_LIBVIRT_AT_IMPORT = etc_libvirt_fingerprint()


def veth_tx_bytes(lab: TwoHost, host: str) -> int:
    out = subprocess.run(["ip", "-n", f"{lab.prefix}-{host}", "-j", "-s", "link", "show",
                          f"{lab.prefix}-v{host}"], capture_output=True, text=True, check=True,
                         timeout=10).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


def qemu_cgroups(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


def assert_runs_on(lab: TwoHost, name: str, on: str, off: str) -> int:
    assert lab.domstate(on, name) == "running", f"{name} not running on {on}"
    pid = lab.qemu_pid(on, name)
    assert pid, f"{name}: no live qemu pid on {on}"
    assert name not in lab.domains(off), f"{name} still known on {off}: {lab.domains(off)}"
    assert lab.qemu_pid(off, name) is None, f"{name}: qemu still alive on {off}"
    # the VM's cgroup is below this host's own sub-tree (cgroup namespace pitfall)
    assert f"/{lab.prefix}-{on}/machine/" in qemu_cgroups(pid), qemu_cgroups(pid)
    return pid


MOVE = ("--persistent", "--undefinesource")


def test_live_migration_x86_kvm_and_aarch64_tcg(twohost: TwoHost) -> None:  # noqa: F811
    lab = twohost
    try:
        # ---- x86_64 KVM guest: a -> b -> a -> b
        lab.define_guest("a", "x86", "abg-x86")
        lab.start_guest("a", "abg-x86")
        pid_a = assert_runs_on(lab, "abg-x86", "a", "b")
        tx0 = veth_tx_bytes(lab, "a")
        lab.migrate("a", "b", "abg-x86", *MOVE)
        sent = veth_tx_bytes(lab, "a") - tx0
        assert sent > 100_000, f"migration stream did not use the a<->b veth ({sent} bytes)"
        pid_b = assert_runs_on(lab, "abg-x86", "b", "a")
        assert pid_b != pid_a
        lab.migrate("b", "a", "abg-x86", *MOVE)          # back (client-driven)
        assert_runs_on(lab, "abg-x86", "a", "b")
        lab.migrate("a", "b", "abg-x86", *MOVE, p2p=True)  # a's libvirtd -> b over tcp/veth
        assert_runs_on(lab, "abg-x86", "b", "a")
        out = lab.virsh("b", "qemu-monitor-command", "abg-x86", "--hmp", "info status").stdout
        assert "running" in out, out

        # ---- aarch64 TCG guests: cpu max and custom cortex-a57
        for kind, name in (("aarch64", "abg-arm-max"), ("aarch64-a57", "abg-arm-a57")):
            lab.define_guest("a", kind, name)
            lab.start_guest("a", name)
            assert_runs_on(lab, name, "a", "b")
            lab.migrate("a", "b", name, *MOVE)
            assert_runs_on(lab, name, "b", "a")
        lab.migrate("b", "a", "abg-arm-a57", *MOVE)
        assert_runs_on(lab, "abg-arm-a57", "a", "b")

        assert sorted(lab.domains("b", all=False)) == ["abg-arm-max", "abg-x86"]
        assert lab.domains("a", all=False) == ["abg-arm-a57"]
    finally:
        sys.stderr.write(f"\ntimings so far:\n{lab.format_timings()}\n")
        for host in ("a", "b"):
            for name in lab.domains(host):
                lab.destroy_guest(host, name)
    for host in ("a", "b"):
        assert lab.domains(host) == []


PRESTART = r'''
set -e
mkdir -p /etc/libvirt/hooks/qemu.d
{
  echo "host=$TWOHOST_HOST"
  echo "hostname=$(hostname)"
  echo "netns=$(readlink /proc/self/ns/net)"
  if [ -e /run/libvirt/libvirtd.pid ] || [ -e /run/libvirt/virtlogd.pid ] || [ -S /run/libvirt/libvirt-sock ]
  then echo daemons=running; else echo daemons=not-running; fi
} > /etc/libvirt/hooks/abg-prestart-marker
echo "$TWOHOST_HOST" > /etc/abiguard/prestart-was-here
echo "$TWOHOST_HOST" > /var/lib/abiguard/prestart-was-here
if [ "$TWOHOST_HOST" = b ]; then
  cat > /etc/libvirt/hooks/qemu.d/50-probe <<'EOF'
#!/bin/sh
echo "$*" >> /var/log/abiguard/hook-calls.log
cat > /dev/null
exit 0
EOF
  chmod 0755 /etc/libvirt/hooks/qemu.d/50-probe
fi
'''

PROBE_HOOK = "#!/bin/sh\necho \"$*\" >> /var/log/abiguard/hook-calls.log\ncat > /dev/null\nexit 0\n"


def hook_calls(lab: TwoHost, host: str) -> list[str]:
    f = lab.host_state(host) / "abiguard-log" / "hook-calls.log"
    return f.read_text().splitlines() if f.exists() else []


def test_prestart_runs_inside_host_namespaces_before_daemons() -> None:
    require_lab()
    existed_before = {m: os.path.exists(m) for m in REAL_MOUNTPOINTS}
    lab = TwoHost(prefix="abgp")
    try:
        lab.up(prestart=PRESTART)
        assert lab.state is not None
        for host in ("a", "b"):
            marker = lab.host_state(host) / "etc" / "hooks" / "abg-prestart-marker"
            assert marker.exists(), f"prestart marker missing in state/{host}/etc/hooks"
            info = dict(line.split("=", 1) for line in marker.read_text().split())
            netns_ino = os.stat(f"/run/netns/abgp-{host}").st_ino
            assert info == {"host": host, "hostname": f"abgp-{host}",
                            "netns": f"net:[{netns_ino}]", "daemons": "not-running"}, info
            assert (lab.host_state(host) / "abiguard-etc" / "prestart-was-here").read_text() == f"{host}\n"
            assert (lab.host_state(host) / "abiguard-lib" / "prestart-was-here").read_text() == f"{host}\n"
        # nothing of it on the real machine
        assert not os.path.exists("/etc/libvirt/hooks/abg-prestart-marker")
        assert not os.path.exists("/etc/libvirt/hooks/qemu.d/50-probe")
        assert not os.path.exists("/etc/abiguard/prestart-was-here")
        assert etc_libvirt_fingerprint() == REAL_ETC_LIBVIRT_AT_IMPORT

        # the hook installed by prestart on b was seen by b's libvirtd at start ...
        lab.create_guest("b", "aarch64", "abgp-arm")
        assert any(c.startswith("abgp-arm prepare begin") for c in hook_calls(lab, "b")), hook_calls(lab, "b")
        lab.destroy_guest("b", "abgp-arm")
        # ... and gets "migrate begin" for an incoming migration
        lab.create_guest("a", "aarch64", "abgp-mig")
        lab.migrate("a", "b", "abgp-mig")
        assert "abgp-mig migrate begin -" in hook_calls(lab, "b"), hook_calls(lab, "b")
        assert lab.domstate("b", "abgp-mig") == "running"
        lab.destroy_guest("b", "abgp-mig")

        # a hook added to a's private /etc/libvirt after its libvirtd started is ignored
        # until `restart a`
        lab.exec("a", "sh", "-c", "mkdir -p /etc/libvirt/hooks/qemu.d && "
                 "cat > /etc/libvirt/hooks/qemu.d/50-probe && chmod 0755 /etc/libvirt/hooks/qemu.d/50-probe",
                 input=PROBE_HOOK)
        assert (lab.host_state("a") / "etc" / "hooks" / "qemu.d" / "50-probe").exists()
        lab.create_guest("a", "aarch64", "abgp-r1")
        lab.destroy_guest("a", "abgp-r1")
        calls_before_restart = hook_calls(lab, "a")
        lab.restart("a")
        lab.create_guest("a", "aarch64", "abgp-r2")
        lab.destroy_guest("a", "abgp-r2")
        calls = hook_calls(lab, "a")
        assert any(c.startswith("abgp-r2 prepare begin") for c in calls), calls
        sys.stderr.write(f"\nhook calls on a before restart: {calls_before_restart}\n")
        assert not any(c.startswith("abgp-r1 ") for c in calls), \
            "libvirtd picked up a hook added after its start (no restart needed?)"
    finally:
        state = lab.state
        lab.down()
        sys.stderr.write(f"\nprestart lab timings:\n{lab.format_timings()}\n")
    # everything gone again
    assert state is not None and not state.exists(), f"state dir {state} left behind"
    if os.path.isdir("/run/netns"):
        assert not [n for n in os.listdir("/run/netns") if n.startswith("abgp-")]
    for m, existed in existed_before.items():
        assert os.path.exists(m) == existed, f"{m}: existed before={existed}, now={os.path.exists(m)}"
    assert etc_libvirt_fingerprint() == REAL_ETC_LIBVIRT_AT_IMPORT
