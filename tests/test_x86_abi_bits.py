"""Every IA32_ARCH_CAPABILITIES bit and every KVM PV feature bit, both ways: a destination
that lacks what the VM has is refused naming the bit and both values; one that would give
the VM a bit it did not have is refused as widening, unless the policy allows widening or
the contract pins the bit off. Plus libvirt's x86 CPU map on this machine agrees with the
table (real data: the installed libvirt's own file)."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from abiguard.arch.x86 import features as x86
from abiguard.arch.x86.body import X86Body
from abiguard.engine import verdict
from abiguard.model import contract, profile
from abiguard.model.problem import Policy

DATA = Path(__file__).parent / "data" / "x86" / "profiles"


@pytest.fixture(scope="module")
def dest() -> profile.Profile:
    """A real x86 profile (bookworm's, recorded by tests/lab/x86fleet.py)."""
    return profile.load(str(DATA / "bookworm.json"))


def _contract(dest: profile.Profile, body: X86Body) -> contract.Contract:
    machine = dest.qemu.newest_machine("pc-q35") if dest.qemu else None
    return contract.seal("x86_64", machine, contract.Origin("profile", ()), body)


def _with_caps(p: profile.Profile, bits: int, msr: bool = True) -> profile.Profile:
    """The profile with QEMU offering exactly these IA32_ARCH_CAPABILITIES bits."""
    q = copy.copy(p.qemu)
    props = dict(q.host_cpu_props or {})
    props["arch-capabilities"] = msr
    for bit, (_linux, feat) in x86.ARCH_CAPABILITIES.items():
        props[x86.qemu_feature_name(feat)] = bool(bits >> bit & 1)
    q.host_cpu_props = props
    out = copy.copy(p)
    out.qemu = q
    return out


def _vm_caps(bits: int, pin_off: bool = False) -> X86Body:
    """A VM with the MSR and these bits; ``pin_off``: every other bit disabled explicitly."""
    feats = {"arch-capabilities": "require"}
    for bit, (_linux, feat) in x86.ARCH_CAPABILITIES.items():
        if bits >> bit & 1:
            feats[feat] = "require"
        elif pin_off:
            feats[feat] = "disable"
    return X86Body("qemu64", None, feats, bits)


def _lines(v: verdict.Verdict) -> list[str]:
    return [p.line() for p in v.problems]


BITS = sorted(x86.ARCH_CAPABILITIES)


@pytest.mark.parametrize("bit", BITS, ids=lambda b: x86.ARCH_CAPABILITIES[b][0])
def test_arch_capability_the_destination_lacks_is_refused_naming_it(dest: profile.Profile, bit: int) -> None:
    linux, feat = x86.ARCH_CAPABILITIES[bit]
    sealed = _contract(dest, _vm_caps(1 << bit, pin_off=True))
    v = verdict.check(sealed, _with_caps(dest, 0))
    mine = [p for p in v.problems if p.register == "IA32_ARCH_CAPABILITIES"]
    assert not v.allow and len(mine) == 1, _lines(v)
    assert mine[0].field == f"bit {bit} {linux} ({feat})" and (mine[0].source, mine[0].destination) == ("1", "gives 0")
    assert verdict.check(sealed, _with_caps(dest, 1 << bit)).allow or \
        all(p.register != "IA32_ARCH_CAPABILITIES" for p in verdict.check(sealed, _with_caps(dest, 1 << bit)).problems)


@pytest.mark.parametrize("bit", BITS, ids=lambda b: x86.ARCH_CAPABILITIES[b][0])
def test_arch_capability_the_destination_adds_is_widening(dest: profile.Profile, bit: int) -> None:
    linux, feat = x86.ARCH_CAPABILITIES[bit]
    there = _with_caps(dest, 1 << bit)
    loose = _contract(dest, _vm_caps(0))                  # the MSR, no bit, nothing pinned off
    v = verdict.check(loose, there)
    mine = [p for p in v.problems if p.register == "IA32_ARCH_CAPABILITIES"]
    assert len(mine) == 1 and mine[0].kind == "widen", _lines(v)
    assert mine[0].field == f"bit {bit} {linux} ({feat})" and (mine[0].source, mine[0].destination) == ("0", "gives 1")
    allowed = verdict.check(loose, there, Policy(allow_widening=True))
    assert all(p.register != "IA32_ARCH_CAPABILITIES" for p in allowed.problems), _lines(allowed)
    pinned = verdict.check(_contract(dest, _vm_caps(0, pin_off=True)), there)
    assert all(p.register != "IA32_ARCH_CAPABILITIES" for p in pinned.problems), _lines(pinned)


def test_a_destination_without_the_msr_refuses_a_vm_that_has_it(dest: profile.Profile) -> None:
    v = verdict.check(_contract(dest, _vm_caps(0, pin_off=True)), _with_caps(dest, 0, msr=False))
    assert any(p.register == "IA32_ARCH_CAPABILITIES" and p.field == "arch-capabilities" for p in v.problems)


def _with_pv(p: profile.Profile, offered: int, named_on: int) -> profile.Profile:
    """KVM offering ``offered``; QEMU turning ``named_on`` on for a named model."""
    out = copy.copy(p)
    section = copy.copy(p.kvm.arch)
    section.pv_eax = offered
    kvm = copy.copy(p.kvm)
    kvm.arch = section
    out.kvm = kvm
    q = copy.copy(p.qemu)
    props = {}
    for bit, (_linux, names) in x86.KVM_PV_FEATURES.items():
        props[names[0]] = bool(named_on >> bit & 1)     # this QEMU's own name of each bit
    q.named_cpu_props = props
    out.qemu = q
    return out


PV_BITS = sorted(x86.KVM_PV_FEATURES)


@pytest.mark.parametrize("bit", PV_BITS, ids=lambda b: x86.KVM_PV_FEATURES[b][0])
def test_pv_feature_the_destination_lacks_is_refused_naming_it(dest: profile.Profile, bit: int) -> None:
    name = x86.KVM_PV_FEATURES[bit][1][0]
    sealed = _contract(dest, X86Body("qemu64", 1 << bit, {}, 0))
    v = verdict.check(sealed, _with_pv(dest, offered=0xFFFFFFFF & ~(1 << bit), named_on=0))
    mine = [p for p in v.problems if p.register == "KVM PV features"]
    assert len(mine) == 1 and mine[0].field == f"bit {bit} {name}" and mine[0].source == "1", _lines(v)
    ok = verdict.check(sealed, _with_pv(dest, offered=1 << bit, named_on=1 << bit))
    assert all(p.register != "KVM PV features" for p in ok.problems), _lines(ok)


@pytest.mark.parametrize("bit", PV_BITS, ids=lambda b: x86.KVM_PV_FEATURES[b][0])
def test_pv_feature_the_destination_adds_is_widening(dest: profile.Profile, bit: int) -> None:
    name = x86.KVM_PV_FEATURES[bit][1][0]
    sealed = _contract(dest, X86Body("qemu64", 0, {}, 0))
    # kvmclock's older QEMU name covers two bits: give exactly this one
    there = _with_pv(dest, offered=1 << bit, named_on=1 << bit)
    v = verdict.check(sealed, there)
    mine = [p for p in v.problems if p.register == "KVM PV features"]
    assert len(mine) == 1 and mine[0].kind == "widen" and mine[0].field == f"bit {bit} {name}", _lines(v)
    assert (mine[0].source, mine[0].destination) == ("0", "gives 1")
    allowed = verdict.check(sealed, there, Policy(allow_widening=True))
    assert all(p.register != "KVM PV features" for p in allowed.problems), _lines(allowed)
    # offered by KVM but not turned on by QEMU for a named model: nothing to widen
    quiet = verdict.check(sealed, _with_pv(dest, offered=1 << bit, named_on=0))
    assert all(p.register != "KVM PV features" for p in quiet.problems), _lines(quiet)


# -- the table against libvirt's own CPU map (real data) -----------------------------------

def _cpu_maps() -> list[Path]:
    maps = [Path("/usr/share/libvirt/cpu_map/x86_features.xml")]
    maps += [Path(f"/var/cache/abiguard-lab/rootfs-{s}/usr/share/libvirt/cpu_map/x86_features.xml")
             for s in ("trixie", "sid")]
    return [m for m in maps if m.exists()]


def test_arch_capability_bits_are_libvirts() -> None:
    """Every <msr index='0x10a'> feature in every libvirt CPU map on this machine (the
    installed one, and the lab's trixie/sid root filesystems when built) sits at the bit
    the table says, and every row libvirt names is one of them."""
    from lxml import etree

    maps = _cpu_maps()
    if not maps:
        from helpers.realparts import need

        need(False, "libvirt's x86 CPU map (/usr/share/libvirt/cpu_map/x86_features.xml: install libvirt-daemon)")
    seen: set[str] = set()
    for path in maps:
        for feat in etree.parse(str(path)).iter("feature"):
            msr = feat.find("msr")
            if msr is None or int(msr.get("index"), 16) != x86.ARCH_CAPABILITIES_MSR:
                continue
            value = int(msr.get("edx"), 16) << 32 | int(msr.get("eax"), 16)
            assert value and value & (value - 1) == 0, (path, feat.get("name"))
            bit = value.bit_length() - 1
            assert x86.ARCH_CAPABILITIES.get(bit, ("", ""))[1] == feat.get("name"), (path, bit, feat.get("name"))
            seen.add(feat.get("name"))
    assert seen, maps
    assert seen <= set(x86.ARCH_CAPABILITY_BY_FEATURE)
    if os.environ.get("CI") and len(maps) == 3:
        # the newest libvirt names every row
        assert seen == set(x86.ARCH_CAPABILITY_BY_FEATURE), set(x86.ARCH_CAPABILITY_BY_FEATURE) - seen
