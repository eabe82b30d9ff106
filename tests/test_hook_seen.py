"""Unpinned VMs under the default policy (issue 27, abiguard.hook.seen): what the started
hook records an unpinned VM booted with is judged when it moves. A move QEMU or KVM would
fail after copying the RAM is refused before it under ``warn``; a move that loads but
changes the guest's ABI is allowed and recorded in the new stamp; ``allow`` never refuses,
``refuse`` refuses every unpinned VM. Driven through the real shim on a fake root with the
bundled real arm64 profiles (the lab's tests/test_armfleet_lab.py shows the same on real
hosts)."""
from __future__ import annotations

import os

import pytest
from lxml import etree

from abiguard.builtin import builtin_profiles
from abiguard.hook import seen
from abiguard.model import profile
from abiguard.model.names import CONTRACT_NS, STAMP_NS
from helpers.hookroot import hook_root

P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
UUID = "6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10"
K510, K61, K612, K72 = "5.10.0-32-arm64", "6.1.0-50-arm64", "6.12.117+deb13-arm64", "7.2.13+deb14-arm64"


def domain(meta: str = "", arch: str = "aarch64") -> bytes:
    return (f"<domain type='kvm'><name>vm</name><uuid>{UUID}</uuid><metadata>{meta}</metadata>"
            f"<os><type arch='{arch}' machine='virt-7.2'>hvm</type></os>"
            "<cpu mode='host-passthrough'/></domain>").encode()


def booted_on(name: str) -> bytes:
    """The live XML of an unpinned VM after the started hook's child wrote what it saw."""
    got = seen.elements(domain(), profile.load(P[name]))
    assert got is not None
    contract_xml, stamp = got
    return domain(stamp.decode() + contract_xml)


@pytest.fixture
def host(tmp_path):
    return hook_root(tmp_path, K612, timeout=60)


def test_seen_elements_are_a_record_not_a_pin():
    xml = booted_on(K72)
    root = etree.fromstring(xml)
    c = root.find(f"metadata/{{{CONTRACT_NS}}}contract")
    s = root.find(f"metadata/{{{STAMP_NS}}}stamp")
    assert c.find(f"{{{CONTRACT_NS}}}origin").get("kind") == "seen"
    assert c.get("machine") == "virt-7.2" and s.get("contract") == c.get("digest") and s.get("boot") == "pin"
    assert len(s.find(f"{{{STAMP_NS}}}stream").text.split()) > 200
    assert seen.elements(domain(arch="x86_64"), profile.load(P[K72])) is None


def test_warn_refuses_the_move_qemu_would_fail(host):
    """7.2 -> 6.12 unpinned: the stream and PSCI 1.3 6.12 cannot take, refused before RAM
    moves with abiguard's reason (the lab's sid -> trixie)."""
    cp = host("vm", "migrate", "begin", "-", xml=booted_on(K72), profile_name=K612)
    assert cp.returncode == 1 and cp.stdout == b"", cp.stderr
    line = cp.stderr.decode().strip()
    assert line.startswith("abiguard: refusing migrate of 'vm' to this host (an unpinned VM: QEMU or KVM here "
                           "would fail it after copying its RAM"), line
    assert "PSCI_VERSION" in line or "cpreg" in line, line
    log = (host.root / "var/log/abiguard/hook.log").read_text()
    assert "REFUSE unpinned, would fail" in log
    assert not (host.root / "var/lib/abiguard/pinned").exists()


def test_warn_allows_the_move_that_keeps_the_view_and_restamps(host):
    cp = host("vm", "migrate", "begin", "-", xml=booted_on(K72), profile_name=K72)
    assert cp.returncode == 0, cp.stderr
    root = etree.fromstring(cp.stdout)
    stamp = root.find(f"metadata/{{{STAMP_NS}}}stamp")
    assert stamp.get("kernel") == "7.2.13+deb14-arm64" and stamp.get("boot") is None
    assert stamp.get("abi-changed") is None
    assert root.find(f"metadata/{{{CONTRACT_NS}}}contract") is not None
    # no pins and no pinned record: the VM stays unpinned
    assert b"ABIGUARD_PINS" not in cp.stdout and not (host.root / "var/lib/abiguard/pinned").exists()
    # and the prepare that follows treats it as the unpinned VM it is
    cp2 = host("vm", "prepare", "begin", "-", xml=cp.stdout, profile_name=K72)
    assert cp2.returncode == 0, cp2.stderr


def test_widening_is_recorded_in_the_stamp(host):
    """5.10 -> 6.1: 6.1 adds registers 5.10's stream lacks (the guest's ABI widens) and cannot
    load 5.10's stream either. Under warn the move is refused (it would fail); under allow it
    goes on, and the change is written into the new stamp, where status shows it, and kept
    by the next hop. (No pair of the bundled profiles only widens: 6.1 -> 7.2 changes the
    guest's CTR_EL0, every other pair fails.)"""
    cp = host("vm", "migrate", "begin", "-", xml=booted_on(K510), profile_name=K61)
    assert cp.returncode == 1 and "would fail it after copying its RAM" in cp.stderr.decode(), cp.stderr
    allow = '[policy]\nunpinned = "allow"\n'
    cp = host("vm", "migrate", "begin", "-", xml=booted_on(K510), profile_name=K61, config=allow)
    assert cp.returncode == 0, cp.stderr
    changed = etree.fromstring(cp.stdout).find(f"metadata/{{{STAMP_NS}}}stamp").get("abi-changed")
    assert changed and changed.startswith("on 6.1.0-50-arm64: "), changed
    assert "its ABI changes on this host" in cp.stderr.decode()
    log = (host.root / "var/log/abiguard/hook.log").read_text()
    assert "the guest ABI changes" in log and "ALLOW unpinned (policy allow), would fail" in log
    again = host("vm", "migrate", "begin", "-", xml=cp.stdout, profile_name=K61, config=allow)
    assert again.returncode == 0, again.stderr
    assert etree.fromstring(again.stdout).find(f"metadata/{{{STAMP_NS}}}stamp").get("abi-changed") == changed


def test_a_guest_value_only_a_pin_keeps_changes_an_unpinned_vm(host):
    """6.1 -> 7.2, the one cross-kernel move KVM takes: 6.1's guest read the CPU's CTR_EL0
    (IDC 0), 7.2 gives its guest the stream's (IDC 1). A pinned VM keeps it (7.2 pins it);
    an unpinned one has no pin, so under warn the move goes on (nothing fails) with the
    change named and recorded in the stamp, never passed as keeping the ABI."""
    cp = host("vm", "migrate", "begin", "-", xml=booted_on(K61), profile_name=K72)
    assert cp.returncode == 0, cp.stderr
    assert b"its ABI changes on this host (on 7.2.13+deb14-arm64: CTR_EL0 (0x603000000013d801) field IDC)" \
        in cp.stderr, cp.stderr
    changed = etree.fromstring(cp.stdout).find(f"metadata/{{{STAMP_NS}}}stamp").get("abi-changed")
    assert changed == "on 7.2.13+deb14-arm64: CTR_EL0 (0x603000000013d801) field IDC", changed
    log = (host.root / "var/log/abiguard/hook.log").read_text()
    assert "the guest ABI changes" in log and "VM has 0x8444c004 as its guest read it" in log


def test_allow_never_refuses_and_refuse_always_does(host):
    cp = host("vm", "migrate", "begin", "-", xml=booted_on(K72), profile_name=K612,
              config='[policy]\nunpinned = "allow"\n')
    assert cp.returncode == 0 and b"abiguard-stamp" in cp.stdout, cp.stderr
    assert "ALLOW unpinned (policy allow), would fail" in (host.root / "var/log/abiguard/hook.log").read_text()
    cp = host("vm", "migrate", "begin", "-", xml=booted_on(K72), profile_name=K72,
              config='[policy]\nunpinned = "refuse"\n')
    assert cp.returncode == 1 and "refuses unpinned VMs" in cp.stderr.decode(), cp.stderr


def test_a_seen_vm_with_a_broken_stamp_is_judged_as_unpinned(host):
    xml = booted_on(K72).replace(b'stream-sum="', b'stream-sum="0')
    cp = host("vm", "migrate", "begin", "-", xml=xml, profile_name=K612)
    assert cp.returncode == 0 and cp.stdout == b"", cp.stderr
    assert "has no guest ABI contract; its ABI is not checked" in cp.stderr.decode()


def test_a_pinned_vm_cannot_pass_as_seen(host):
    """A VM this host allowed under its contract, arriving with a seen record instead, is
    refused like one that lost its contract (never laxer than the honest XML)."""
    rec = host.root / "var/lib/abiguard/pinned"
    rec.mkdir(parents=True)
    (rec / UUID).write_text("sha256:" + "a" * 64 + " 2026-01-01T00:00:00Z\n")
    cp = host("vm", "migrate", "begin", "-", xml=booted_on(K72), profile_name=K72)
    assert cp.returncode == 1 and "has lost it" in cp.stderr.decode(), cp.stderr


def test_started_of_an_unpinned_vm_on_a_private_root_exits_0(host):
    """The started hook never fails an unpinned VM; on a test's root it leaves no child."""
    cp = host("vm", "started", "begin", "-", xml=domain(), profile_name=K72)
    assert cp.returncode == 0 and cp.stdout == b"" and cp.stderr == b"", cp.stderr


def test_status_and_fleet_status_say_what_was_seen(host):
    """A seen VM reads as unpinned everywhere (no pin, no contract class), with where it
    booted and the move that changed its ABI."""
    from abiguard.fleet import vms

    fresh = vms.from_xml("h1", "vm", "running", booted_on(K72))
    assert fresh.contract is None and fresh.problem is None
    assert fresh.seen.startswith("booted on 7.2.13+deb14-arm64 (seen by abiguard, sha256:")
    assert fresh.seen.endswith("; guest ABI unchanged")
    moved = host("vm", "migrate", "begin", "-", xml=booted_on(K510), profile_name=K61,
                 config='[policy]\nunpinned = "allow"\n')
    assert moved.returncode == 0, moved.stderr
    after = vms.from_xml("h2", "vm", "running", moved.stdout)
    assert after.contract is None and "; its guest ABI changed on 6.1.0-50-arm64: " in after.seen, after.seen


def test_written_through_real_libvirt_and_read_back_by_the_hook():
    """What the started hook's child writes, through libvirt's own setMetadata (its test
    driver, the same virDomainObjSetMetadata as the QEMU driver), reads back from the
    migratable XML as the seen contract and stamp the destination's hook judges."""
    import libvirt

    from abiguard.xml import domain as domxml, vm

    contract_xml, stamp = seen.elements(domain(), profile.load(P[K72]))
    conn = libvirt.open("test:///default")
    try:
        dom = conn.lookupByName("test")
        seen.write_live(dom, contract_xml, stamp.decode(), 0.0)
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE).encode()
    finally:
        conn.close()
    facts = domxml.parse(xml, "test")
    sealed = vm.contract_of(facts, "test")
    assert sealed is not None and sealed.origin.kind == "seen" and sealed.digest in contract_xml
    assert vm.stamp_of(facts, sealed, "test").stream is not None


def test_a_seen_contract_is_not_one_to_pin(tmp_path):
    """abiguard pin refuses a contract of origin seen (exit 2, before asking libvirt): pinned,
    it would make the hook judge the VM as unpinned."""
    import json
    import subprocess
    import sys

    from abiguard.model import contract
    from abiguard.model.contract import Origin

    c = contract.from_profile(profile.load(P[K72]))
    c = c.replace(origin=Origin("seen", c.origin.hosts))
    path = tmp_path / "seen.json"
    path.write_text(json.dumps(c.to_json()))
    cp = subprocess.run([sys.executable, "-m", "abiguard", "pin", "vm", "--baseline", str(path), "-c", "test:///default"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2 and "origin 'seen'" in cp.stderr and "not one to pin" in cp.stderr, cp.stderr
