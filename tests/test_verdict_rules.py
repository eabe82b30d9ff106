"""Every value rule, both ways: for each row of the tables a value the destination must
accept and one it must refuse, against a real kernel's profile (7.2, writable masks)."""
from __future__ import annotations

import os

import pytest

from abiguard.arch.arm64 import idregs as arm64_idregs, regs as arm64
from abiguard.builtin import builtin_profiles
from abiguard.engine import verdict
from abiguard.model import contract, profile

P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
DEST = profile.load(P["7.2.13+deb14-arm64"])
BASE = contract.from_profile(DEST, "psci")
REGS = DEST.doc["kvm"]["aarch64"]["configs"]["psci"]["registers"]
MASKS = DEST.doc["kvm"]["aarch64"]["writable_masks"]
ACCEPT = DEST.doc["kvm"]["aarch64"]["firmware_acceptance"]


def judge(reg_id: str, value: int) -> verdict.Verdict:
    doc = BASE.to_json()
    doc["aarch64"]["values"][reg_id] = f"{value:#x}"
    if int(reg_id, 16) == arm64.VENDOR_HYP_BMAP_2_ID and value & arm64.DISCOVER_IMPL_BITS:
        # errata discovery is offered with both calls and the CPUs to answer, or not at all
        doc["aarch64"]["values"][reg_id] = f"{value | arm64.DISCOVER_IMPL_BITS:#x}"
        own = [REGS[f"{rid:#x}"] for rid in arm64.IMPLEMENTATION_IDS]
        doc["aarch64"]["impl_cpus"] = [dict(zip(("midr", "revidr", "aidr"), own))]
    return verdict.check(contract.seal_json(doc), DEST)


def test_unchanged_contract_is_allowed():
    assert verdict.check(BASE, DEST).allow


@pytest.mark.parametrize("version", sorted(arm64.PSCI_VERSIONS))
def test_psci(version):
    v = judge("0x6030000000140000", arm64.PSCI_VERSIONS[version][0])
    assert v.allow == (ACCEPT["PSCI_VERSION"][version] == "accepted")


@pytest.mark.parametrize("reg", [r for r in arm64.FW_REGS if r.kind == "workaround"], ids=lambda r: r.name)
@pytest.mark.parametrize("level", range(5))
def test_workarounds(reg, level):
    """taken where KVM accepts the level and the host's own is not above it (the guest would
    see the higher one here and carry it on: rules.Workaround)"""
    v = judge(f"{reg.id:#x}", level)
    own = int(REGS[f"{reg.id:#x}"], 16)
    assert v.allow == (ACCEPT[reg.name][str(level)] == "accepted" and own <= level)
    if not v.allow:
        assert v.problems[0].register == reg.name and not v.problems[0].pinnable


def test_a_fleet_whose_mitigation_levels_differ_is_judged_by_the_highest():
    """A VM carries the SMCCC_ARCH_WORKAROUND_* level of the host it runs on (KVM's get
    gives the host's own; a write stores nothing), so a contract over hosts whose levels
    differ holds the highest and a host that refuses it is named; a start where the level
    is above the contract's is refused (the lab's cortex-a53 + cortex-a72 pair: a53 2,
    a72 0, the move a53 -> a72 failing at the end, QEMU "Could not set register fw reg 1
    to 2 (is 0)")."""
    from abiguard.arch.arm64.rules import RULES

    wa1 = arm64.FW_BY_ID[0x6030000000140001]
    a72 = {"0": "accepted", "1": "EINVAL", "2": "EINVAL", "3": "EINVAL", "4": "EINVAL"}
    a53 = {"0": "accepted", "1": "accepted", "2": "accepted", "3": "EINVAL", "4": "EINVAL"}
    value, conflict = RULES["workaround"].fold(wa1.name, [0, 2], [a72, a53])
    assert value == 2 and conflict and "0 (NOT_AVAIL)" in conflict and "2 (NOT_REQUIRED)" in conflict
    assert RULES["workaround"].fold(wa1.name, [2, 2], [a53, a53]) == (2, None)
    # equal hosts keep the highest level all take (unchanged contracts for such fleets)
    assert RULES["workaround"].fold(wa1.name, [0, 0], [a53, a53]) == (2, None)
    # the bundled 7.2 host (level 2): a contract holding 0 is not started there
    doc = BASE.to_json()
    doc["aarch64"]["values"][f"{wa1.id:#x}"] = "0x0"
    low = contract.seal_json(doc)
    started = verdict.realise(low, DEST)
    assert [p.register for p in started.problems] == [wa1.name], started.problems
    assert "this host's own level is above its contract's" in started.problems[0].why
    arriving = verdict.check(low, DEST)
    assert [p.register for p in arriving.problems] == [wa1.name], arriving.problems


@pytest.mark.parametrize("reg", [r for r in arm64.FW_REGS if r.kind == "bitmap"], ids=lambda r: r.name)
@pytest.mark.parametrize("bit", range(0, 64, 1))
def test_bitmaps(reg, bit):
    v = judge(f"{reg.id:#x}", 1 << bit)
    assert v.allow == bool(int(ACCEPT[reg.name]["known_bits"], 16) >> bit & 1)


def _field_cases():
    for name, fields in sorted(arm64_idregs.FIELDS_BY_REG.items()):
        reg = arm64_idregs.REG_BY_NAME[name]
        rid = f"{reg.id:#x}"
        if rid not in REGS or name in arm64.IMPLEMENTATION_ID_REGS:
            continue
        mask = int(MASKS.get(name, "0x0"), 16)
        for f in fields:
            yield pytest.param(rid, name, f, mask, id=f"{name}.{f.name}")


@pytest.mark.parametrize("rid, name, field, mask", list(_field_cases()))
def test_id_register_fields(rid, name, field, mask):
    width_mask = (1 << field.width) - 1
    fmask = width_mask << field.shift
    own = int(REGS[rid], 16)
    cur = (own >> field.shift) & width_mask
    writable = fmask & mask == fmask
    for new in range(1 << field.width):
        if new == cur:
            continue
        v = judge(rid, (own & ~fmask) | new << field.shift)
        # KVM's rule (arm64_check_features): the value is taken only if it is the safe one
        safe = writable and arm64_idregs.safe_value(field, new, cur) == new
        assert v.allow == safe, (name, field.name, cur, new, v.problems[:1])
        if not v.allow:
            assert v.problems[0].field == field.name and v.problems[0].reg_id == int(rid, 16)


def test_ccsidr_line_size():
    rid = "0x6020000000110000"
    own = int(REGS[rid], 16)
    assert judge(rid, own).allow
    assert judge(rid, own + 1).allow                  # a larger line than the host's: accepted
    smaller = judge(rid, own & ~7 | max((own & 7) - 1, 0))
    assert smaller.allow == ((own & 7) == 0)


def test_a_register_the_destination_does_not_list():
    doc = BASE.to_json()
    doc["aarch64"]["stream"] = sorted(doc["aarch64"]["stream"] + ["0x603000000013c103"],  # TCR2_EL1, gone in 7.2
                                      key=lambda r: int(r, 16))
    v = verdict.check(contract.seal_json(doc), DEST)
    assert [p.register for p in v.problems] == ["TCR2_EL1"]


def test_unknown_firmware_register_is_refused():
    """a firmware register abiguard's table has no row for (say a future KVM_REG_ARM_FW
    number): its value cannot be judged, so it is refused"""
    doc = BASE.to_json()
    unknown = "0x6030000000140009"
    doc["aarch64"]["stream"] = sorted(doc["aarch64"]["stream"] + [unknown], key=lambda r: int(r, 16))
    doc["aarch64"]["values"][unknown] = "0x1"
    c = contract.seal_json(doc)
    dest = DEST.doc
    import copy
    d = copy.deepcopy(dest)
    d["kvm"]["aarch64"]["configs"]["psci"]["registers"][unknown] = "0x1"
    d["digest"] = profile.digest_of(d)
    v = verdict.check(c, profile.Profile.from_json(d, "edited"))
    assert [(p.register, p.why) for p in v.problems if p.reg_id == int(unknown, 16)] == [
        ("FW+0x9", "a firmware register this abiguard has no rule for")]
