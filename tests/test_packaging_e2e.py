"""End to end against the installed Debian package (issue 6): the .deb built from this
checkout, installed with one ``apt-get install -y ./abiguard_*.deb`` into both hosts of the
two-host lab, and a real ``virsh migrate --live`` between them through the installed hook.

- Both hosts run libvirt 9.0 / QEMU 7.2 chrooted into (an overlay of) a cached Debian 12
  root filesystem with libvirt-daemon-system, qemu-system-x86, python3-libvirt and
  python3-lxml (tests/lab/debhosts.py, built once by tests/lab/rootfs.sh). The package is
  installed in each host before its libvirtd starts (TWOHOST_PRESTART runs in the chroot),
  so libvirt finds the hooks when it starts, as on a host where the package came first. This
  checkout is not visible inside the hosts: whatever abiguard does there is the package.
- The installed hook files are the package's (``/usr/bin/python3 -IS``, dist-packages), owned
  by dpkg; postinst probed the host into /var/lib/abiguard/host-profile.json; the daemon hook
  refreshed it when libvirtd started.
- An x86 guest (qemu64 without what this machine's KVM lacks, sse2 required) pinned with the
  installed /usr/bin/abiguard on a, migrated a -> b: allowed and stamped with b's profile
  digest; back b -> a. Then b's profile loses sse2 (written by the installed package's own
  Python): ``virsh migrate`` fails with abiguard's one line, the VM keeps running on a with
  the same QEMU.
- ``apt-get purge -y abiguard`` in b: the hooks, the config, the profile and the command are
  gone, and b's still-running libvirtd starts a VM again without them.

Real parts: root, /dev/kvm, the two-host lab's tools, debootstrap, overlayfs, Debian's
archive for the first root filesystem build, PyPI (or ABIGUARD_WHEELS) for build-deb.
Measured on 2 cores: 13 s warm (build-deb 4 s, up with both apt-get installs 1.5-4 s, three
migrations 1.6 s, purge ~2 s); cold +40-95 s for the root filesystem (debootstrap + apt).
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from helpers.realparts import need, need_kvm
from lab import debhosts as dh, warmup
from lab.conftest_twohost import lab_problems
from lab.twohost import TwoHost

pytestmark = pytest.mark.lab

HOOKS = {"qemu": "hooks/qemu.d/abiguard", "daemon": "hooks/daemon.d/abiguard"}  # below /etc/libvirt
PROFILE = "/var/lib/abiguard/host-profile.json"
MOVE = ("--persistent", "--undefinesource")
VM = "pkg-x86"
VERSION_RE = re.compile(r"abiguard_([^_]+)_[a-z0-9]+\.deb$")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def real_parts() -> str:
    """Everything but the .deb: skip (CI=true: fail) loudly when a part is missing; the
    cached root filesystem (built on first use)."""
    need(os.geteuid() == 0, "root (apt-get, debootstrap, namespaces, chroot)")
    need_kvm()
    need(not lab_problems(), "two-host libvirt lab: " + "; ".join(lab_problems()))
    need(not dh.problems(), "packaged hosts: " + "; ".join(dh.problems()))
    need(Path("/usr/bin/dpkg-query").exists(), "a Debian system (dpkg, apt) to build the .deb")
    warmup.wait("x86-rootfs")
    try:
        return dh.ensure_rootfs()
    except Exception as e:  # no mirror / no network is a missing real part
        need(False, f"Debian 12 root filesystem for the packaged hosts ({dh.ROOTFS}): {e}")
        raise


@pytest.fixture(scope="session")
def built_deb(real_parts, tmp_path_factory) -> Path:
    """The .deb, built once per session by packaging/build-deb."""
    return dh.build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def lab(real_parts, built_deb):
    t0 = time.monotonic()
    with dh.packaged_lab(built_deb, real_parts, prefix="abgpk") as lab:
        dh.log(f"lab up with the package installed in both hosts in {time.monotonic() - t0:.1f} s")
        yield lab


@pytest.fixture(scope="module")
def profiles(lab: TwoHost) -> dict:
    """Each host's profile once its daemon hook refreshed it (with libvirt's answers)."""
    out = {}
    for h in ("a", "b"):
        dh.wait_for_log(state(lab, h, "abiguard-log", "hook.log"), "daemon start: host profile refreshed")
        out[h] = json.loads(state(lab, h, "abiguard-lib", "host-profile.json").read_text())
        assert out[h]["stack"]["libvirt"]["domcapabilities"]["host_model"]["model"], out[h]["unavailable"]
    return out


# ------------------------------------------------------------------------------- helpers
def state(lab: TwoHost, host: str, *parts: str) -> Path:
    return lab.host_state(host).joinpath(*parts)


def deb_member(deb: Path, path: str) -> str:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, timeout=60,
                         check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return t.extractfile("./" + path).read().decode()


def qemu64(profile: dict, *required: str) -> str:
    """qemu64 without what this machine's KVM cannot give it (as in test_e2e_hook.py: QEMU
    lists pni as unavailable here, and libvirt's qemu64 carries svm, which this KVM does not
    nest), plus required features."""
    missing = sorted(set(profile["stack"]["qemu"]["cpu_definitions"]["qemu64"]) | {"svm"})
    feats = "".join(f"<feature policy='disable' name='{f}'/>" for f in missing)
    feats += "".join(f"<feature policy='require' name='{f}'/>" for f in required)
    return f"<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>qemu64</model>{feats}</cpu>"


def abiguard_line(cp: subprocess.CompletedProcess) -> str:
    """The hook's line: libvirt prefixes it ("... unexpected exit status 1: abiguard: ...")."""
    for ln in cp.stderr.splitlines():
        i = ln.find("abiguard:")
        if i >= 0:
            return ln[i:]
    return ""


# --------------------------------------------------------------------------------- tests
def test_the_package_is_what_runs_in_both_hosts(lab: TwoHost, built_deb: Path, real_parts: str, profiles):
    version = VERSION_RE.search(built_deb.name).group(1)
    for h in ("a", "b"):
        out = dh.starter_log(lab, h)
        # one apt-get command, before libvirtd started; postinst probed and said so
        assert f"Setting up abiguard ({version})" in out, out[-4000:]
        assert f"abiguard: probed this host: {PROFILE}" in out, out[-4000:]
        # the lab has no PID namespace: postinst's pidof may see another host's libvirtd
        assert re.search(r"abiguard: (\S+ is running: restart it|libvirtd/virtqemud is not running)", out), out[-4000:]
        assert "prestart done" in out and out.index("Setting up abiguard") < out.index("prestart done"), out[-4000:]
        cp = dh.host(lab, h, "dpkg-query", "-W", "-f=${Status} ${Version}", "abiguard")
        assert cp.stdout == f"install ok installed {version}", cp.stdout

        # the hooks libvirt runs: the package's files, byte for byte, executable
        for kind, rel in HOOKS.items():
            path = state(lab, h, "etc", rel)
            text = path.read_text()
            assert text == deb_member(built_deb, f"etc/libvirt/{rel}"), f"{h}: {rel} is not the package's"
            assert path.stat().st_mode & 0o777 == 0o755, oct(path.stat().st_mode)
            shebang = "#!/usr/bin/python3 -IS\n" if kind == "qemu" else "#!/usr/bin/python3 -I\n"
            assert text.startswith(shebang), text[:80]
            assert "sys.path.insert(0, '/usr/lib/python3/dist-packages')" in text and "abiguard-hook-id" in text
            cp = dh.host(lab, h, "dpkg", "-S", f"/etc/libvirt/{rel}")
            assert cp.stdout.startswith("abiguard: "), cp.stdout
        # the package's Python, and QEMU's qemu.qmp from its vendor directory (Debian has none)
        cp = dh.host(lab, h, "/usr/bin/python3", "-c", "import sys, abiguard; from abiguard.probe import stack; "
                     "print(abiguard.__file__); print(sys.modules[stack._qmp_class().__module__].__file__)")
        assert cp.stdout.split() == ["/usr/lib/python3/dist-packages/abiguard/__init__.py",
                                     "/usr/share/abiguard/vendor/qemu/qmp/legacy.py"], cp.stdout
        assert dh.host(lab, h, "sh", "-c", "command -v abiguard").stdout.strip() == "/usr/bin/abiguard"

        # postinst wrote the profile (the daemon hook refreshed it when libvirtd started)
        log = state(lab, h, "abiguard-log", "hook.log").read_text()
        assert "daemon start: host profile refreshed" in log, log
        assert profiles[h]["host"]["machine"] == "x86_64"
        assert profiles[h]["stack"]["libvirt"]["version"].startswith("9.0"), profiles[h]["stack"]["libvirt"]
        assert profiles[h]["stack"]["qemu"]["version"].startswith("7.2"), profiles[h]["stack"]["qemu"]["version"]
        assert state(lab, h, "abiguard-lib", "host-profile.json.hookview").exists()
        config = state(lab, h, "abiguard-etc", "abiguard.toml").read_text()
        assert config == deb_member(built_deb, "etc/abiguard/abiguard.toml")
    # the overlays took every write: the cached root filesystem and this machine are untouched
    assert not Path(real_parts, "usr/bin/abiguard").exists()
    assert not Path(real_parts, "etc/libvirt/hooks/qemu.d").exists()
    assert not Path("/etc/libvirt/hooks/qemu.d/abiguard").exists(), "the real machine was touched"


def test_pinned_vm_migrates_then_is_refused_by_the_installed_hook(lab: TwoHost, profiles):
    a, b = profiles["a"], profiles["b"]
    try:
        lab.define_guest("a", "x86", VM, cpu=qemu64(a, "sse2"))
        cp = dh.host(lab, "a", "/usr/bin/abiguard", "pin", VM)
        assert f"pinned {VM}" in cp.stdout and "custom qemu64" in cp.stdout, cp.stdout + cp.stderr
        inactive = lab.virsh("a", "dumpxml", "--inactive", VM).stdout
        assert "urn:abiguard:contract:1" in inactive, inactive
        lab.start_guest("a", VM)

        # a -> b: the installed hook on b allows it and stamps b's profile digest
        cp = lab.migrate("a", "b", VM, *MOVE)
        assert cp.returncode == 0, cp.stderr
        xml = lab.virsh("b", "dumpxml", VM).stdout
        assert "urn:abiguard:contract:1" in xml and xml.count("urn:abiguard:stamp:1") == 1, xml
        assert f'profile="{b["digest"]}"' in xml, xml
        assert lab.domstate("b", VM) == "running"
        assert f"migrate {VM}: " in state(lab, "b", "abiguard-log", "hook.log").read_text()
        # and back: a's hook allows it and the stamp names a
        lab.migrate("b", "a", VM, *MOVE)
        xml = lab.virsh("a", "dumpxml", VM).stdout
        assert xml.count("urn:abiguard:stamp:1") == 1 and f'profile="{a["digest"]}"' in xml, xml

        # b "downgraded": its profile loses sse2, written by the installed package itself
        script = (f"import json; from abiguard.model import profile; p = {PROFILE!r}; "
                  "d = json.loads(json.dumps(profile.load(p).doc)); "
                  "d['stack']['qemu']['host_cpu_expansion']['props']['sse2'] = False; d.pop('digest'); "
                  "d = profile.finalize(d, 0.0, 'b-older'); profile.save(d, p); print(d['digest'])")
        weaker = dh.host(lab, "b", "/usr/bin/python3", "-c", script).stdout.strip()
        assert weaker.startswith("sha256:") and weaker != b["digest"], weaker
        pid = lab.qemu_pid("a", VM)
        assert pid
        cp = lab.migrate("a", "b", VM, *MOVE, check=False)
        assert cp.returncode != 0, cp.stdout
        line = abiguard_line(cp)
        assert line.startswith(f"abiguard: refusing migrate of '{VM}'"), cp.stderr
        assert "sse2" in line and "cannot provide it" in line, line
        dh.log(f"refused as expected in {cp.seconds:.2f} s: {line}")
        assert lab.domstate("a", VM) == "running" and lab.qemu_pid("a", VM) == pid
        assert VM not in lab.domains("b")
    finally:
        for h in ("a", "b"):
            if VM in lab.domains(h):
                lab.destroy_guest(h, VM)


def test_purge_removes_the_hooks(lab: TwoHost, built_deb: Path):
    """Last: b loses the package. apt-get purge removes the hooks (and the rest); the
    libvirtd that is still running with them registered starts VMs as before."""
    before = dh.host(lab, "b", "ls", "-A", "/var/log/abiguard").stdout.split()
    assert "hook.log" in before, before
    # a lab artifact, not the package's: twohost.sh binds the host's private /var/log/abiguard
    # over the chroot's. postrm empties a mount point and leaves it; unbinding it first lets
    # this test see the directory itself go.
    dh.host(lab, "b", "umount", "/var/log/abiguard")
    cp = dh.host(lab, "b", "apt-get", "purge", "-y", "abiguard", check=False, timeout=300)
    assert cp.returncode == 0, f"apt-get purge failed ({cp.returncode}):\n{cp.stdout[-4000:]}\n{cp.stderr[-4000:]}"
    for rel in HOOKS.values():
        assert not state(lab, "b", "etc", rel).exists(), f"/etc/libvirt/{rel} left after purge"
    assert not state(lab, "b", "etc", "hooks", "daemon.d").exists()
    assert not state(lab, "b", "etc", "hooks", "qemu.d").exists()
    assert not state(lab, "b", "abiguard-etc", "abiguard.toml").exists()
    assert not state(lab, "b", "abiguard-lib", "host-profile.json").exists()
    assert not state(lab, "b", "abiguard-lib", "host-profile.json.hookview").exists()
    cp = dh.host(lab, "b", "dpkg-query", "-W", "-f=${Status}", "abiguard", check=False)
    assert cp.returncode != 0 or cp.stdout.endswith(" not-installed"), cp.stdout  # not even config-files
    for path in ("/usr/bin/abiguard", "/usr/lib/python3/dist-packages/abiguard", "/usr/share/abiguard",
                 "/var/log/abiguard", "/usr/share/man/man8/abiguard.8.gz"):
        assert dh.host(lab, "b", "test", "!", "-e", path, check=False).returncode == 0, f"{path} left after purge"
    # a still has it
    assert state(lab, "a", "etc", HOOKS["qemu"]).exists()

    name = "pkg-after-purge"
    try:
        lab.define_guest("b", "x86", name, cpu=qemu64(json.loads(
            state(lab, "a", "abiguard-lib", "host-profile.json").read_text())))
        cp = lab.virsh("b", "start", name, check=False)
        assert cp.returncode == 0, f"b cannot start a VM after the purge: {cp.stderr}"
        assert lab.domstate("b", name) == "running"
    finally:
        if name in lab.domains("b"):
            lab.destroy_guest("b", name)
