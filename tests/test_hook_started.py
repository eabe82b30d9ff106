"""``started begin`` for VMs that carry abiguard's register pins: the preload library's record
(written into the domain's private directory, QEMU's HOME) must show the very pins the
definition names written on every vCPU, else the start is refused with one line. The
real shim on a fake root; the library's own half of this runs in the arm64 libvirt lab
(tests/test_armfleet_lab.py: AppArmor denying the library, the file missing, KVM refusing
a write)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from abiguard import install
from abiguard.preload import ENV_PINS, RECORD_NAME

PINS = "0x6030000000140000=0x10000,0x6030000000160002=0x0"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def live_xml(pins: str | None = PINS, domain_type: str = "kvm", dom_id: str | None = "7", vcpus: str = "2",
             current: str | None = None) -> bytes:
    cmd = "" if pins is None else (f"<qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:env name='LD_PRELOAD' "
                                   f"value='/usr/lib/abiguard/abiguard_pin.so'/><qemu:env name='{ENV_PINS}' "
                                   f"value='{pins}'/></qemu:commandline>")
    ident = f" id='{dom_id}'" if dom_id else ""
    cur = f" current='{current}'" if current else ""
    return (f"<domain type='{domain_type}'{ident}><name>vm</name><uuid>6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10</uuid>"
            f"<vcpu placement='static'{cur}>{vcpus}</vcpu><os><type arch='aarch64' machine='virt-7.2'>hvm</type>"
            f"</os><devices/>{cmd}</domain>").encode()


def record(pins: str = PINS, fds: tuple[int, ...] = (17, 18), pinned: int | None = None, resets: int = 2) -> str:
    n = len(pins.split(","))
    lines = [f"abiguard-pin 1 pid 4242 loaded {n}: {pins}"]
    for _ in range(resets):          # QEMU inits every vCPU again at each reset
        lines += [f"vcpu fd {fd} pinned {n if pinned is None else pinned} kept 0 of {n}" for fd in fds]
    return "\n".join(lines) + "\n"


@pytest.fixture
def host(tmp_path):
    (tmp_path / "var/lib/abiguard").mkdir(parents=True)
    shim = tmp_path / "hook"
    shim.write_text(install.render("qemu", sys.executable))
    shim.chmod(0o755)
    libdir = tmp_path / "var/lib/libvirt/qemu/domain-7-vm"
    libdir.mkdir(parents=True)

    def run(xml: bytes, rec: str | None = None) -> subprocess.CompletedProcess:
        target = libdir / RECORD_NAME
        if rec is None:
            target.unlink(missing_ok=True)
        else:
            target.write_text(rec)
        return subprocess.run([str(shim), "vm", "started", "begin", "-"], input=xml, capture_output=True,
                              timeout=60, env={"ABIGUARD_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    run.root = tmp_path
    return run


def refused(cp: subprocess.CompletedProcess, fragment: str) -> None:
    lines = cp.stderr.decode().splitlines()
    assert cp.returncode == 1 and len(lines) == 1, (cp.returncode, cp.stderr)
    assert lines[0].startswith("abiguard: refusing to run 'vm': its register pins did not take effect"), lines
    assert fragment in lines[0], lines[0]


def test_pins_written_on_every_vcpu_let_it_run(host):
    cp = host(live_xml(), record())
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, b"", b"")
    log = (host.root / "var/log/abiguard/hook.log").read_text()
    assert "started vm: ALLOW, pins in effect on 2 vCPU(s)" in log


def test_no_record_the_library_never_loaded(host):
    refused(host(live_xml(), None), "left no record: it did not load")


def test_a_record_of_other_pins_is_refused(host):
    refused(host(live_xml(), record(pins="0x6030000000140000=0x10001,0x6030000000160002=0x0")), "other pins")


def test_a_vcpu_without_every_pin_is_refused(host):
    refused(host(live_xml(), record(pinned=1)), "a vCPU has 1 of 2 pins written")


def test_fewer_vcpus_pinned_than_the_vm_has_is_refused(host):
    refused(host(live_xml(vcpus="4", current="3"), record(fds=(17, 18))), "pins written on 2 of 3 vCPU(s)")


@pytest.mark.parametrize("rec", ["", "garbage\n", "abiguard-pin 2 pid 1 loaded 2: x\n",
                                 record() + "vcpu fd 19 pinned two kept 0 of 2\n"])
def test_a_record_the_library_does_not_write_is_refused(host, rec):
    cp = host(live_xml(), rec)
    assert cp.returncode == 1 and b"did not take effect" in cp.stderr, cp.stderr


@pytest.mark.parametrize("xml", [live_xml(pins=None), live_xml(domain_type="qemu"),
                                 b"<domain><name>vm</name>not xml at all", b""])
def test_what_it_does_not_judge_starts(host, xml):
    """No pins, a TCG VM (nothing to pin), an unreadable definition: exit 0 and nothing said."""
    cp = host(xml, None)
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, b"", b""), cp.stderr


def test_a_pinned_vm_without_a_domain_id_is_refused(host):
    refused(host(live_xml(dom_id=None), record()), "left no record")


def test_two_directories_for_one_id_is_refused(host):
    os.makedirs(host.root / "var/lib/libvirt/qemu/domain-7-other")
    refused(host(live_xml(), record()), "left no record")


def test_a_shaped_register_list_must_show_in_the_record() -> None:
    """issue 25: with hide= items the library says, per vCPU, which register list QEMU got;
    a record without that line on every vCPU is refused"""
    from abiguard.hook.started import record_problem

    pins = "0x603000000013c801=0x2000023,hide=0x6020000000110003"
    head = f"abiguard-pin 1 pid 7 loaded 1: {pins}\n"
    pinned = "vcpu fd 20 pinned 1 kept 0 of 1\n"
    shaped = "vcpu fd 20 reg_list 252 of 253 hidden 1\n"
    assert record_problem(head + pinned + shaped, pins, 1) is None
    assert record_problem(head + pinned, pins, 1) == "the register list was shaped on 0 of 1 vCPU(s)"
    assert record_problem(head + pinned + "vcpu fd 20 reg_list x of 253 hidden 1\n", pins, 1) == \
        "the pinning library's record is not one it writes"
