"""The hook never harms a VM it does not judge, never says yes to what it cannot honour,
and gives a reason for every no. One test per defect the hostile-input campaign found
(issue 11), each driving the real shim as libvirt runs it or the reader it relies on.

Every allowed output is re-parsed with lxml (libxml2, what libvirt parses with) and its
<qemu:env> read the way libvirt reads them (every commandline's env, the last of a name
winning): the pins QEMU would get are the pins the plan asked for.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from lxml import etree

from abiguard import install
from abiguard.builtin import builtin_profiles
from abiguard.errors import InputError
from abiguard.hook import protocol
from abiguard.model import contract, profile
from abiguard.model.names import QEMU_NS
from abiguard.model.stamp import HopStamp
from abiguard.xml import domain as domxml
from abiguard.xml.contract import to_xml_text
from abiguard.xml.edit import boot_stamp
from helpers.hookroot import hook_root
from helpers.idc import on_idc_cpu
from helpers.invalid import invalid

P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
UUID = "6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10"
K61, K612, K72 = "6.1.0-50-arm64", "6.12.117+deb13-arm64", "7.2.13+deb14-arm64"


def sealed(name: str, config: str | None = None) -> contract.Contract:
    """A host's contract; 6.1's as on a CPU with CTR_EL0.IDC set (helpers.idc), so that it
    can move to 7.2 with pins"""
    c = contract.from_profile(profile.load(P[name]), config)
    return on_idc_cpu(c) if name == K61 else c


def pinned(c: contract.Contract) -> str:
    return to_xml_text(c) + boot_stamp(c).decode()


def domain(meta: str = "", extra: str = "", head: str = "", arch: str = "aarch64", machine: str = "virt") -> bytes:
    return (f"<domain type='kvm'{head}><name>vm</name><uuid>{UUID}</uuid><metadata>{meta}</metadata>"
            f"<os><type arch='{arch}' machine='{machine}'>hvm</type></os>{extra}</domain>").encode()


def libvirt_env(xml: bytes) -> dict[str, str]:
    """The environment libvirt gives QEMU from this XML (qemu_domain.c: every
    ./qemu:commandline/qemu:env; vircommand.c virCommandAddEnv: a later one replaces)."""
    root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    env: dict[str, str] = {}
    for e in root.xpath("./q:commandline/q:env", namespaces={"q": QEMU_NS}):
        env[e.get("name")] = e.get("value", "")
    return env


@pytest.fixture
def host(tmp_path):
    return hook_root(tmp_path, K72, timeout=60)


def refused_once(cp: subprocess.CompletedProcess, *fragments: str) -> str:
    assert cp.returncode == 1 and cp.stdout == b"", (cp.returncode, cp.stderr[-400:])
    lines = cp.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("abiguard: ") and len(lines[0]) <= 2000, cp.stderr[-400:]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# -- harm to VMs abiguard does not judge ------------------------------------------------

#: started begin is judged only for VMs that carry abiguard's register pins (hook/started.py):
#: for every other VM it must behave as an unjudged operation
UNJUDGED = [("reconnect", "begin"), ("started", "begin"), ("stopped", "end"), ("release", "end"),
            ("start", "begin"), ("attach", "begin"), ("migrate", "end"), ("restore", "end")]


@pytest.mark.parametrize("op, sub", UNJUDGED, ids=lambda x: x)
def test_unjudged_operations_exit_0_with_10_mib_of_xml(host, op, sub):
    big = b"<domain>" + b"<x/>" * (10 * 1024 * 1024 // 4) + b"</domain>"
    cp = host("vm", op, sub, "-", xml=big)
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, b"", b"")


@pytest.mark.parametrize("op, sub", UNJUDGED, ids=lambda x: x)
def test_unjudged_operations_exit_0_without_the_package(tmp_path, op, sub):
    """a half-upgraded or removed package must not kill running VMs at libvirtd's restart"""
    shim = tmp_path / "hook"
    shim.write_text(install.render("qemu", sys.executable, str(tmp_path / "no-such-dir")))
    shim.chmod(0o755)
    cp = subprocess.run([str(shim), "vm", op, sub, "-"], input=domain(), capture_output=True, timeout=30,
                        env={"PATH": "/usr/bin:/bin"})
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, b"", b"")


def test_started_of_a_pinned_vm_without_the_package_fails_closed(tmp_path):
    """A VM whose definition carries abiguard's pins cannot be checked without abiguard: its
    start is refused (libvirt then stops QEMU); any other VM starts."""
    shim = tmp_path / "hook"
    shim.write_text(install.render("qemu", sys.executable, str(tmp_path / "no-such-dir")))
    shim.chmod(0o755)
    xml = domain().replace(b"</domain>", b"<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
                           b"<qemu:env name='ABIGUARD_PINS' value='0x6030000000140000=0x10000'/></qemu:commandline>"
                           b"</domain>")
    cp = subprocess.run([str(shim), "vm", "started", "begin", "-"], input=xml, capture_output=True, timeout=30,
                        env={"PATH": "/usr/bin:/bin"})
    refused_once(cp, "cannot load abiguard", "refusing started")


def test_judged_operation_without_the_package_fails_closed_with_one_line(tmp_path):
    shim = tmp_path / "hook"
    shim.write_text(install.render("qemu", sys.executable, str(tmp_path / "no-such-dir")))
    shim.chmod(0o755)
    cp = subprocess.run([str(shim), "vm", "migrate", "begin", "-"], input=domain(), capture_output=True,
                        timeout=30, env={"PATH": "/usr/bin:/bin"})
    refused_once(cp, "cannot load abiguard", "ModuleNotFoundError", "reinstall abiguard")


@pytest.mark.parametrize("op, sub", UNJUDGED, ids=lambda x: x)
def test_unjudged_operations_ignore_an_unreadable_profile(host, op, sub):
    p = host.root / "var/lib/abiguard/host-profile.json"
    p.write_text("{ not json")
    cp = host("vm", op, sub, "-", xml=domain(pinned(sealed(K72))), profile_name=None)
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, b"", b"")


def test_install_removes_an_earlier_abiguards_hook_bundle(tmp_path, monkeypatch):
    """abiguard install over an earlier one: its precompiled hook.bundle (nothing reads it
    any more) goes, and the qemu hook is the plain shim."""
    stale = tmp_path / "var/lib/abiguard/hook.bundle"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"abiguard-hook-bundle-3\n")
    monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))     # the preload library is not built
    done = install.install(str(tmp_path), sys.executable, probe=False)
    assert not stale.exists() and str(stale) not in done
    assert (tmp_path / "etc/libvirt/hooks/qemu.d/abiguard").read_text() == install.render("qemu", sys.executable)


def test_the_shim_judges_exactly_the_handlers():
    text = install.render("qemu", "/usr/bin/python3", "/usr/lib/python3/dist-packages")
    assert repr(tuple(sorted(protocol.JUDGED))) in text
    assert set(protocol.JUDGED) == set(protocol.HANDLERS)
    # the shims shipped in hooks/ are what install writes for the Debian layout
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for kind in ("qemu", "daemon"):
        with open(os.path.join(repo, "hooks", kind)) as f:
            assert f.read() == install.render(kind, "/usr/bin/python3", "/usr/lib/python3/dist-packages"), kind


# -- says yes only to what it can honour --------------------------------------------------

COMMANDLINES = {
    "self-closing": f"<qemu:commandline xmlns:qemu='{QEMU_NS}'/>",
    "empty pair": f"<qemu:commandline xmlns:qemu='{QEMU_NS}'></qemu:commandline>",
    "with an arg": f"<qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:arg value='-S'/></qemu:commandline>",
    "default namespace": f"<commandline xmlns='{QEMU_NS}'><arg value='-S'/></commandline>",
    "other prefix": f"<q:commandline xmlns:q='{QEMU_NS}'>\n  <q:env name='OTHER' value='1'/>\n</q:commandline>",
    "our env last, self-closing": (f"<qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:env name='ABIGUARD_PINS' "
                                   "value='0x6030000000140000=0x10000'/></qemu:commandline>"),
    "two commandlines": (f"<qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:env name='ABIGUARD_PINS' value='x'/>"
                         f"</qemu:commandline><qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:env "
                         "name='ABIGUARD_PINS' value='0x6030000000140000=0x10000'/></qemu:commandline>"),
}


@pytest.mark.parametrize("shape", sorted(COMMANDLINES))
def test_pins_land_inside_every_shape_of_commandline(host, shape):
    """6.1's contract arriving on 7.2 needs pins: QEMU gets exactly the planned ones, on
    every hop (each output is the next input)."""
    xml = domain(pinned(sealed(K61, "psci")), extra=COMMANDLINES[shape], head=f" xmlns:qemu='{QEMU_NS}'")
    want = ("0x603000000013c028=0x10305006,0x603000000013c039=0x1010211122,0x6030000000140000=0x10001")
    for hop in range(3):
        cp = host("vm", "migrate", "begin", "-", xml=xml)
        assert cp.returncode == 0, cp.stderr
        env = libvirt_env(cp.stdout)
        assert env["ABIGUARD_PINS"] == want and env["LD_PRELOAD"] == "/usr/lib/abiguard/abiguard_pin.so", (hop, env)
        assert cp.stdout.count(b"ABIGUARD_PINS") == 1 and cp.stdout.count(b"LD_PRELOAD") == 1
        if "OTHER" in COMMANDLINES[shape]:
            assert env["OTHER"] == "1"
        xml = cp.stdout


def test_a_missing_stamp_is_not_the_favourable_case(host):
    """A VM booted on 6.1 that ran on 7.2 carries 7.2's stream; without its stamp the
    rollback must not be judged with the contract's (6.1's) stream."""
    c = sealed(K61, "psci")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)))
    assert cp.returncode == 0, cp.stderr
    stamped = cp.stdout
    refused_once(host("vm", "migrate", "begin", "-", xml=stamped, profile_name=K61), "destination does not list it")
    f = domxml.parse(stamped)
    span = f.stamp_spans[0]
    no_stamp = stamped[:span.start] + stamped[span.end:]
    refused_once(host("vm", "migrate", "begin", "-", xml=no_stamp, profile_name=K61), "no hop stamp")
    # its stream replaced by the contract's: the checksum says so
    el = HopStamp.from_element(f.stamp)
    forged = HopStamp(dict(el.attrs), c.body.stream).to_xml()
    refused_once(host("vm", "migrate", "begin", "-", xml=stamped[:span.start] + forged + stamped[span.end:],
                      profile_name=K61), "does not match its checksum")


def test_x86_stamps_are_checked(host):
    body = {"cpu_model": "Skylake-Client", "pv_features": None, "arch_capabilities": "0x0", "features": {}}
    c = contract.seal_json({"arch": "x86_64", "machine_type": None, "origin": {"kind": "profile", "hosts": []},
                            "x86_64": body})
    other = HopStamp.made({"nonce": "00", "at": "2026-12-01T00:00:00Z"}, "sha256:" + "1" * 64, None).to_xml()
    xml = domain(to_xml_text(c) + other.decode(), arch="x86_64", machine="pc",
                 extra="<cpu mode='custom'><model>Skylake-Client</model></cpu>")
    refused_once(host("vm", "migrate", "begin", "-", xml=xml), "belongs to another contract")


def test_racing_refreshes_never_leave_a_view_of_the_other_profile(tmp_path):
    """Writer A's JSON, writer B's JSON and view, then writer A's (late) view: the view
    on disk is A's profile, the JSON B's; the hook must read B."""
    path = str(tmp_path / "host-profile.json")
    a, b = profile.load(P[K61]).doc, profile.load(P[K72]).doc
    profile.save(a, path)
    view_a = (tmp_path / "host-profile.json.hookview").read_bytes()
    profile.save(b, path)
    (tmp_path / "host-profile.json.hookview").write_bytes(view_a)
    assert profile.load_for_hook(path).digest == b["digest"]


def test_config_is_read_whole(host):
    filler = "".join(f"# filler line {i:05d} that makes the file long\n" for i in range(2000))
    assert len(filler) > 64 * 1024
    cp = host("vm", "migrate", "begin", "-", xml=domain(), config=filler + '[policy]\nunpinned = "refuse"\n')
    refused_once(cp, "refuses unpinned VMs")
    cp = host("vm", "migrate", "begin", "-", xml=domain(), config="#" * (2 * 1024 * 1024) + "\n")
    refused_once(cp, "larger than", "abiguard.toml")


# -- output that is broken, or refusals without a reason ------------------------------------

def test_self_closing_elements_before_an_end_tag_keep_the_parent(host):
    meta = pinned(sealed(K72)).replace("</abiguard-stamp:stream></abiguard-stamp:stamp>", "x")  # invalid on purpose
    stamp = HopStamp.made({"nonce": "00"}, "sha256:" + "0" * 64, None).to_xml().decode()
    xml = domain(to_xml_text(sealed(K72)) + stamp)
    f = domxml.parse(xml)
    out = domxml.with_stamp(xml, f, b"<s/>")
    etree.fromstring(out)                      # still well-formed
    assert out.count(b"</metadata>") == 1 and b"<s/></metadata>" in out
    assert meta  # the stamp above sat directly before </metadata>


@pytest.mark.parametrize("data, grep", [
    ("<domain/>".encode("utf-16"), "not UTF-8"),
    (b'<?xml version="1.0" encoding="ISO-8859-1"?><domain><name>x</name></domain>', "declares encoding"),
    (b"<domain>" + b"<a>" * 300 + b"</a>" * 300 + b"</domain>", "nested deeper than 256"),
    (b"<domain/>", "no </domain> end tag"),
    (b"<domain><metadata/><metadata/></domain>", "more than one <metadata>"),
])
def test_xml_libvirt_never_sends_is_refused(data, grep):
    invalid(domxml.parse, data, error=InputError, grep=grep)


def test_namespace_uris_are_compared_whole():
    foreign = "<x:stamp xmlns:x='urn:abiguard:stamp:1}other'/>"
    xml = domain(foreign)
    f = domxml.parse(xml)
    assert f.stamp is None and f.stamp_spans == []
    assert foreign.encode() in domxml.with_stamp(xml, f, b"<s/>")


def test_the_first_os_and_cpu_count_as_for_libvirt():
    xml = (b"<domain><name>a</name><name>b</name><os><type arch='aarch64' machine='virt-7.2'>hvm</type></os>"
           b"<os><type arch='x86_64' machine='pc'>hvm</type></os><cpu mode='host-passthrough'/>"
           b"<cpu mode='custom'><model>qemu64</model></cpu></domain>")
    f = domxml.parse(xml)
    assert (f.name, f.arch, f.machine, f.cpu_mode, f.cpu_model) == ("a", "aarch64", "virt-7.2",
                                                                     "host-passthrough", None)


@pytest.mark.parametrize("inside", ["<!-- x -->", "<?pi x?>", "<![CDATA[0x1]]>"])
def test_comments_inside_our_elements_are_refused_by_every_reader(inside):
    text = pinned(sealed(K72))
    bad = text.replace("<abiguard:stream>", "<abiguard:stream>" + inside, 1)
    invalid(domxml.parse, domain(bad), error=InputError, grep="not allowed inside abiguard's elements")
    # a comment elsewhere is libvirt's business
    assert domxml.parse(domain(text, extra="<!-- fine -->")).contract is not None


def test_refusals_never_echo_attacker_strings_raw(host):
    c = sealed(K72)
    forged = "sha256:x&#10;abiguard: allowed by the admin"
    stamp = (f'<abiguard-stamp:stamp xmlns:abiguard-stamp="urn:abiguard:stamp:1" contract="{forged}" '
             f'x="{"A" * 200_000}"/>')
    line = refused_once(host("vm", "migrate", "begin", "-", xml=domain(to_xml_text(c) + stamp)),
                        "belongs to another contract")
    assert "\\x0aabiguard: allowed" in line and len(line) < 400


@pytest.mark.parametrize("mutate, grep", [
    # a value for a register that is guest state, not guest ABI (SCTLR_EL1)
    (lambda t: t.replace('<abiguard:reg id="0x6020000000110000"', '<abiguard:reg id="0x603000000013c080" '
                         'value="0x1"/><abiguard:reg id="0x6020000000110000"', 1), "guest-state registers"),
    (lambda t: t.replace(' config="psci+pmu+sve+ptrauth"', "", 1), "unknown vCPU configuration"),
])
def test_bad_contracts_refuse_with_a_reason_not_an_internal_error(host, mutate, grep):
    text = to_xml_text(sealed(K72))
    refused_once(host("vm", "migrate", "begin", "-", xml=domain(mutate(text))), grep)


def test_a_profile_with_a_valid_digest_and_a_broken_inside_refuses_naming_the_member(host):
    doc = profile.load(P[K72]).doc
    doc["kvm"]["aarch64"]["configs"]["psci"]["registers"] = ["not", "a", "map"]
    doc["digest"] = profile.digest_of(doc)
    (host.root / "var/lib/abiguard/host-profile.json").write_text(profile.render(doc))
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(sealed(K72))), profile_name=None)
    refused_once(cp, "member 'kvm.aarch64.configs.psci.registers' must be a JSON object")


def test_a_damaged_hook_view_is_never_believed(host):
    host("vm", "start", "begin", "-")  # writes the profile and its view
    view = host.root / "var/lib/abiguard/host-profile.json.hookview"
    data = view.read_bytes()
    for damaged in (b"\x00" * 8, data[:len(data) // 2], data[:40] + b"\xff" * 8 + data[48:]):
        view.write_bytes(damaged)
        cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(sealed(K72))), profile_name=None)
        assert cp.returncode == 0, cp.stderr          # read from the JSON instead


def test_json_nested_100k_deep_is_an_input_error(tmp_path):
    from helpers.run import abiguard

    f = tmp_path / "deep.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    cp = abiguard("check", "--from", str(f), "--to", P[K72])
    assert cp.returncode == 2 and cp.stderr.startswith(f"abiguard: {f}: nested too deeply"), cp.stderr[-300:]


def test_deep_nesting_is_refused_in_linear_time():
    for levels in (20_000, 32_000):
        xml = b"<domain>" + b"<a>" * levels + b"</a>" * levels + b"</domain>"
        t0 = time.monotonic()
        invalid(domxml.parse, xml, error=InputError, grep="nested deeper than 256")
        assert time.monotonic() - t0 < 0.5


def test_parsing_is_bounded_by_the_deadline():
    xml = domain(pinned(sealed(K72)), extra="<x/>" * 500_000)
    invalid(domxml.parse, xml, deadline=time.monotonic() - 1, error=InputError, grep="took too long")
    assert domxml.parse(xml, deadline=time.monotonic() + 30).contract is not None


def test_hook_output_re_parses_on_every_hop_through_the_fleet(host):
    """the seed case of the lab, at the hook: a 6.1 VM to 7.2, to 7.2 again, back to 6.1
    (refused: registers 6.1 does not list), and each allowed output is well-formed XML"""
    xml = domain(pinned(sealed(K61, "psci")))
    for dest in (K72, K72):
        cp = host("vm", "migrate", "begin", "-", xml=xml, profile_name=dest)
        assert cp.returncode == 0, cp.stderr
        etree.fromstring(cp.stdout)
        xml = cp.stdout
    refused_once(host("vm", "migrate", "begin", "-", xml=xml, profile_name=K61), "destination does not list it")


def test_a_plain_start_with_another_hosts_stamp_is_refused(host):
    """the definition moved to a host without a migration: its stamp would lie about the
    stream the VM carries after this start"""
    c = sealed(K72, "psci")
    # another host's stream: one register more than this host's (a stamp that claims fewer
    # registers than its contract is refused before this, issue 22)
    other = tuple(sorted(set(c.body.stream) | {0x6030000000160004}))
    stamp = HopStamp.made({"nonce": "00", "kernel": "other-kernel"}, c.digest, other).to_xml()
    refused_once(host("vm", "prepare", "begin", "-", xml=domain(to_xml_text(c) + stamp.decode())),
                 "carries the hop stamp of another host", "abiguard pin vm")
    assert host("vm", "prepare", "begin", "-", xml=domain(pinned(c))).returncode == 0


def test_cli_exits_2_on_a_profile_with_a_valid_digest_and_broken_inside(tmp_path):
    from helpers.run import abiguard

    doc = profile.load(P[K72]).doc
    doc["kvm"]["aarch64"]["writable_masks"] = {"ID_AA64PFR0_EL1": 12}
    doc["digest"] = profile.digest_of(doc)
    f = tmp_path / "p.json"
    f.write_text(profile.render(doc))
    for args in (["check", "--from", str(f), "--to", P[K72]], ["diff", str(f), P[K72]], ["baseline", str(f)]):
        cp = abiguard(*args)
        assert cp.returncode == 2 and "member 'kvm.aarch64.writable_masks.ID_AA64PFR0_EL1'" in cp.stderr, args
        assert "Traceback" not in cp.stderr


def test_the_domain_name_from_argv_is_never_echoed_raw(host):
    cp = host("vm\nabiguard: forged", "migrate", "begin", "-", xml=domain(), config='[policy]\nunpinned = "refuse"\n')
    refused_once(cp, "vm\\x0aabiguard: forged")


@pytest.mark.skipif(shutil.which("true") is None, reason="needs coreutils")
def test_protocol_run_is_the_shim_in_process():
    """The fuzz suite drives protocol.run; it must answer as the shim does."""
    rc, out, err = protocol.run(["hook", "vm", "migrate", "begin", "-"], b"<domain", time.monotonic() + 10)
    assert rc == 1 and out == b"" and err.startswith("abiguard: domain XML of 'vm': not well-formed")
