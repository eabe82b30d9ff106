"""Issue 22: nothing in a domain XML or a cached view can make the hook laxer. Each test
drives the real hook shim (argv, XML on stdin, exit code) on a fake root, as libvirt runs
it, with the input an attacker with write access to a domain (or a damaged cache) makes."""
from __future__ import annotations

import marshal
import os

import pytest

from abiguard.builtin import builtin_profiles
from abiguard.model import contract, profile
from abiguard.model.stamp import HopStamp
from abiguard.xml.contract import to_xml_text
from abiguard.xml.edit import boot_stamp
from helpers.hookroot import hook_root

P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
UUID = "6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10"
V72, V612 = "7.2.13+deb14-arm64", "6.12.117+deb13-arm64"


def sealed(name: str, config: str | None = None) -> contract.Contract:
    return contract.from_profile(profile.load(P[name]), config)


def domain(meta: str = "", uuid: str = UUID) -> bytes:
    return (f"<domain type='kvm'><name>vm</name><uuid>{uuid}</uuid><metadata>{meta}</metadata>"
            "<os><type arch='aarch64' machine='virt'>hvm</type></os></domain>").encode()


def pinned(c: contract.Contract) -> str:
    return to_xml_text(c) + boot_stamp(c).decode()


def forged_stamp(c: contract.Contract, stream: tuple[int, ...]) -> str:
    """A stamp of ``c`` claiming ``stream``, its checksum recomputed (anyone can)."""
    return HopStamp.made({"nonce": "00" * 8, "at": "2026-01-01T00:00:00Z", "boot": "pin"}, c.digest,
                         stream).to_xml().decode()


@pytest.fixture
def host(tmp_path):
    return hook_root(tmp_path, V612, timeout=30)


WIDEN = "[policy]\nallow_widening = true\n"


# -- finding 1: a stamp's claims can only add checks ---------------------------------------

def test_an_empty_stamped_stream_does_not_open_widening_policy(host):
    """7.2 VM (PSCI 1.3) onto 6.12 (PSCI <= 1.1) with allow_widening and a stamp that
    claims an empty stream: refused, as under the default policy."""
    c = sealed(V72)
    xml = domain(to_xml_text(c) + forged_stamp(c, ()))
    for config in (WIDEN, "[policy]\n"):
        cp = host("vm", "migrate", "begin", "-", xml=xml, config=config)
        assert cp.returncode == 1, (config, cp.stderr)
        assert cp.stdout == b""


def test_a_stamp_claiming_fewer_registers_than_its_contract_is_refused(host):
    c = sealed(V72)
    stream = tuple(c.body.stream)
    psci = 0x6030000000140000
    for claim in (stream[: len(stream) // 2], tuple(r for r in stream if r != psci)):
        xml = domain(to_xml_text(c) + forged_stamp(c, claim))
        for config in (WIDEN, "[policy]\n"):
            cp = host("vm", "migrate", "begin", "-", xml=xml, config=config)
            assert cp.returncode == 1, (config, cp.stderr)
            assert b"claims fewer registers" in cp.stderr, cp.stderr


def fleet_contract(*names: str) -> contract.Contract:
    from abiguard.engine import baseline

    doc = baseline.compute([profile.load(P[n]) for n in names])
    return contract.Contract.from_json(doc["contract"], "baseline")


def test_a_stamp_claiming_more_registers_is_still_legitimate(host):
    """the labs' flow: a {6.12, 7.2} contract's VM booted on 7.2 carries the 7.2 host's
    stream (more registers than the contract's) onto 6.12: judged as today"""
    c = fleet_contract(V612, V72)
    stream = tuple(sorted(profile.load(P[V72]).kvm.arch.usable(c.body.config).registers))
    assert set(c.body.stream) < set(stream)
    xml = domain(to_xml_text(c) + forged_stamp(c, stream))
    for config in ("[policy]\n", WIDEN):
        cp = host("vm", "migrate", "begin", "-", xml=xml, config=config)
        assert b"claims fewer" not in cp.stderr, cp.stderr


# -- finding 2: the hook view is trusted no further than the JSON ---------------------------

def _view_path(host) -> str:
    return str(host.root / "var/lib/abiguard/host-profile.json.hookview")


def _rewrite_view(host, edit) -> None:
    """Re-frame the view with ``edit`` applied to its (key, model) values, bound anew to the
    JSON beside it as save binds it: what someone who knows the format writes, so the
    checks behind the binding (key, digest, types) are the ones that must catch it."""
    path = _view_path(host)
    key, view = marshal.loads(open(path, "rb").read()[profile.VIEW_PAYLOAD_AT:])
    payload = edit(key, view)
    if not isinstance(payload, bytes):
        payload = marshal.dumps(payload)
    text = open(str(host.root / "var/lib/abiguard/host-profile.json"), "rb").read()
    open(path, "wb").write(profile.framed_view(payload, profile.binding(text, payload)))
    st = os.stat(str(host.root / "var/lib/abiguard/host-profile.json"))
    os.utime(str(host.root / "var/lib/abiguard/host-profile.json"), ns=(st.st_atime_ns, st.st_mtime_ns))


def _hook_keeping_view(host, xml: bytes, edit, config: str = "[policy]\n"):
    host("vm", "migrate", "begin", "-", xml=xml, config=config)      # saves the profile and its view
    _rewrite_view(host, edit)
    return host("vm", "migrate", "begin", "-", xml=xml, profile_name=None)


def _honest(host, xml: bytes):
    return host("vm", "migrate", "begin", "-", xml=xml, config="[policy]\n")


def test_a_view_holding_another_hosts_profile_is_not_trusted(host):
    """6.12's JSON, a view whose file key matches it but holds 7.2's model: the JSON wins"""
    c = sealed(V72)
    xml = domain(pinned(c))
    assert _honest(host, xml).returncode == 1
    other = profile.load(P[V72]).to_view()
    cp = _hook_keeping_view(host, xml, lambda key, view: (key, other))
    assert cp.returncode == 1, cp.stderr
    assert b"internal error" not in cp.stderr


def _huge_list(key, view):
    """a marshal list claiming 2**31-1 items (valid frame, crafted body)"""
    return b")\x02" + marshal.dumps(key) + b"[\xff\xff\xff\x7f"


def _huge_tuple(key, view):
    """a marshal tuple claiming 2**31-1 items: 16 GiB asked at once; on a host with less
    address space than that (reproduced on 338e973 under an 8 GiB RLIMIT_AS) the view reader
    let MemoryError out and the hook said "internal error" (issue 22, finding 2)"""
    return b")\x02" + marshal.dumps(key) + b"(\xff\xff\xff\x7f"


def _huge_list_overcommitted(key, view):
    """a marshal list claiming 0x30000000 items (6 GiB of pointers: allocated lazily by the
    kernel, then freed item by item: ~45 s before issue 22's cap on marshal's memory)"""
    return b")\x02" + marshal.dumps(key) + b"[\x00\x00\x00\x30" + b"N" * 8


def _bad_workaround(key, view):
    view = list(view)
    kvm = list(view[3])
    section = list(kvm[3])
    acceptance = dict(section[2])
    acceptance["SMCCC_ARCH_WORKAROUND_1"] = ("accepted",)
    section[2] = acceptance
    kvm[3] = tuple(section)
    view[3] = tuple(kvm)
    return key, tuple(view)


def _bad_names(key, view):
    view = list(view)
    kvm = list(view[3])
    section = list(kvm[3])
    section[1] = {k: 7 for k in section[1]}
    kvm[3] = tuple(section)
    view[3] = tuple(kvm)
    return key, tuple(view)


@pytest.mark.parametrize("edit", [_huge_list, _huge_tuple, _huge_list_overcommitted, _bad_workaround, _bad_names])
def test_a_view_with_a_valid_frame_and_crafted_body_falls_back_to_the_json(host, edit):
    c = sealed(V72)
    for xml in (domain(pinned(c)), domain(pinned(sealed(V612)))):
        honest = _honest(host, xml)
        cp = _hook_keeping_view(host, xml, edit)
        assert b"internal error" not in cp.stderr, cp.stderr
        assert cp.returncode == honest.returncode, (cp.stderr, honest.stderr)


# -- issue 22: a pinned VM stays judged as pinned ----------------------------------------

POLICIES = ("allow", "warn", "refuse")
OTHER_UUID = "0b7e2a51-1c3d-4e5f-8a9b-0c1d2e3f4a5b"


def _pinned_once(host, uuid: str = UUID) -> contract.Contract:
    """A VM pinned to 6.12's contract, migrated onto this (6.12) host and allowed."""
    c = sealed(V612)
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c), uuid), config="[policy]\n")
    assert cp.returncode == 0, cp.stderr
    return c


def _release(host, *args: str):
    from helpers.run import abiguard

    return abiguard("release", *args, env_extra={"ABIGUARD_ROOT": str(host.root)})


def test_a_pinned_vm_arriving_without_its_contract_is_refused_under_every_policy(host):
    c = _pinned_once(host)
    for policy in POLICIES:
        for op in ("migrate", "restore", "prepare"):
            cp = host("vm", op, "begin", "-", xml=domain(), config=f"[policy]\nunpinned = \"{policy}\"\n")
            assert cp.returncode == 1, (policy, op, cp.stderr)
            assert cp.stdout == b""
            lines = cp.stderr.decode().splitlines()
            assert len(lines) == 1 and lines[0].startswith("abiguard: "), lines
            assert c.digest in lines[0] and "abiguard release vm" in lines[0] and "abiguard pin vm" in lines[0]


def test_after_release_the_vm_is_judged_by_the_policy_again(host):
    c = _pinned_once(host)
    assert host("vm", "migrate", "begin", "-", xml=domain(), config="[policy]\nunpinned = \"allow\"\n").returncode == 1
    done = _release(host, "--uuid", UUID.upper())
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout and c.digest in done.stdout
    for policy, rc in (("allow", 0), ("warn", 0), ("refuse", 1)):
        cp = host("vm", "migrate", "begin", "-", xml=domain(), config=f"[policy]\nunpinned = \"{policy}\"\n")
        assert cp.returncode == rc, (policy, cp.stderr)
        assert c.digest.encode() not in cp.stderr
    again = _release(host, "--uuid", UUID)
    assert again.returncode == 0 and "was not pinned: nothing to release" in again.stdout, again


def test_release_refuses_a_bad_uuid(host):
    cp = _release(host, "--uuid", "../../etc/passwd")
    assert cp.returncode == 2, cp
    assert cp.stderr.startswith("abiguard: ") and "not a UUID" in cp.stderr and "virsh domuuid" in cp.stderr


def test_a_vm_never_pinned_is_unaffected(host):
    _pinned_once(host, OTHER_UUID)
    for policy, rc in (("allow", 0), ("warn", 0), ("refuse", 1)):
        cp = host("vm", "migrate", "begin", "-", xml=domain(), config=f"[policy]\nunpinned = \"{policy}\"\n")
        assert cp.returncode == rc, (policy, cp.stderr)
        assert b"was pinned" not in cp.stderr
    assert host("vm", "prepare", "begin", "-", xml=domain(), config="[policy]\n").returncode == 0


def test_a_malformed_record_refuses_naming_the_file(host):
    os.makedirs(host.root / "var/lib/abiguard/pinned")
    record = host.root / "var/lib/abiguard/pinned" / UUID
    for junk in (b"", b"sha256:xyz 2026\n", b"x" * 4096):
        record.write_bytes(junk)
        cp = host("vm", "migrate", "begin", "-", xml=domain(), config="[policy]\nunpinned = \"allow\"\n")
        assert cp.returncode == 1, (junk, cp.stderr)
        assert str(record).encode() in cp.stderr and b"abiguard release vm" in cp.stderr


def test_a_pinned_vm_keeps_its_contract_and_its_record(host):
    """the record of an allowed VM is one line naming its contract; a re-pinned VM is judged as pinned"""
    c = _pinned_once(host)
    text = (host.root / "var/lib/abiguard/pinned" / UUID).read_text()
    assert text.startswith(c.digest + " ") and text.endswith("Z\n") and text.count("\n") == 1
    assert host("vm", "migrate", "begin", "-", xml=domain(pinned(c)), config="[policy]\n").returncode == 0


def test_the_fleet_directory_shares_the_record(host, tmp_path_factory):
    """with [fleet] dir, a VM allowed on one host and arriving contract-less on another host
    of the fleet (which never saw it) is refused there; release removes both records"""
    fleet = tmp_path_factory.mktemp("fleet")
    config = f"[policy]\nunpinned = \"allow\"\n[fleet]\ndir = \"{fleet}\"\n"
    c = sealed(V612)
    assert host("vm", "migrate", "begin", "-", xml=domain(pinned(c)), config=config).returncode == 0
    assert (fleet / "pinned" / UUID).read_text().startswith(c.digest + " ")
    other = hook_root(tmp_path_factory.mktemp("other"), V612, timeout=30)
    cp = other("vm", "migrate", "begin", "-", xml=domain(), config=config)
    assert cp.returncode == 1 and c.digest.encode() in cp.stderr and str(fleet).encode() in cp.stderr, cp.stderr
    done = _release(other, "--uuid", UUID)
    assert done.returncode == 0 and str(fleet / "pinned" / UUID) in done.stdout, done
    assert other("vm", "migrate", "begin", "-", xml=domain(), config=config).returncode == 0
    # this host's own record still holds until it is released here too
    assert host("vm", "migrate", "begin", "-", xml=domain(), config=config).returncode == 1


def test_a_record_that_cannot_be_written_never_refuses_an_allowed_vm(host):
    (host.root / "var/lib/abiguard/pinned").write_bytes(b"not a directory")
    c = sealed(V612)
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)), config="[policy]\n")
    assert cp.returncode == 0, cp.stderr
    assert "pinned record not written" in (host.root / "var/log/abiguard/hook.log").read_text()


# -- issue 22, finding 3: with a fleet directory a contract is bound to its VM ---------------

def _fleet_config(tmp_path_factory) -> tuple[str, object]:
    fleet = tmp_path_factory.mktemp("fleet")
    return f"[policy]\n[fleet]\ndir = \"{fleet}\"\n", fleet


def test_another_vms_contract_and_stamp_are_refused_with_a_fleet_directory(host, tmp_path_factory):
    """VM A pinned to 6.12's contract is recorded by the fleet; A arriving with the contract
    and stamp of another VM (7.2's PSCI-1.1 config contract, which this 6.12 host accepts on
    its own) is refused naming both digests; its own contract still arrives."""
    config, fleet = _fleet_config(tmp_path_factory)
    own = _pinned_once_with(host, config, sealed(V612))
    other = sealed(V612, "psci")
    assert other.digest != own.digest
    honest_other = host("vm", "migrate", "begin", "-", xml=domain(pinned(other), OTHER_UUID), config=config)
    assert honest_other.returncode == 0, honest_other.stderr    # the contract is fine for its own VM
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(other)), config=config)
    assert cp.returncode == 1 and cp.stdout == b"", cp.stderr
    line = cp.stderr.decode()
    assert line.count("\n") == 1 and line.startswith("abiguard: "), line
    assert own.digest in line and other.digest in line and str(fleet) in line and "abiguard release vm" in line
    for op in ("migrate", "restore"):
        assert host("vm", op, "begin", "-", xml=domain(pinned(own)), config=config).returncode == 0


def test_a_repinned_vm_moves_after_a_start_under_its_new_contract(host, tmp_path_factory):
    """a re-pin takes effect at a start, which records the new contract for the fleet; the
    VM then moves with it (and no longer with the old one)"""
    config, fleet = _fleet_config(tmp_path_factory)
    old = _pinned_once_with(host, config, sealed(V612))
    new = sealed(V612, "psci")
    assert host("vm", "migrate", "begin", "-", xml=domain(pinned(new)), config=config).returncode == 1
    started = host("vm", "prepare", "begin", "-", xml=domain(pinned(new)), config=config)
    assert started.returncode == 0, started.stderr
    assert (fleet / "pinned" / UUID).read_text().startswith(new.digest + " ")
    assert host("vm", "migrate", "begin", "-", xml=domain(pinned(new)), config=config).returncode == 0
    assert host("vm", "migrate", "begin", "-", xml=domain(pinned(old)), config=config).returncode == 1


def test_without_a_fleet_directory_a_hosts_own_record_does_not_bind(host):
    """per-host records can be stale (re-pinned and started on another host): they remember
    that a VM was pinned, not which contract it must carry (README, Security)"""
    _pinned_once(host)
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(sealed(V612, "psci"))), config="[policy]\n")
    assert cp.returncode == 0, cp.stderr


def test_a_malformed_fleet_record_refuses_an_arrival(host, tmp_path_factory):
    config, fleet = _fleet_config(tmp_path_factory)
    (fleet / "pinned").mkdir()
    (fleet / "pinned" / UUID).write_bytes(b"sha256:nothex 2026-01-01T00:00:00Z\n")
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(sealed(V612))), config=config)
    assert cp.returncode == 1 and str(fleet / "pinned" / UUID).encode() in cp.stderr, cp.stderr


def _pinned_once_with(host, config: str, c: contract.Contract) -> contract.Contract:
    cp = host("vm", "migrate", "begin", "-", xml=domain(pinned(c)), config=config)
    assert cp.returncode == 0, cp.stderr
    return c
