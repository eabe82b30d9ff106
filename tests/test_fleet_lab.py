"""The fleet on real parts: two lab libvirt hosts sharing one fleet directory, each
publishing its own measured profile into it; the fleet commands read that directory and the
hosts' VMs through libvirt's remote driver (qemu+tcp over the lab's veth); every answer is
held to ``abiguard check`` run in this test on the same profiles (the ground truth is made
here, on this machine, never taken from another).

Host a is this machine (libvirt 9.0 + QEMU 7.2), host b a chrooted Debian trixie
(libvirt 11.3 + QEMU 10.0, tests/lab/rootfs.sh), so the fleet has two real, different
profiles. The fleet directory is one directory of this machine bound writable into b's
chroot: the shared filesystem of a real fleet.

Also here: ``fleet pull`` over a real sshd (own host key, authorized_keys, port and
config, started inside host a's namespaces and stopped by its pid) and the bad input the
issue names (a corrupt or foreign file, a record pointing at a missing profile, two hosts
publishing at once, an unreachable host), each a clear message naming the file or host,
exit 2 where the input is bad, and nothing else in the directory lost (snapshot before
and after). Placement and the browser: tests/test_fleet_scheduler.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.realparts import need, need_commands, need_kvm
from helpers.run import PLUGIN, abiguard as cli
from lab import warmup, x86fleet as xf
from lab.conftest_twohost import _LIVE, lab_problems
from lab.twohost import TwoHost

pytestmark = pytest.mark.lab

PREFIX = "abgfl"
NET = "169.254.77"                      # twohost.sh's default veth /30
IP = {"a": f"{NET}.1", "b": f"{NET}.2"}
NAME = {"a": f"{PREFIX}-a", "b": f"{PREFIX}-b"}      # the hosts' node names (UTS)
WORK = Path("/var/tmp/abiguard-fleet-lab")
SSH_PORT = 38622


def log(msg: str) -> None:
    sys.stderr.write(f"[fleet-lab {time.strftime('%T')}] {msg}\n")
    sys.stderr.flush()


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root: relative path -> sha256 of its bytes."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class FleetLab:
    """The two hosts, the shared fleet directory, and abiguard run on each side."""

    def __init__(self, lab: TwoHost, fleet: Path, work: Path) -> None:
        self.lab, self.fleet, self.work = lab, fleet, work

    def python(self, host: str) -> list[str]:
        if self.lab.chrooted(host):
            return ["env", f"PYTHONPATH={xf.CHROOT_PLUGIN}", "PYTHONDONTWRITEBYTECODE=1", "python3"]
        return ["env", f"PYTHONPATH={PLUGIN}", sys.executable]

    def on(self, host: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """``abiguard ARGS`` inside host's namespaces (where the qemu+tcp URIs reach)."""
        return self.lab.exec(host, *self.python(host), "-m", "abiguard", *args, check=False, timeout=timeout)

    def profile_file(self, host: str) -> Path:
        return self.lab.host_state(host) / "abiguard-lib" / "host-profile.json"


def prestart(fleet: Path) -> str:
    """Each host's abiguard.toml names the fleet directory and the URI it is reached by,
    then abiguard installs its hooks (the daemon hook probes and publishes at start)."""
    toml = f'[fleet]\\ndir = "{fleet}"\\nuri = "qemu+tcp://%s/system"\\n'
    return (f'case "$TWOHOST_HOST" in a) ip={IP["a"]};; b) ip={IP["b"]};; esac; '
            f'mkdir -p /etc/abiguard && printf \'{toml}\' "$ip" > /etc/abiguard/abiguard.toml && '
            f'if [ -n "${{TWOHOST_ROOTFS:-}}" ]; then PYTHONPATH={xf.CHROOT_PLUGIN} PYTHONDONTWRITEBYTECODE=1 '
            f'python3 -m abiguard install --no-probe; else PYTHONPATH={PLUGIN} {sys.executable} -m abiguard '
            f'install --no-probe; fi')


@pytest.fixture(scope="module")
def fl() -> Iterator[FleetLab]:
    need(not lab_problems(), "two-host libvirt lab: " + "; ".join(lab_problems()))
    need_kvm()
    need(not xf.problems(), "x86 fleet lab: " + "; ".join(xf.problems()))
    warmup.wait("x86-rootfs")
    try:
        rootfs = xf.build_rootfs(("trixie",))
    except Exception as e:  # noqa: BLE001 - a missing mirror is a missing real part
        need(False, f"Debian trixie root filesystem (tests/lab/rootfs.sh build trixie): {e}")
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run.", dir=WORK))
    fleet = work / "fleet"
    fleet.mkdir()
    guest = work / "guest"          # the CPUID/MSR-reading guest kernel, at one path on both hosts
    xf.build_guest(guest)
    binds = [f"{xf.PLUGIN}:{xf.CHROOT_PLUGIN}", f"{xf.qemu_qmp_dir()}:{xf.CHROOT_VENDOR_QEMU}", f"{fleet}:{fleet}:rw",
             f"{guest}:{guest}"]
    lab = TwoHost(prefix=PREFIX, rootfs={"b": rootfs["trixie"]}, chroot_binds=binds, timeout=120)
    _LIVE.append(lab)
    try:
        t0 = time.monotonic()
        lab.up(prestart=prestart(fleet))
        log(f"lab up in {time.monotonic() - t0:.1f} s")
        yield FleetLab(lab, fleet, work)
    finally:
        try:
            lab.down()
        finally:
            if lab in _LIVE:
                _LIVE.remove(lab)
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def published(fl: FleetLab) -> dict[str, Path]:
    """Both daemon hooks have probed and published; host -> a copy of its profile."""
    t0 = time.monotonic()
    deadline = t0 + 150
    records = {h: fl.fleet / "hosts" / f"{NAME[h]}.json" for h in ("a", "b")}
    while not all(r.exists() for r in records.values()):
        if time.monotonic() > deadline:
            logs = {h: (fl.lab.host_state(h) / "abiguard-log" / "hook.log") for h in ("a", "b")}
            raise AssertionError("the daemon hooks did not publish: " + "; ".join(
                f"{h}: {p.read_text()[-600:] if p.exists() else 'no log'}" for h, p in logs.items()))
        time.sleep(0.5)
    log(f"both daemon hooks published in {time.monotonic() - t0:.1f} s")
    out = {}
    for h in ("a", "b"):
        out[h] = fl.work / f"profile-{h}.json"
        shutil.copyfile(fl.profile_file(h), out[h])
    return out


def digest_of(path: Path) -> str:
    return str(json.loads(path.read_text())["digest"])


def check(src: Path, dst: Path) -> bool:
    """The ground truth: ``abiguard check`` on the same profiles, in this run."""
    cp = cli("check", "--from", str(src), "--to", str(dst))
    assert cp.returncode in (0, 1), cp.stderr
    return cp.returncode == 0


@pytest.fixture(scope="module")
def vms(fl: FleetLab, published: dict[str, Path]) -> dict[str, tuple[str, Path | None]]:
    """VMs pinned with the real ``abiguard pin`` through each host's libvirt:
    name -> (host, the profile whose contract it carries, None: unpinned)."""
    plan = {"fl-a-own": ("a", published["a"]), "fl-a-plain": ("a", None),
            "fl-b-own": ("b", published["b"]), "fl-b-from-a": ("b", published["a"])}
    for name, (host, prof) in plan.items():
        # on q35, the chipset abiguard's x86 contracts pin (abiguard pin refuses to change it)
        xml = fl.work / f"{name}.xml"
        xml.write_text(fl.lab.render_guest("x86", name).replace("machine='pc'", "machine='q35'"))
        fl.lab.virsh(host, "define", str(xml))
        if prof is not None:
            cp = cli("pin", name, "-c", fl.lab.uri(host), "--profile", str(prof), timeout=120)
            assert cp.returncode == 0, f"pin {name} on {host}: {cp.stderr}"
    # one of them running (KVM, through abiguard's hook: unpinned, so [policy] warn lets it
    # start): a running domain's migratable XML is what is read for it. The pinned ones
    # start too (test_pinned_vms_start_and_move): no contract asks a host's QEMU for an
    # IA32_ARCH_CAPABILITIES bit its KVM will not put into a vCPU (issue 26)
    fl.lab.start_guest("a", "fl-a-plain")
    return plan


def test_each_host_publishes_its_own_profile(fl, published):
    recs = {h: json.loads((fl.fleet / "hosts" / f"{NAME[h]}.json").read_text()) for h in ("a", "b")}
    for h in ("a", "b"):
        assert recs[h]["profile"] == digest_of(published[h]), recs[h]
        assert recs[h]["via"] == "daemon" and recs[h]["uri"] == f"qemu+tcp://{IP[h]}/system", recs[h]
    assert digest_of(published["a"]) != digest_of(published["b"]), "two QEMU/libvirt versions, two profiles"
    assert sorted(os.listdir(fl.fleet / "profiles")) == sorted(
        f"{digest_of(p).replace(':', '-')}.json" for p in published.values())
    # abiguard probe publishes too (here on the chrooted host): the same profile, so the
    # same file, and the record now says who published it
    t0 = time.monotonic()
    cp = fl.on("b", "probe", "-o", "/var/lib/abiguard/host-profile.json")
    log(f"abiguard probe on b (trixie) in {time.monotonic() - t0:.1f} s:\n{cp.stderr}")
    assert cp.returncode == 0, cp.stderr
    assert "published" in cp.stderr and fl.fleet.name in cp.stderr, cp.stderr
    rec = json.loads((fl.fleet / "hosts" / f"{NAME['b']}.json").read_text())
    assert rec["via"] == "probe" and rec["profile"] == digest_of(published["b"]), rec
    assert len(os.listdir(fl.fleet / "profiles")) == 2


def test_fleet_hosts(fl, published):
    log("abiguard fleet hosts:\n" + cli("fleet", "hosts", "--fleet", str(fl.fleet)).stdout)
    cp = cli("fleet", "hosts", "--fleet", str(fl.fleet), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["schema"] == "abiguard-fleet-hosts/1"
    got = {h["name"]: h for h in doc["hosts"]}
    assert set(got) == set(NAME.values())
    for h in ("a", "b"):
        prof = json.loads(published[h].read_text())
        assert got[NAME[h]]["profile"] == prof["digest"] and got[NAME[h]]["kernel"] == prof["host"]["kernel_release"]


def test_fleet_status_over_libvirt_remote_agrees_with_check(fl, published, vms):
    t0 = time.monotonic()
    cp = fl.on("a", "fleet", "status", "--fleet", str(fl.fleet), "--json")
    log(f"fleet status over qemu+tcp in {time.monotonic() - t0:.1f} s")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["schema"] == "abiguard-fleet-status/1"
    rows = {r["name"]: r for r in doc["vms"]}
    assert set(rows) == set(vms), rows
    host_of = {NAME[h]: h for h in ("a", "b")}
    for name, (host, prof) in vms.items():
        row = rows[name]
        assert row["host"] == NAME[host], row
        assert row["state"] == ("running" if name == "fl-a-plain" else "shut off"), row
        if prof is None:
            assert row["contract"] is None and row["verdicts"] is None
            continue
        from abiguard.model import contract, profile
        assert row["contract"] == contract.from_profile(profile.load(str(prof))).digest, row
        allowed = 0
        for dest_name, h in doc["hosts"].items():
            truth = check(prof, published[host_of[dest_name]])
            assert doc["verdicts"][row["verdicts"]][h["profile"]]["allow"] is truth, (name, dest_name)
            allowed += truth and dest_name != NAME[host]
        assert row["may_move_to"] == allowed, row
    # at least one refusal, so the agreement above is not all-allow
    assert any(not j["allow"] for v in doc["verdicts"].values() for j in v.values()), doc["verdicts"]
    text = fl.on("a", "fleet", "status", "--fleet", str(fl.fleet))
    assert text.returncode == 0 and "REFUSE on" in text.stdout and "fl-a-plain" in text.stdout, text.stdout
    log("abiguard fleet status:\n" + text.stdout)


def test_fleet_labels_are_where_check_allows(fl, published, vms):
    """Kubernetes node labels for the contracts the VMs carry (read over qemu+tcp): a node
    has a contract's label exactly where ``abiguard check`` allows it."""
    from abiguard.fleet import names
    from abiguard.model import contract, profile

    cp = fl.on("a", "fleet", "labels", "--fleet", str(fl.fleet), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["schema"] == "abiguard-fleet-labels/1" and doc["skipped"] == []
    carried = {p for _h, p in vms.values() if p is not None}
    for prof in carried:
        label = names.label(contract.from_profile(profile.load(str(prof))).digest)
        for h in ("a", "b"):
            assert (label in doc["nodes"][NAME[h]]) is check(prof, published[h]), (label, h)
    text = fl.on("a", "fleet", "labels", "--fleet", str(fl.fleet), "--kubectl")
    assert text.returncode == 0, text.stderr
    log("abiguard fleet labels --kubectl:\n" + text.stdout)


def test_fleet_whatif_rollback_agrees_with_check(fl, published, vms):
    """If host b ran host a's QEMU and libvirt again (a rollback), the VMs on b that could
    not run there and the contracts b would stop realising are those ``abiguard check``
    refuses on a's profile."""
    from abiguard.model import contract, profile

    cp = fl.on("a", "fleet", "whatif", "--fleet", str(fl.fleet), "--host", NAME["b"], "--as", str(published["a"]),
               "--json")
    doc = json.loads(cp.stdout)
    assert doc["schema"] == "abiguard-fleet-whatif/1"
    on_b = {n: p for n, (h, p) in vms.items() if h == "b" and p is not None}
    assert {e["vm"] for e in doc["could_not_stay"]} == {n for n, p in on_b.items() if not check(p, published["a"])}
    carried = {p for _h, p in vms.values() if p is not None}
    stops = {contract.from_profile(profile.load(str(p))).digest for p in carried
             if check(p, published["b"]) and not check(p, published["a"])}
    assert {e["contract"] for e in doc["stops_realising"]} == stops
    assert cp.returncode == (1 if stops or doc["could_not_stay"] else 0), cp.stderr
    log("abiguard fleet whatif --host abgfl-b --as profile-a.json:\n"
        + fl.on("a", "fleet", "whatif", "--fleet", str(fl.fleet), "--host", NAME["b"], "--as",
                str(published["a"])).stdout)


def test_fleet_matrix_is_abiguard_matrix(fl, published):
    log("abiguard fleet matrix:\n" + cli("fleet", "matrix", "--fleet", str(fl.fleet)).stdout)
    cp = cli("fleet", "matrix", "--fleet", str(fl.fleet), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["schema"] == "abiguard-fleet-matrix/1"
    plain = cli("matrix", str(published["a"]), str(published["b"]), "--json")
    assert plain.returncode == 0, plain.stderr
    (table,) = json.loads(plain.stdout)["tables"].values()
    key = {g["profile"]: k for k, g in doc["groups"].items()}
    name = {digest_of(published[h]): f"profile-{h}" for h in ("a", "b")}
    for s in ("a", "b"):
        for d in ("a", "b"):
            if s == d:
                continue
            ds, dd = digest_of(published[s]), digest_of(published[d])
            assert doc["cells"][f"{key[ds]} -> {key[dd]}"]["state"] == table[f"{name[ds]} -> {name[dd]}"]["state"]


def test_fleet_baseline_is_abiguard_baseline(fl, published):
    """The fleet's baseline is what ``abiguard baseline`` computes from the same profiles
    with the same libvirts, with the same outcome (issue 24: written only if every host
    starts and accepts it, else exit 1, nothing written, each host's reasons), and what it
    says of each host's acceptance is what ``abiguard check`` says."""
    out = fl.work / "baseline.json"
    out.unlink(missing_ok=True)
    t0 = time.monotonic()
    cp = fl.on("a", "fleet", "baseline", "--fleet", str(fl.fleet), "-o", str(out))
    log(f"fleet baseline (libvirt baselineHypervisorCPU over qemu+tcp) in {time.monotonic() - t0:.1f} s")
    assert cp.returncode in (0, 1), cp.stderr
    js = fl.on("a", "fleet", "baseline", "--fleet", str(fl.fleet), "--json")
    plain = fl.work / "baseline-plain.json"
    plain.unlink(missing_ok=True)
    uris = ["--libvirt", f"qemu+tcp://{IP['a']}/system", "--libvirt", f"qemu+tcp://{IP['b']}/system"]
    cp2 = fl.on("a", "baseline", str(published["a"]), str(published["b"]), *uris, "--json", "-o", str(plain))
    assert js.returncode == cp2.returncode == cp.returncode, (js.stderr, cp2.stderr)
    doc, ref = json.loads(js.stdout), json.loads(cp2.stdout)
    assert doc["contract"]["digest"] == ref["contract"]["digest"]
    assert doc["outcome"]["holds"] is ref["outcome"]["holds"] is (cp.returncode == 0)
    assert out.exists() is plain.exists() is (cp.returncode == 0)
    by_digest = {json.loads(published[h].read_text())["digest"]: h for h in ("a", "b")}
    fleet_hosts = doc["fleet"]["hosts"]
    assert sorted(n for ns in fleet_hosts.values() for n in ns) == sorted(NAME.values())
    contract_file = fl.work / "baseline-doc.json"
    contract_file.write_text(js.stdout)
    for label, rep in doc["hosts"].items():
        (h,) = [by_digest[d] for d in by_digest if d[7:19] in label]
        truth = check(contract_file, published[h])
        assert rep["accepts_incoming"] is truth, (label, rep, truth)
        # the x86 half of the invariant (issue 26): every host it was made from starts and
        # accepts it (test_pinned_vms_start_and_move holds this to real starts and moves)
        assert truth and rep["starts_with_contract"], (label, rep)
    for uri, said in doc.get("libvirt", {}).items():
        assert said["compare"] in ("identical", "superset"), (uri, said)
        assert doc["outcome"]["holds"], doc["outcome"]
    log("abiguard fleet baseline:\n" + cp.stdout)


def test_pinned_vms_start_and_move(fl, published, vms):
    """The fleet's pinned VMs run: each starts on its host, and moves live to the other
    host wherever ``abiguard check`` allows it (the hook refuses the rest up front). A VM
    pinned to the fleet baseline (a guest that reads every CPUID leaf and rdmsr 0x10a) moves
    a -> b -> a, reading the same CPUID and MSR on both hosts."""
    from abiguard.model import contract, profile

    t0 = time.monotonic()
    other = {"a": "b", "b": "a"}
    for name, (host, prof) in vms.items():
        if prof is None:
            continue
        cp = fl.lab.virsh(host, "start", name, check=False)
        assert cp.returncode == 0, f"pinned {name} does not start on {host}: {cp.stderr}"
        dest = other[host]
        allowed = check(prof, published[dest])
        cp = fl.lab.migrate(host, dest, name, "--persistent", "--undefinesource", p2p=True, check=False)
        log(f"{name} ({contract.from_profile(profile.load(str(prof))).digest[7:19]}) {host} -> {dest}: "
            f"check {'allows' if allowed else 'refuses'}, migrate rc {cp.returncode} {cp.stderr.strip()[:200]}")
        assert (cp.returncode == 0) is allowed, (name, cp.stderr)
        now = dest if allowed else host
        assert fl.lab.domstate(now, name) == "running", (name, now)
        if allowed:     # and back, so every VM ends where the other tests expect it
            fl.lab.migrate(dest, host, name, "--persistent", "--undefinesource", p2p=True)
        fl.lab.virsh(host, "destroy", name)
    log(f"pinned VMs started and moved in {time.monotonic() - t0:.1f} s")

    # the fleet baseline, pinned, read by the guest itself on both hosts
    base = fl.work / "baseline-pin.json"
    cp = fl.on("a", "fleet", "baseline", "--fleet", str(fl.fleet), "-o", str(base))
    assert cp.returncode == 0, cp.stderr
    kernel = fl.work / "guest" / "cpuid-dump.elf"
    guest = xf.FleetLab.over(fl.lab, {"a": "bookworm", "b": "trixie"}, kernel)
    name = "fl-baseline"
    t0 = time.monotonic()
    try:
        guest.define("a", name, "q35", "prepin")
        cp = cli("pin", name, "--baseline", str(base), "-c", fl.lab.uri("a"), timeout=120)
        assert cp.returncode == 0, cp.stderr
        cp = guest.start("a", name)
        assert cp.returncode == 0, f"the fleet baseline does not start on a: {cp.stderr}"
        before = guest.wait_dump("a", name, 1)
        assert before, "no CPUID dump from the guest on a"
        fl.lab.migrate("a", "b", name, "--persistent", "--undefinesource", p2p=True)
        fl.lab.virsh("b", "inject-nmi", name)
        on_b = guest.wait_dump("b", name, 2)
        assert on_b == before, xf.cpuid_diff(before, on_b or {})
        fl.lab.migrate("b", "a", name, "--persistent", "--undefinesource", p2p=True)
        fl.lab.virsh("a", "reset", name)        # one NMI per boot (CPUID_ASM): read again after a reset
        again = guest.wait_dump("a", name, 1)
        assert again == before, xf.cpuid_diff(before, again or {})
        reads = xf.guest_reads(before)
        body = json.loads(base.read_text())["contract"]["x86_64"]
        if body["features"].get("arch-capabilities") in ("require", "force"):
            assert reads == {"cpuid_7_0_edx_29": "1", "msr_0x10a": body["arch_capabilities"]}, (reads, body)
        else:
            assert reads == {"cpuid_7_0_edx_29": "0", "msr_0x10a": "gp"}, reads
        log(f"fleet baseline pinned: a -> b -> a in {time.monotonic() - t0:.1f} s, CPUID and MSR 0x10a unchanged; "
            f"the guest read {reads}, leaf 7.0 {before.get('0x7.0')}")
    finally:
        guest.cleanup(name)


# ------------------------------------------------------------------ fleet pull over ssh
@pytest.fixture
def sshd(fl: FleetLab) -> Iterator[Path]:
    """A real sshd inside host a's namespaces: its own host key, authorized_keys, port and
    config; the client's ssh config names it ``fleet-a``. Stopped by its pid."""
    need_commands("ssh", "ssh-keygen")
    need(os.path.exists("/usr/sbin/sshd"), "/usr/sbin/sshd (Debian openssh-server)")
    d = fl.work / "ssh"
    d.mkdir(exist_ok=True)
    for key in ("host", "client"):
        if not (d / key).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True,
                           timeout=30)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    (d / "known_hosts").write_text("fleet-a " + " ".join((d / "host.pub").read_text().split()[:2]) + "\n")
    (d / "sshd_config").write_text(
        f"Port {SSH_PORT}\nListenAddress {IP['a']}\nHostKey {d}/host\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel VERBOSE\n")
    (d / "ssh_config").write_text(
        f"Host fleet-a\n  HostName {IP['a']}\n  Port {SSH_PORT}\n  User root\n  IdentityFile {d}/client\n"
        f"  IdentitiesOnly yes\n  HostKeyAlias fleet-a\n  UserKnownHostsFile {d}/known_hosts\n"
        "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
        f"Host fleet-nobody\n  HostName {IP['a']}\n  Port {SSH_PORT + 1}\n  User root\n  IdentityFile {d}/client\n"
        f"  HostKeyAlias fleet-a\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n")
    made_privsep = not os.path.isdir("/run/sshd")
    if made_privsep:
        os.mkdir("/run/sshd", 0o755)       # sshd's privilege separation directory
    t0 = time.monotonic()
    runner = None
    pid = 0
    try:
        # in the foreground (-D): sshd's daemon() cannot reopen the lab's /dev/null; this
        # process (twohost.sh exec, in a session of its own) ends when sshd does
        runner = subprocess.Popen([str(fl.lab.script), "exec", "a", "/usr/sbin/sshd", "-D", "-f",
                                   str(d / "sshd_config"), "-E", str(d / "sshd.log")], env=fl.lab._env(),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        while time.monotonic() < t0 + 10 and not pid and runner.poll() is None:
            try:
                pid = int((d / "sshd.pid").read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
        assert pid, f"sshd did not start: {(d / 'sshd.log').read_text() if (d / 'sshd.log').exists() else ''}"
        log(f"sshd {pid} up in {time.monotonic() - t0:.2f} s")
        yield d
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
        if runner is not None:
            try:
                runner.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(runner.pid, signal.SIGKILL)      # the session we started for it
                runner.wait(timeout=10)
        if made_privsep:
            os.rmdir("/run/sshd")


def test_fleet_pull_over_ssh(fl, published, sshd):
    pulled = fl.work / "pulled"
    pulled.mkdir(exist_ok=True)
    t0 = time.monotonic()
    cp = fl.on("a", "fleet", "pull", "--fleet", str(pulled), "--ssh-config", str(sshd / "ssh_config"),
               "--uri", "qemu+tcp://" + IP["a"] + "/system", "--json", "fleet-a")
    log(f"fleet pull over ssh in {time.monotonic() - t0:.2f} s")
    log("abiguard fleet pull (text): " + fl.on("a", "fleet", "pull", "--fleet", str(pulled), "--ssh-config",
                                               str(sshd / "ssh_config"), "fleet-a").stdout)
    assert cp.returncode == 0, cp.stderr + (sshd / "sshd.log").read_text()
    doc = json.loads(cp.stdout)
    assert doc["schema"] == "abiguard-fleet-pull/1"
    (got,) = doc["hosts"]
    assert got["record"]["profile"] == digest_of(published["a"]) and got["record"]["name"] == "fleet-a", got
    assert (pulled / "profiles" / (digest_of(published["a"]).replace(":", "-") + ".json")).exists()
    assert "Accepted publickey" in (sshd / "sshd.log").read_text()
    # a host nobody answers for: named, exit 1, what was pulled before untouched
    before = snapshot(pulled)
    cp = fl.on("a", "fleet", "pull", "--fleet", str(pulled), "--ssh-config", str(sshd / "ssh_config"),
               "--timeout", "5", "fleet-nobody")
    assert cp.returncode == 1 and "host fleet-nobody" in cp.stderr, (cp.returncode, cp.stderr)
    assert snapshot(pulled) == before
    # a destination that is an ssh option is bad input: exit 2, ssh never run
    cp = fl.on("a", "fleet", "pull", "--fleet", str(pulled), "--", "-oProxyCommand=touch%20/tmp/x")
    assert cp.returncode == 2 and "ProxyCommand" in cp.stderr, (cp.returncode, cp.stderr)
    assert snapshot(pulled) == before


# ------------------------------------------------------------------ bad input
@pytest.fixture
def copy(fl: FleetLab, published) -> Path:
    d = Path(tempfile.mkdtemp(prefix="bad.", dir=fl.work))
    shutil.copytree(fl.fleet, d / "fleet")
    return d / "fleet"


@pytest.mark.parametrize("what", ["corrupt-record", "foreign-file", "missing-profile", "corrupt-profile"])
def test_bad_files_are_named_and_nothing_is_lost(copy, published, what):
    if what == "corrupt-record":
        bad = copy / "hosts" / "abgfl-c.json"
        bad.write_bytes(b'{"format": "abiguard-fleet-host", "ver')
    elif what == "foreign-file":
        bad = copy / "hosts" / "notes.txt"
        bad.write_text("hello\x1b[31m\n")
    elif what == "missing-profile":
        rec = json.loads((copy / "hosts" / f"{NAME['a']}.json").read_text())
        rec.update(name="abgfl-ghost", profile="sha256:" + "0" * 64, previous=None)
        bad = copy / "hosts" / "abgfl-ghost.json"
        bad.write_text(json.dumps(rec))
    else:
        bad = copy / "profiles" / (digest_of(published["b"]).replace(":", "-") + ".json")
        data = bytearray(bad.read_bytes())
        at = data.index(b'"kernel_release"') + len(b'"kernel_release": "')
        data[at] ^= 0x01                            # one character of the kernel release
        bad.write_bytes(bytes(data))
    before = snapshot(copy)
    for sub in (("hosts",), ("matrix",), ("baseline", "--no-libvirt"), ("labels", "--no-vms")):
        cp = cli("fleet", *sub, "--fleet", str(copy))
        assert cp.returncode == 2, (what, sub, cp.returncode, cp.stderr)
        assert str(bad) in cp.stderr, (what, sub, cp.stderr)
        assert "\x1b" not in cp.stderr, "an untrusted name echoed raw"
    assert snapshot(copy) == before, f"{what}: a reader changed the fleet directory"
    # another host still publishes, and touches nothing but its own record
    cp = cli("fleet", "publish", "--fleet", str(copy), "--host", "abgfl-new", str(published["a"]))
    assert cp.returncode == 0, cp.stderr
    after = snapshot(copy)
    assert {k: v for k, v in after.items() if k != "hosts/abgfl-new.json"} == before, what


def test_two_hosts_publishing_at_once(fl, published):
    """Both hosts publish into the shared directory at the same moment, over and over: each
    record always the last one its host wrote, every profile whole, no temporaries left."""
    errors: list[str] = []
    rounds = 8

    def worker(h: str) -> None:
        for i in range(rounds):
            prof = "/var/lib/abiguard/host-profile.json"
            cp = fl.on(h, "fleet", "publish", "--fleet", str(fl.fleet), "--host", f"abgfl-race{i % 2}-{h}", prof)
            if cp.returncode != 0:
                errors.append(f"{h} round {i}: {cp.stderr}")
            cp = fl.on(h, "fleet", "publish", "--fleet", str(fl.fleet), "--host", "abgfl-shared", prof)
            if cp.returncode != 0:
                errors.append(f"{h} round {i} (shared record): {cp.stderr}")

    before = snapshot(fl.fleet)
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(h,)) for h in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log(f"2 x {2 * rounds} concurrent publishes in {time.monotonic() - t0:.1f} s")
    assert not errors, errors
    after = snapshot(fl.fleet)
    for k, v in before.items():
        if k.startswith("profiles/") or k in (f"hosts/{NAME['a']}.json", f"hosts/{NAME['b']}.json"):
            assert after.get(k) == v, f"{k} changed"
    assert not [k for k in after if os.path.basename(k).startswith(".")], "temporaries left behind"
    cp = cli("fleet", "hosts", "--fleet", str(fl.fleet), "--json")
    assert cp.returncode == 0, cp.stderr
    hosts = {h["name"]: h["profile"] for h in json.loads(cp.stdout)["hosts"]}
    for h in ("a", "b"):
        for i in range(2):
            assert hosts[f"abgfl-race{i}-{h}"] == digest_of(published[h])
    assert hosts["abgfl-shared"] in {digest_of(p) for p in published.values()}
    for i in range(2):
        for h in ("a", "b"):
            (fl.fleet / "hosts" / f"abgfl-race{i}-{h}.json").unlink()
    (fl.fleet / "hosts" / "abgfl-shared.json").unlink()


def test_unreachable_host_is_named(fl, published, vms):
    rec = fl.fleet / "hosts" / "abgfl-gone.json"
    cp = cli("fleet", "publish", "--fleet", str(fl.fleet), "--host", "abgfl-gone", "--uri",
             f"qemu+tcp://{IP['b']}:1/system", str(published["a"]))
    assert cp.returncode == 0, cp.stderr
    try:
        before = snapshot(fl.fleet)
        cp = fl.on("a", "fleet", "status", "--fleet", str(fl.fleet), "--timeout", "20", "--json")
        assert cp.returncode == 1, (cp.returncode, cp.stderr)
        assert "host abgfl-gone" in cp.stderr, cp.stderr
        doc = json.loads(cp.stdout)
        assert "error" in doc["hosts"]["abgfl-gone"] and {r["name"] for r in doc["vms"]} == set(vms)
        assert snapshot(fl.fleet) == before
    finally:
        rec.unlink()


# ------------------------------------------------------------------ OpenStack Placement
PLACEMENT_API = "/usr/bin/placement-api"      # Debian's python3-placement
PLACEMENT_PORT = 38778
#: one HTTP request, run inside host a's namespaces (where Placement listens): argv URL
#: METHOD PATH VERSION, the body on stdin; prints the status, a newline, the answer
_REQUEST = """
import sys, urllib.request, urllib.error
url, method, path, version = sys.argv[1:5]
body = sys.stdin.buffer.read() or None
req = urllib.request.Request(url + path, method=method, data=body, headers={
    "X-Auth-Token": "admin", "Accept": "application/json", "Content-Type": "application/json",
    "OpenStack-API-Version": "placement " + version})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        status, data = r.status, r.read()
except urllib.error.HTTPError as e:
    status, data = e.code, e.read()
except OSError as e:
    status, data = 0, str(e).encode()
sys.stdout.write(str(status) + chr(10) + data.decode("utf-8", "replace"))
"""


class Placement:
    """A real Placement service (Debian's python3-placement): SQLite, noauth2, listening
    inside host a's network namespace, so that ``fleet publish-placement`` run there reads
    the VMs over qemu+tcp and reaches Placement both. Requests go through that namespace."""

    def __init__(self, lab: TwoHost, url: str) -> None:
        self.lab, self.url = lab, url

    def call(self, method: str, path: str, body: object = None, version: str = "1.17") -> tuple[int, object]:
        cp = self.lab.exec("a", "/usr/bin/python3", "-c", _REQUEST, self.url, method, path, version,
                           input="" if body is None else json.dumps(body), timeout=60)
        head, _nl, data = cp.stdout.partition("\n")
        status = int(head)
        if 200 <= status < 300:
            return status, json.loads(data) if data.strip() else None
        return status, data

    def provider(self, name: str, vcpus: int = 8) -> str:
        status, rp = self.call("POST", "/resource_providers", {"name": name}, "1.20")
        assert status == 200, rp
        assert isinstance(rp, dict)
        status, got = self.call("PUT", f"/resource_providers/{rp['uuid']}/inventories",
                                {"resource_provider_generation": rp["generation"],
                                 "inventories": {"VCPU": {"total": vcpus}}})
        assert status == 200, got
        return str(rp["uuid"])

    def set_traits(self, uuid: str, traits: list[str]) -> None:
        for t in traits:
            assert self.call("PUT", f"/traits/{t}")[0] in (201, 204)
        _, have = self.call("GET", f"/resource_providers/{uuid}/traits")
        assert isinstance(have, dict)
        status, got = self.call("PUT", f"/resource_providers/{uuid}/traits",
                                {"resource_provider_generation": have["resource_provider_generation"],
                                 "traits": traits})
        assert status == 200, got

    def traits(self, uuid: str) -> set[str]:
        _, have = self.call("GET", f"/resource_providers/{uuid}/traits")
        assert isinstance(have, dict)
        return set(have["traits"])

    def candidates(self, trait: str) -> set[str] | None:
        """The providers GET /allocation_candidates offers a VCPU:1 request requiring the
        trait (None: Placement does not know the trait)."""
        status, doc = self.call("GET", f"/allocation_candidates?resources=VCPU:1&required={trait}")
        if status == 400 and "No such trait" in str(doc):
            return None
        assert status == 200 and isinstance(doc, dict), (status, doc)
        return set(doc["provider_summaries"])


@pytest.fixture(scope="module")
def placement(fl: FleetLab) -> Iterator[Placement]:
    need(os.path.exists(PLACEMENT_API), f"{PLACEMENT_API} (Debian python3-placement; packaging/setup-dev)")
    d = fl.work / "placement"
    d.mkdir()
    (d / "placement.conf").write_text(f"[api]\nauth_strategy = noauth2\n[placement_database]\n"
                                      f"connection = sqlite:///{d}/placement.db\nsync_on_startup = True\n")
    t0 = time.monotonic()
    logf = open(d / "placement.log", "wb")  # noqa: SIM115 - closed below
    # the service records its own pid (sh execs it), and is stopped by that pid
    runner = subprocess.Popen([str(fl.lab.script), "exec", "a", "env", "-i", "PATH=/usr/bin:/bin",
                               f"OS_PLACEMENT_CONFIG_DIR={d}", "sh", "-c",
                               f'echo $$ > {d}/pid; cd {d} && exec /usr/bin/python3 {PLACEMENT_API} '
                               f'--host {IP["a"]} --port {PLACEMENT_PORT}'],
                              env=fl.lab._env(), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                              start_new_session=True)
    svc = Placement(fl.lab, f"http://{IP['a']}:{PLACEMENT_PORT}")
    pid = 0
    try:
        while True:
            if not pid and (d / "pid").exists():
                pid = int((d / "pid").read_text() or 0)
            if pid and svc.call("GET", "/")[0] == 200:
                break
            assert runner.poll() is None, (d / "placement.log").read_text()[-2000:]
            assert time.monotonic() < t0 + 60, "Placement did not answer within 60 s"
            time.sleep(0.2)
        log(f"Placement (pid {pid}, in host a's namespaces) answering in {time.monotonic() - t0:.1f} s")
        yield svc
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
        try:
            runner.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)      # the session we started for it
            runner.wait(timeout=15)
        logf.close()


def test_placement_traits_are_where_check_allows(fl, published, vms, placement):
    """The fleet's contracts are the ones its VMs carry (read over qemu+tcp): Placement
    offers a flavor requiring a contract's trait exactly the hosts where check allows."""
    from abiguard.fleet import names
    from abiguard.model import contract, profile

    uuids = {h: placement.provider(NAME[h]) for h in ("a", "b")}
    outsider = placement.provider("compute-not-in-the-fleet")
    stale = names.TRAIT_PREFIX + "0" * 32
    placement.set_traits(uuids["a"], ["CUSTOM_RACK_1", stale])
    placement.set_traits(outsider, [stale])
    carried = sorted({p for _h, p in vms.values() if p is not None})
    contracts = {p: contract.from_profile(profile.load(str(p))) for p in carried}
    t0 = time.monotonic()
    cp = fl.on("a", "fleet", "publish-placement", "--fleet", str(fl.fleet), "--url", placement.url,
               "--token", "admin", "--json")
    log(f"fleet publish-placement (VMs over qemu+tcp) in {time.monotonic() - t0:.2f} s")
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)
    assert report["schema"] == "abiguard-fleet-publish-placement/1"
    assert stale in report["deleted_traits"], report
    assert set(report["contracts"]) == {names.trait(c.digest) for c in contracts.values()}, report["contracts"]
    name_of = {uuids[h]: NAME[h] for h in ("a", "b")}
    for src, c in contracts.items():
        trait = names.trait(c.digest)
        truth = {NAME[h] for h in ("a", "b") if check(src, published[h])}
        got = placement.candidates(trait)
        assert got is not None and {name_of.get(u, u) for u in got} == truth, (src, got, truth)
        log(f"GET /allocation_candidates?resources=VCPU:1&required={trait}: {sorted(truth)}")
    assert placement.traits(outsider) == set(), "a provider outside the fleet keeps no abiguard trait"
    assert "CUSTOM_RACK_1" in placement.traits(uuids["a"]), "a trait not abiguard's is left alone"
    assert placement.candidates(stale) is None, "the stale trait is gone from Placement"

    # host b is rolled back to host a's kernel and QEMU: its traits follow, the ones that no
    # longer hold are removed, and Placement still offers exactly where check allows
    moved = fl.work / "rolled-back"
    shutil.copytree(fl.fleet, moved)
    cp = cli("fleet", "publish", "--fleet", str(moved), "--host", NAME["b"], str(published["a"]))
    assert cp.returncode == 0, cp.stderr
    cp = fl.on("a", "fleet", "publish-placement", "--fleet", str(moved), "--url", placement.url, "--token", "admin")
    assert cp.returncode == 0, cp.stderr
    log("abiguard fleet publish-placement (after host b's rollback):\n" + cp.stdout)
    assert f"{NAME['b']}: +" in cp.stdout and "-1" in cp.stdout, cp.stdout
    now = {NAME["a"]: published["a"], NAME["b"]: published["a"]}
    for src, c in contracts.items():
        trait = names.trait(c.digest)
        truth = {n for n, p in now.items() if check(src, p)}
        got = placement.candidates(trait)
        assert {name_of[u] for u in got or ()} == truth, (src, got, truth)


# ------------------------------------------------------------------ the picture
def test_fleet_matrix_svg_in_a_real_browser(fl, published):
    from abiguard.fleet import render
    from helpers import png

    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    need(browser is not None, "a headless browser (Debian chromium-headless-shell; packaging/setup-dev)")
    assert browser is not None
    # the two lab hosts and three arm64 hosts of real kernels (the bundled profiles,
    # measured on arm64 machines): every state a cell can have is in the picture
    from abiguard.builtin import builtin_profiles

    mixed = fl.work / "mixed"
    shutil.copytree(fl.fleet, mixed)
    arm = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
    # (under QEMU 11.1 {6.12, 7.2} has a contract both boot and accept: 7.2 -> 6.12 is "pin first")
    for host, key in (("arm64-5-10", "5.10.0-32-arm64"), ("arm64-6-12", "6.12.117+deb13-arm64"),
                      ("arm64-7-2", "7.2.13+deb14-arm64")):
        assert cli("fleet", "publish", "--fleet", str(mixed), "--host", host, arm[key]).returncode == 0
    picture = fl.work / "matrix.svg"
    cp = cli("fleet", "matrix", "--fleet", str(mixed), "--qemu", "11.1", "--svg", str(picture), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    import xml.etree.ElementTree as ET

    root = ET.fromstring(picture.read_text())
    width, height = int(root.get("width") or 0), int(root.get("height") or 0)
    shot = fl.work / "matrix.png"
    t0 = time.monotonic()
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--force-device-scale-factor=1", f"--window-size={width},{height}",
                          f"--screenshot={shot}", picture.as_uri()],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    log(f"headless {os.path.basename(browser)} screenshot in {time.monotonic() - t0:.2f} s")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    im = png.read(str(shot))
    assert (im.width, im.height) == (width, height)

    def rgb(fill: str) -> tuple[int, int, int]:
        return int(fill[1:3], 16), int(fill[3:5], 16), int(fill[5:7], 16)

    keys = sorted(doc["groups"], key=lambda k: int(k[1:]))
    top = render.HEADER + render.LINE
    states = set()
    for i, s in enumerate(keys):
        for j, d in enumerate(keys):
            state = doc["cells"][f"{s} -> {d}"]["state"]
            states.add(state)
            x = render.LABEL_WIDTH + j * (render.CELL + render.GAP) + render.CELL // 2
            y = top + i * (render.CELL + render.GAP) + render.CELL // 2
            assert im.pixel(x, y) == rgb(render.STYLE[state][0]), (s, d, state, im.pixel(x, y))
    assert states == set(render.STYLE), states
    # the legend's four swatches are drawn in their colours, and the text is there (dark pixels)
    legend_y = top + len(keys) * (render.CELL + render.GAP) + 2 * render.LINE
    for k, (fill, _text) in enumerate(render.STYLE.values()):
        assert im.pixel(17, legend_y + (k + 1) * render.LINE - 5) == rgb(fill), k
    assert sum(1 for c in im.colours() if sum(c) < 200) > 0, "no text rendered"
