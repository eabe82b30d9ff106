"""The hook as libvirt runs it (a subprocess: argv, XML on stdin, exit code, stderr), on a
fake root (ABIGUARD_ROOT) holding a real arm64 kernel's profile."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from abiguard.builtin import builtin_profiles
from abiguard.model import contract, profile
from abiguard.xml import domain as domxml
from abiguard.xml.contract import to_xml_text
from abiguard.xml.edit import boot_stamp
from helpers.hookroot import hook_root
from helpers.idc import on_idc_cpu

P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
UUID = "6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10"


def pinned(c: contract.Contract) -> str:
    """A contract as ``abiguard pin`` writes it into <metadata>: with its boot stamp."""
    return to_xml_text(c) + boot_stamp(c).decode()


def without_stamps(xml: bytes) -> bytes:
    """The XML with abiguard's stamps cut out: what the hook must leave byte for byte."""
    out, pos = b"", 0
    for span in domxml.parse(xml).stamp_spans:
        out += xml[pos:span.start]
        pos = span.end
    return out + xml[pos:]


def domain(meta: str = "", machine: str = "virt") -> bytes:
    return (f"<domain type='kvm'><name>vm</name><uuid>{UUID}</uuid><metadata>{meta}</metadata>"
            f"<os><type arch='aarch64' machine='{machine}'>hvm</type></os></domain>").encode()


@pytest.fixture
def host(tmp_path):
    return hook_root(tmp_path, "7.2.13+deb14-arm64", timeout=30)


def sealed(name: str, config: str | None = None) -> contract.Contract:
    """A host's contract; 6.1's as on a CPU with CTR_EL0.IDC set (helpers.idc), so that it
    can move to 7.2 with pins"""
    c = contract.from_profile(profile.load(P[name]), config)
    return on_idc_cpu(c) if name.startswith("6.1.") else c


def test_other_operations_exit_at_once(host):
    for op in (["vm", "start", "begin", "-"], ["vm", "stopped", "end", "-"], ["vm", "release", "end", "-"]):
        cp = host(*op, xml=domain())
        assert (cp.returncode, cp.stdout, cp.stderr) == (0, b"", b"")


def test_a_judged_run_does_not_import_typing(host):
    """typing (and the re, enum, functools and contextlib it imports) costs a judged run
    about 0.6x a bare ``python3 -c pass`` and takes it past its 2x budget (README, Speed): the
    modules a judged run imports say ``TYPE_CHECKING = False`` instead of importing typing."""
    pins = domain(pinned(sealed("6.1.0-50-arm64", "psci")))
    for op, xml in (("migrate", pins), ("restore", domain()), ("prepare", domain(pinned(sealed("7.2.13+deb14-arm64")))),
                    ("started", pins)):
        assert host("vm", op, "begin", "-", xml=xml).returncode in (0, 1)     # the profile saved, the config cached
        shim = [str(host.root / "hook"), "vm", op, "begin", "-"]
        cp = subprocess.run([sys.executable, "-X", "importtime", "-IS", *shim], input=xml, capture_output=True,
                            timeout=30, env={"ABIGUARD_ROOT": str(host.root), "PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        imported = [line.rpartition("|")[2].strip() for line in cp.stderr.decode().splitlines()
                    if line.startswith("import time:")]
        assert "abiguard.hook.protocol" in imported, cp.stderr[-500:]
        # -X importtime lists a module after the ones it imported: the first abiguard module
        # after typing is the one that imported it
        assert "typing" not in imported, f"{op}: typing imported, then {imported[imported.index('typing'):][:12]}"


def test_allow_prints_the_same_xml_plus_a_stamp(host):
    c = sealed("7.2.13+deb14-arm64")
    xml = domain(pinned(c))
    cp = host("vm", "migrate", "begin", "-", xml=xml)
    assert cp.returncode == 0, cp.stderr
    f = domxml.parse(cp.stdout)
    assert len(f.stamp_spans) == 1
    assert without_stamps(cp.stdout) == without_stamps(xml)
    assert f.stamp.get("contract") == c.digest
    assert (host.root / "var/lib/abiguard/incoming" / UUID).exists()


def test_refusal_is_one_line_naming_register_and_values(host):
    xml = domain(pinned(sealed("7.2.13+deb14-arm64")))
    cp = host("vm", "migrate", "begin", "-", xml=xml, profile_name="6.12.117+deb13-arm64")
    assert cp.returncode == 1 and cp.stdout == b""
    line = cp.stderr.decode().strip()
    assert "\n" not in line
    assert line.startswith("abiguard: refusing migrate of 'vm' to this host: PSCI_VERSION (0x6030000000140000): "
                           "VM has PSCI 1.3, destination accepts 0.2, 1.0, 1.1")
    # the other reason, named by its register (engine/report.py)
    assert line.endswith("(+1 more reason, for VENDOR_HYP_BMAP_2 (0x6030000000160003): abiguard check)"), line


def test_restore_uses_the_same_rules(host):
    xml = domain(pinned(sealed("7.2.13+deb14-arm64")))
    cp = host("vm", "restore", "begin", "-", xml=xml, profile_name="6.12.117+deb13-arm64")
    assert cp.returncode == 1 and b"refusing restore of 'vm'" in cp.stderr


def test_stamp_of_the_last_hop_gives_the_stream(host):
    """A VM booted on 6.1 that then ran on 7.2 carries 7.2's stream: rolling it back to 6.1
    now fails on what 7.2 added, which the contract alone would not show."""
    c = sealed("6.1.0-50-arm64", "psci")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)))
    assert cp.returncode == 0, cp.stderr
    stamped = cp.stdout
    cp = host("vm", "migrate", "begin", "-", xml=stamped, profile_name="6.1.0-50-arm64")
    assert cp.returncode == 1
    assert b"VENDOR_HYP_BMAP_2" in cp.stderr or b"DEMUX_CCSIDR" in cp.stderr


def test_machine_type_must_match_the_contract(host):
    c = sealed("7.2.13+deb14-arm64").replace(machine_type="virt-7.2")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c), machine="virt-8.0"))
    assert cp.returncode == 1 and b"runs machine type virt-8.0 but its contract pins virt-7.2" in cp.stderr


@pytest.mark.parametrize("policy, rc, stderr", [
    ("allow", 0, b""), ("warn", 0, b"abiguard: warning: VM 'vm' has no guest ABI contract"),
    ("refuse", 1, b"abiguard: VM 'vm' has no guest ABI contract and this host refuses unpinned VMs"),
])
def test_unpinned_policy(host, policy, rc, stderr):
    cp = host("vm", "migrate", "begin", "-", xml=domain(), config=f'[policy]\nunpinned = "{policy}"\n')
    assert cp.returncode == rc and cp.stderr.startswith(stderr)


def test_config_errors_fail_closed_with_the_file_named(host):
    cp = host("vm", "migrate", "begin", "-", xml=domain(), config="[policy]\nunpinned = 'sometimes'\n")
    assert cp.returncode == 1
    assert cp.stderr.decode().startswith(f"abiguard: {host.root}/etc/abiguard/abiguard.toml: [policy] unpinned")


def test_missing_profile_fails_closed(host):
    c = sealed("7.2.13+deb14-arm64")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)), profile_name=None)
    assert cp.returncode == 1 and b"cannot read" in cp.stderr and b"abiguard probe -o" in cp.stderr


def test_internal_error_fails_closed_and_logs_the_traceback(host):
    os.makedirs(host.root / "var/lib/abiguard", exist_ok=True)
    (host.root / "var/lib/abiguard/host-profile.json").write_text("{}")
    (host.root / "var/lib/abiguard/host-profile.json.hookview").write_bytes(b"\x00garbage")
    c = sealed("7.2.13+deb14-arm64")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)), profile_name=None)
    assert cp.returncode == 1 and cp.stderr.startswith(b"abiguard: ")


def test_prepare_refuses_a_start_the_host_cannot_realise(host):
    xml = domain(pinned(sealed("7.2.13+deb14-arm64")))
    cp = host("vm", "prepare", "begin", "-", xml=xml, profile_name="6.12.117+deb13-arm64")
    assert cp.returncode == 1 and b"this host cannot start 'vm' with its contract" in cp.stderr
    assert host("vm", "prepare", "begin", "-", xml=xml).returncode == 0


def test_prepare_after_migrate_begin_is_incoming(host):
    """prepare runs for incoming migrations too; with the marker and stamp nonce left by
    migrate begin it does not demand that this host realise the contract by itself."""
    c = sealed("6.1.0-50-arm64", "psci")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)))
    assert cp.returncode == 0
    assert host("vm", "prepare", "begin", "-", xml=cp.stdout).returncode == 0
    # the marker is used up: a later plain start of the same XML is judged as a start
    later = host("vm", "prepare", "begin", "-", xml=cp.stdout)
    assert later.returncode == 1 and b"cannot start" in later.stderr


def test_stdin_is_bounded(host):
    cp = host("vm", "migrate", "begin", "-", xml=b"<domain>" + b" " * (5 * 1024 * 1024) + b"</domain>")
    assert cp.returncode == 1 and b"larger than" in cp.stderr


def test_concurrent_refresh_never_shows_a_torn_profile(tmp_path):
    """A refresh replaces the JSON and its hook view atomically; a reader racing it gets
    one whole profile or the other, from the view or from validated JSON."""
    import threading

    path = str(tmp_path / "host-profile.json")
    docs = [profile.load(P["6.1.0-50-arm64"]).doc, profile.load(P["7.2.13+deb14-arm64"]).doc]
    digests = {d["digest"] for d in docs}
    profile.save(docs[0], path)
    stop = threading.Event()

    def refresh() -> None:
        i = 0
        while not stop.is_set():
            profile.save(docs[i % 2], path)
            i += 1

    writer = threading.Thread(target=refresh)
    writer.start()
    try:
        seen = [profile.load_for_hook(path).digest for _ in range(300)]
    finally:
        stop.set()
        writer.join()
    assert set(seen) <= digests and len(seen) == 300


def test_x86_cpu_model_must_match_the_contract(host):
    body = {"cpu_model": "Skylake-Client", "pv_features": None, "arch_capabilities": "0x0", "features": {}}
    c = contract.seal_json({"arch": "x86_64", "machine_type": None,
                            "origin": {"kind": "profile", "hosts": []}, "x86_64": body})
    xml = (f"<domain type='kvm'><name>vm</name><uuid>{UUID}</uuid><metadata>{pinned(c)}</metadata>"
           "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
           "<cpu mode='custom'><model>qemu64</model></cpu></domain>").encode()
    cp = host("vm", "migrate", "begin", "-", xml=xml)
    assert cp.returncode == 1 and b"runs CPU model qemu64 but its contract pins Skylake-Client" in cp.stderr


# -- register enforcement (abiguard.enforce, abiguard_pin.so) ---------------------------

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def test_incoming_adds_the_pins_the_destination_needs(host):
    """6.1's contract arriving on 7.2: PSCI 1.1 pinned so every reset here keeps it"""
    import xml.etree.ElementTree as ET

    c = sealed("6.1.0-50-arm64", "psci")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)))
    assert cp.returncode == 0, cp.stderr
    env = {e.get("name"): e.get("value") for e in ET.fromstring(cp.stdout).iter(f"{{{QEMU_NS}}}env")}
    assert env["LD_PRELOAD"] == "/usr/lib/abiguard/abiguard_pin.so"
    # PSCI 1.1 (7.2 defaults to 1.3), and 6.1's ID_AA64DFR0/ID_AA64MMFR1 fields, all inside
    # 7.2's writable masks and safe by the kernel's rule
    assert env["ABIGUARD_PINS"] == ("0x603000000013c028=0x10305006,0x603000000013c039=0x1010211122,"
                                    "0x6030000000140000=0x10001")
    # the next hop from this XML replaces the values instead of adding a second set
    cp2 = host("vm", "migrate", "begin", "-", xml=cp.stdout)
    assert cp2.returncode == 0, cp2.stderr
    assert cp2.stdout.count(b"ABIGUARD_PINS") == 1


def test_incoming_refuses_without_the_library(host):
    os.unlink(host.root / "usr/lib/abiguard/abiguard_pin.so")
    c = sealed("6.1.0-50-arm64", "psci")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)))
    assert cp.returncode == 1 and b"abiguard_pin.so is missing" in cp.stderr


def test_incoming_refuses_a_foreign_ld_preload(host):
    c = sealed("6.1.0-50-arm64", "psci")
    xml = domain(pinned(c)).replace(
        b"</domain>", f"<qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:env name='LD_PRELOAD' "
                      f"value='/opt/x.so'/></qemu:commandline></domain>".encode())
    cp = host("vm", "migrate", "begin", "-", xml=xml)
    assert cp.returncode == 1 and b"LD_PRELOAD" in cp.stderr


def test_prepare_demands_the_pins_in_the_definition(host):
    """a 7.2 VM pinned to PSCI 1.1 (the fleet can roll back to 6.12) starting on 7.2"""
    doc = sealed("7.2.13+deb14-arm64", "psci").to_json()
    doc["aarch64"]["values"]["0x6030000000140000"] = "0x10001"
    c = contract.seal_json(doc)
    cp = host("vm", "prepare", "begin", "-", xml=domain(pinned(c)))
    assert cp.returncode == 1 and b"run abiguard pin vm here" in cp.stderr
    xml = domain(pinned(c)).replace(
        b"</domain>", f"<qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:env name='LD_PRELOAD' "
                      f"value='/usr/lib/abiguard/abiguard_pin.so'/><qemu:env name='ABIGUARD_PINS' "
                      f"value='0x6030000000140000=0x10001'/></qemu:commandline></domain>".encode())
    cp = host("vm", "prepare", "begin", "-", xml=xml)
    assert cp.returncode == 0, cp.stderr


def test_a_register_the_destination_adds_is_pinned_off_instead_of_refused(host):
    """A VM whose stream lacks STD_BMAP (booted where TRNG was not offered) arriving on a
    host that lists it with TRNG on: without a pin the guest would gain TRNG; the hook pins
    the register to 0 on this host and lets the VM in."""
    doc = sealed("6.1.0-50-arm64", "psci").to_json()
    body = doc["aarch64"]
    body["stream"] = [r for r in body["stream"] if r != "0x6030000000160000"]
    body["values"].pop("0x6030000000160000")
    c = contract.seal_json(doc)
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)))
    assert cp.returncode == 0, cp.stderr
    env = domxml.parse(cp.stdout).qemu_env
    assert "0x6030000000160000=0x0" in env["ABIGUARD_PINS"][0]
    os.unlink(host.root / "usr/lib/abiguard/abiguard_pin.so")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)))
    assert cp.returncode == 1 and b"abiguard_pin.so is missing" in cp.stderr
