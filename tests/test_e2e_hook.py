"""End to end: two real libvirt hosts (tests/lab/twohost.sh), abiguard installed on both by
its own ``abiguard install`` before libvirtd starts, real ``virsh migrate --live`` and
``virsh restore`` between them.

aarch64 guests run under TCG on this x86 machine, so an arm64 host is simulated by giving
the destination the profile of a real arm64 kernel measured by the arm64 lab.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from abiguard.builtin import builtin_profiles
from abiguard.model import contract, profile
from abiguard.model.names import CONTRACT_NS
from abiguard.xml.contract import to_xml_text
from helpers.realparts import need
from lab.conftest_twohost import make_twohost_fixture
from lab.twohost import TwoHost

pytestmark = pytest.mark.lab

PY = sys.executable
lab = make_twohost_fixture(name="lab", prefix="abge", scope="module",
                           prestart=f"{PY} -m abiguard install")
ARM = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
ARM72 = ARM["7.2.13+deb14-arm64"]
ARM612 = ARM["6.12.117+deb13-arm64"]
MOVE = ("--persistent", "--undefinesource")


@pytest.fixture(scope="module", autouse=True)
def hook_interpreter_has_abiguard():
    """libvirt runs the hook with a clean environment: abiguard must be installed in the
    interpreter the hook names, not just on this test's PYTHONPATH."""
    cp = subprocess.run(["env", "-i", PY, "-I", "-c", "import abiguard, qemu.qmp"], capture_output=True,
                        text=True, timeout=30)
    need(cp.returncode == 0, f"abiguard installed in {PY} (run the tests with 'packaging/setup-dev test'): "
                             f"{cp.stderr.strip()[-200:]}")


def state(lab: TwoHost, host: str, *parts: str) -> Path:
    return lab.host_state(host).joinpath(*parts)


def set_profile(lab: TwoHost, host: str, doc: dict) -> None:
    profile.save(doc, str(state(lab, host, "abiguard-lib", "host-profile.json")))


def real_profile(lab: TwoHost, host: str) -> dict:
    return profile.load(str(state(lab, host, "abiguard-lib", "host-profile.json"))).doc


def load(path: str) -> dict:
    """A profile's JSON document, checked."""
    return profile.load(path).doc


def sealed_of(doc: dict) -> contract.Contract:
    """The contract of a VM booted with defaults on the host of this profile document."""
    return contract.from_profile(profile.Profile.from_json(doc, "profile"))


def set_policy(lab: TwoHost, host: str, unpinned: str = "warn") -> None:
    state(lab, host, "abiguard-etc", "abiguard.toml").write_text(
        f'[policy]\nunpinned = "{unpinned}"\nallow_widening = false\n')


def abiguard(lab: TwoHost, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cp = lab.exec(host, PY, "-m", "abiguard", *args, check=False, timeout=120)
    if check:
        assert cp.returncode == 0, cp.stderr
    return cp


def metadata(sealed: contract.Contract) -> str:
    """The contract as abiguard pin writes it: with its boot stamp."""
    from abiguard.xml.edit import boot_stamp

    return "<metadata>" + to_xml_text(sealed) + boot_stamp(sealed).decode() + "</metadata>"


def live_xml(lab: TwoHost, host: str, name: str) -> str:
    return lab.virsh(host, "dumpxml", name).stdout


def refused(cp: subprocess.CompletedProcess, *needles: str) -> str:
    assert cp.returncode != 0, cp.stdout
    line = [ln for ln in cp.stderr.splitlines() if "abiguard:" in ln]
    assert line, cp.stderr
    for n in needles:
        assert n in cp.stderr, cp.stderr
    return line[0]


def wait_for_daemon_refresh(lab: TwoHost, host: str, timeout: float = 60) -> None:
    """The daemon hook refreshes the profile in the background when libvirtd starts."""
    import time

    log = state(lab, host, "abiguard-log", "hook.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and "daemon start: host profile refreshed" in log.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"no profile refresh by the daemon hook on {host}: "
                         f"{log.read_text() if log.exists() else 'no log'}")


@pytest.fixture(scope="module")
def hosts(lab: TwoHost):
    for host in ("a", "b"):
        wait_for_daemon_refresh(lab, host)
        doc = real_profile(lab, host)
        assert doc["stack"]["libvirt"]["domcapabilities"]["host_model"]["model"], doc["unavailable"]
    for host in ("a", "b"):
        abiguard(lab, host, "probe", "-o", "/var/lib/abiguard/host-profile.json")
        set_policy(lab, host, "warn")
        assert (state(lab, host, "etc", "hooks", "qemu.d", "abiguard")).exists()
    return {h: real_profile(lab, h) for h in ("a", "b")}


def test_installed_by_the_projects_own_install(lab: TwoHost, hosts):
    hook = state(lab, "b", "etc", "hooks", "qemu.d", "abiguard").read_text()
    assert hook.startswith(f"#!{PY} -IS\n") and "abiguard-hook-id" in hook
    daemon = state(lab, "b", "etc", "hooks", "daemon.d", "abiguard").read_text()
    assert daemon.startswith(f"#!{PY} -I\n") and "daemon_main" in daemon
    assert hosts["b"]["host"]["machine"] == "x86_64"
    assert hosts["b"]["stack"]["libvirt"]["version"].startswith(("9.", "1"))
    assert not Path("/etc/libvirt/hooks/qemu.d/abiguard").exists(), "the real host was touched"


def test_x86_pinned_vm_migrates_and_carries_the_stamp(lab: TwoHost, hosts):
    name = "e2e-x86"
    lab.define_guest("a", "x86", name, cpu=qemu64(hosts))
    out = abiguard(lab, "a", "pin", name).stdout
    assert "pinned e2e-x86" in out and "custom qemu64" in out
    inactive = lab.virsh("a", "dumpxml", "--inactive", name).stdout
    assert "urn:abiguard:contract:1" in inactive and "machine='pc-i440fx-" in inactive
    lab.start_guest("a", name)
    try:
        cp = lab.migrate("a", "b", name, *MOVE)
        assert cp.returncode == 0
        xml = live_xml(lab, "b", name)
        assert "urn:abiguard:contract:1" in xml and "urn:abiguard:stamp:1" in xml
        assert f'profile="{hosts["b"]["digest"]}"' in xml
        assert lab.domstate("b", name) == "running"
        status = json.loads(abiguard(lab, "b", "status", "--json",
                                     "/var/lib/abiguard/host-profile.json").stdout)["domains"]
        row = [r for r in status if r["domain"] == name][0]
        assert row["contract"].startswith("sha256:") and row["running_on_profile"] == hosts["b"]["digest"]
        assert row["may_move_to"] == ["/var/lib/abiguard/host-profile.json"]
        # and back: the stamp is replaced, not duplicated
        lab.migrate("b", "a", name, *MOVE)
        xml = live_xml(lab, "a", name)
        assert xml.count("urn:abiguard:stamp:1") == 1 and f'profile="{hosts["a"]["digest"]}"' in xml
    finally:
        lab.destroy_guest("a", name)
        lab.destroy_guest("b", name)


def test_x86_refused_when_destination_lacks_a_required_feature(lab: TwoHost, hosts):
    name = "e2e-x86-feat"
    lab.define_guest("a", "x86", name, cpu=qemu64(hosts, "sse2"))
    abiguard(lab, "a", "pin", name)
    lab.start_guest("a", name)
    weaker = json.loads(json.dumps(hosts["b"]))
    weaker["stack"]["qemu"]["host_cpu_expansion"]["props"]["sse2"] = False
    weaker.pop("digest")
    set_profile(lab, "b", profile.finalize(weaker, 0.0, "b-older"))
    try:
        pid = lab.qemu_pid("a", name)
        cp = lab.migrate("a", "b", name, *MOVE, check=False)
        line = refused(cp, "abiguard: refusing migrate of 'e2e-x86-feat'", "sse2")
        assert "cannot provide it" in line
        assert lab.domstate("a", name) == "running" and lab.qemu_pid("a", name) == pid
        assert name not in lab.domains("b")
    finally:
        set_profile(lab, "b", hosts["b"])
        lab.destroy_guest("a", name)


def qemu64(hosts, *required: str) -> str:
    """qemu64 without what this machine's KVM cannot give it (on the CI machines KVM does
    not offer pni, so QEMU itself lists it as unavailable), plus required features."""
    # libvirt's own qemu64 (cpu_map) also carries svm, which this KVM does not nest
    missing = sorted(set(hosts["a"]["stack"]["qemu"]["cpu_definitions"]["qemu64"]) | {"svm"})
    feats = "".join(f"<feature policy='disable' name='{f}'/>" for f in missing)
    feats += "".join(f"<feature policy='require' name='{f}'/>" for f in required)
    return f"<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>qemu64</model>{feats}</cpu>"


def arm_guest(lab: TwoHost, host: str, name: str, sealed: dict) -> None:
    lab.define_guest(host, "aarch64", name, metadata=metadata(sealed))


def test_aarch64_compatible_then_rollback_refused_and_restore_refused(lab: TwoHost, hosts, tmp_path):
    name = "e2e-arm"
    p72 = load(ARM72)
    sealed = sealed_of(p72)
    set_profile(lab, "a", p72)          # a and b both "are" the 7.2 kernel
    set_profile(lab, "b", p72)
    try:
        arm_guest(lab, "a", name, sealed)
        lab.start_guest("a", name)
        lab.migrate("a", "b", name, *MOVE)
        xml = live_xml(lab, "b", name)
        assert f'profile="{p72["digest"]}"' in xml and "abiguard-stamp:stream" in xml
        # roll a back to 6.12: the VM (booted on 7.2) must not move there
        set_profile(lab, "a", load(ARM612))
        pid = lab.qemu_pid("b", name)
        cp = lab.migrate("b", "a", name, *MOVE, check=False)
        refused(cp, "abiguard: refusing migrate of 'e2e-arm'", "PSCI_VERSION", "PSCI 1.3")
        assert lab.domstate("b", name) == "running" and lab.qemu_pid("b", name) == pid
        # a saved image restored on the rolled-back host: refused too
        image = f"/var/tmp/abiguard-e2e-{os.getpid()}.sav"
        lab.virsh("b", "save", name, image)
        try:
            cp = lab.virsh("a", "restore", image, check=False)
            refused(cp, "abiguard: refusing restore of 'e2e-arm'", "PSCI")
            assert name not in lab.domains("a", all=False)
            set_profile(lab, "a", p72)
            lab.virsh("a", "restore", image)      # the same image on a 7.2 host: fine
            assert lab.domstate("a", name) == "running"
        finally:
            os.unlink(image)
    finally:
        set_profile(lab, "a", hosts["a"])
        set_profile(lab, "b", hosts["b"])
        for h in ("a", "b"):
            lab.destroy_guest(h, name)


def test_start_refused_where_contract_cannot_be_realised(lab: TwoHost, hosts):
    name = "e2e-arm-start"
    sealed = sealed_of(load(ARM72))
    set_profile(lab, "a", load(ARM612))
    try:
        arm_guest(lab, "a", name, sealed)
        cp = lab.virsh("a", "start", name, check=False)
        refused(cp, "abiguard: this host cannot start 'e2e-arm-start' with its contract")
        assert lab.domstate("a", name) == "shut off"
    finally:
        set_profile(lab, "a", hosts["a"])
        lab.destroy_guest("a", name)


@pytest.mark.parametrize("tamper, message", [
    (lambda x: x.replace('value="0x10003"', 'value="0x10001"', 1), "does not match its digest"),
    (lambda x: x.replace('config="psci+pmu+sve+ptrauth"', 'config="psci+rootkit"', 1), "unknown vCPU configuration"),
    (lambda x: x.replace("<abiguard:stream>", "<abiguard:stream>0x6030000000140000;rm -rf / ", 1),
     "arm64 register ids"),
])
def test_hostile_metadata_is_refused(lab: TwoHost, hosts, tamper, message):
    name = "e2e-hostile"
    p72 = load(ARM72)
    sealed = sealed_of(p72)
    set_profile(lab, "a", p72)
    set_profile(lab, "b", p72)
    try:
        lab.define_guest("a", "aarch64", name)          # unpinned, starts under policy "warn"
        lab.start_guest("a", name)
        # virsh declares the namespace and adds the prefix itself (--uri/--key)
        bad = (tamper(to_xml_text(sealed)).replace(f' xmlns:abiguard="{CONTRACT_NS}"', "", 1)
               .replace("<abiguard:", "<").replace("</abiguard:", "</"))
        lab.virsh("a", "metadata", name, "--live", "--uri", CONTRACT_NS, "--key", "abiguard",
                  "--set", bad)
        cp = lab.migrate("a", "b", name, check=False)
        refused(cp, "abiguard:", message)
        assert lab.domstate("a", name) == "running"
    finally:
        set_profile(lab, "a", hosts["a"])
        set_profile(lab, "b", hosts["b"])
        for h in ("a", "b"):
            lab.destroy_guest(h, name)


@pytest.mark.parametrize("policy", ["allow", "warn", "refuse"])
def test_unpinned_vm_follows_the_destination_policy(lab: TwoHost, hosts, policy):
    name = f"e2e-unpinned-{policy}"
    set_policy(lab, "b", policy)
    try:
        lab.define_guest("a", "x86", name, cpu=qemu64(hosts))
        lab.start_guest("a", name)
        cp = lab.migrate("a", "b", name, *MOVE, check=False)
        if policy == "refuse":
            refused(cp, "has no guest ABI contract", "abiguard pin")
            assert lab.domstate("a", name) == "running"
        else:
            assert cp.returncode == 0, cp.stderr
            assert lab.domstate("b", name) == "running"
        log = state(lab, "b", "abiguard-log", "hook.log").read_text()
        assert f"migrate {name}: " in log
    finally:
        set_policy(lab, "b", "warn")
        for h in ("a", "b"):
            lab.destroy_guest(h, name)


def test_destination_pins_travel_through_libvirt_into_qemu(lab: TwoHost, hosts):
    """A VM booted on 6.1 arrives on a 7.2 host: the hook adds the pins that keep 7.2's
    own defaults away from it on every reset (PSCI 1.1, 6.1's ID fields) as
    <qemu:commandline> environment, and libvirt really hands them to the destination
    QEMU with the preload library (a TCG guest: the library loads, KVM is not involved)."""
    name = "e2e-arm-pins"
    p61, p72 = load(ARM["6.1.0-50-arm64"]), load(ARM72)
    set_profile(lab, "a", p61)
    set_profile(lab, "b", p72)
    try:
        arm_guest(lab, "a", name, sealed_of(p61))
        lab.start_guest("a", name)
        lab.migrate("a", "b", name, *MOVE)
        xml = live_xml(lab, "b", name)
        assert "ABIGUARD_PINS" in xml and "/usr/lib/abiguard/abiguard_pin.so" in xml
        pid = lab.qemu_pid("b", name)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        pins = [e for e in environ if e.startswith(b"ABIGUARD_PINS=")]
        assert pins and b"0x6030000000140000=0x10001" in pins[0], environ
        assert b"LD_PRELOAD=/usr/lib/abiguard/abiguard_pin.so" in environ
        assert "/usr/lib/abiguard/abiguard_pin.so" in Path(f"/proc/{pid}/maps").read_text()
        status = json.loads(abiguard(lab, "b", "status", "--json").stdout)["domains"]
        row = [r for r in status if r["domain"] == name][0]
        assert "PSCI_VERSION" in json.dumps(row), row
    finally:
        set_profile(lab, "a", hosts["a"])
        set_profile(lab, "b", hosts["b"])
        for h in ("a", "b"):
            lab.destroy_guest(h, name)


def test_pin_never_turns_on_a_pmu_the_domain_turned_off(lab: TwoHost, hosts):
    """issue 24: a 2-vCPU aarch64 domain with <pmu state='off'/> and a baseline whose vCPU
    configuration has the PMU: pin refuses (exit 1), names the configuration that fits the
    domain, and leaves the definition as it was; pinned to that configuration's baseline
    it keeps the PMU off, says every change as before -> after, and QEMU really starts
    with pmu=off."""
    name = "e2e-pmu-off"
    # (placed before the reconnect test: its libvirtd restart has the daemon hook rewrite
    # host a's profile in the background, over the arm64 profile this test sets)
    p72 = load(ARM72)
    set_profile(lab, "a", p72)
    path = lab.host_state("a") / f"{name}.xml"
    xml = lab.render_guest("aarch64", name, vcpus=2)
    path.write_text(xml.replace("</os>", "</os>\n  <features><pmu state='off'/></features>", 1))
    base_pmu, base_fit = lab.host_state("a") / "pmu.json", lab.host_state("a") / "fit.json"
    try:
        lab.virsh("a", "define", str(path))
        abiguard(lab, "a", "baseline", ARM72, "-o", str(base_pmu))
        assert json.loads(base_pmu.read_text())["contract"]["aarch64"]["config"] == "psci+pmu+sve+ptrauth"
        before = lab.virsh("a", "dumpxml", "--inactive", name).stdout
        cp = abiguard(lab, "a", "pin", name, "--baseline", str(base_pmu), check=False)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert "the domain defines PMU off and the contract's vCPU configuration psci+pmu+sve+ptrauth has PMU on" \
            in cp.stderr and "abiguard baseline --config psci+sve+ptrauth" in cp.stderr, cp.stderr
        assert lab.virsh("a", "dumpxml", "--inactive", name).stdout == before          # nothing changed
        abiguard(lab, "a", "baseline", ARM72, "--config", "psci+sve+ptrauth", "-o", str(base_fit))
        out = abiguard(lab, "a", "pin", name, "--baseline", str(base_fit)).stdout
        assert "pinned: PMU: off (as the domain defines it)" in out, out
        assert "pinned: SVE: not defined (QEMU's default) -> on" in out, out
        after = lab.virsh("a", "dumpxml", "--inactive", name).stdout
        assert "<pmu state='off'/>" in after and "<vcpu placement='static'>2</vcpu>" in after, after
        lab.start_guest("a", name)
        cmdline = Path(f"/proc/{lab.qemu_pid('a', name)}/cmdline").read_bytes().split(b"\0")
        cpu = cmdline[cmdline.index(b"-cpu") + 1].decode()
        assert "pmu=off" in cpu, cmdline
    finally:
        set_profile(lab, "a", hosts["a"])
        lab.destroy_guest("a", name)


def test_reconnect_with_a_broken_install_keeps_running_vms(lab: TwoHost, hosts):
    """libvirt kills a running VM whose `reconnect` hook fails: with abiguard's package
    gone (or half-upgraded), a libvirtd restart must leave every VM running under the same
    QEMU, and what abiguard judges (an incoming migration) refuses with one line."""
    from abiguard import install

    name, other = "e2e-reconnect", "e2e-reconnect-in"
    hook = state(lab, "a", "etc", "hooks", "qemu.d", "abiguard")
    good = hook.read_text()
    for h, n in (("a", name), ("b", other)):
        lab.define_guest(h, "x86", n, cpu=qemu64(hosts))
        abiguard(lab, h, "pin", n)
        lab.start_guest(h, n)
    try:
        pid = lab.qemu_pid("a", name)
        # the shim as install writes it, for a package directory that is gone
        hook.write_text(install.render("qemu", PY, "/nonexistent/abiguard-removed"))
        lab.restart("a")                      # libvirtd reconnects to the running QEMU
        assert lab.domstate("a", name) == "running" and lab.qemu_pid("a", name) == pid
        moving = lab.qemu_pid("b", other)
        cp = lab.migrate("b", "a", other, *MOVE, check=False)
        refused(cp, "abiguard: cannot load abiguard", "reinstall abiguard")
        assert lab.domstate("b", other) == "running" and lab.qemu_pid("b", other) == moving
    finally:
        hook.write_text(good)
        lab.restart("a")
        lab.destroy_guest("a", name)
        lab.destroy_guest("b", other)

