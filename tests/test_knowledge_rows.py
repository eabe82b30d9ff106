"""Every row of every knowledge table is exercised both ways: a value its rule must take and
one it must refuse (firmware registers, ID-register fields, QEMU's cpreg load rules), or
what the row says the other stack does (x86 feature names, PV bits, what libvirt drops).

The cases are derived from the tables, so a new row brings its tests with it, and
:func:`test_every_row_has_cases` checks the parametrizations below cover each table whole:
a check made at import time, independent of which tests run or in which order.
"""
from __future__ import annotations

import pytest

from abiguard.arch.arm64 import cpreg, idregs, regs
from abiguard.arch.arm64.rules import RULES, Dest
from abiguard.arch.x86 import features as x86
from abiguard.uapi import kvm

REG = {r.name: r for r in idregs.ID_REGS}
#: a destination that takes every PSCI version, workaround levels up to 2 and one bitmap bit
ACCEPT = {"PSCI_VERSION": {v: "accepted" for v in regs.PSCI_VERSIONS if v != "0.1"} | {"0.1": "EINVAL"},
          **{n: {"0": "accepted", "1": "accepted", "2": "accepted", "3": "EINVAL", "4": "EINVAL"}
             for n in ("SMCCC_ARCH_WORKAROUND_1", "SMCCC_ARCH_WORKAROUND_2", "SMCCC_ARCH_WORKAROUND_3")},
          **{r.name: 0x1 for r in regs.FW_REGS if r.kind == "bitmap"}}


def dest(registers: dict[int, int | None], masks: dict[str, int] | None = None) -> Dest:
    return Dest("dest-kernel", registers, ACCEPT, masks, None)


# -- firmware registers ------------------------------------------------------------------

#: per kind: (a value the destination above takes, one it refuses)
FW_CASES = {"psci": (0x10001, 0x00000001), "workaround": (2, 4), "bitmap": (0x1, 1 << 63)}


@pytest.mark.parametrize("reg", regs.FW_REGS, ids=lambda r: r.name)
def test_firmware_row_both_ways(reg: regs.FwReg) -> None:
    rule = RULES[regs.kind_of(reg.id)]
    assert rule.kind == reg.kind
    good, bad = FW_CASES[reg.kind]
    d = dest({reg.id: good})
    assert rule.check(reg.id, reg.name, good, d) == []
    refused = rule.check(reg.id, reg.name, bad, d)
    assert [(p.register, p.reg_id) for p in refused] == [(reg.name, reg.id)]
    assert rule.pinnable == (reg.kind != "workaround")


# -- ID-register fields ------------------------------------------------------------------

def _field_values(f: idregs.IdField) -> tuple[int, int, int]:
    """(host, a different VM value KVM takes or the host's own, a VM value KVM refuses)."""
    top = (1 << f.width) - 1
    for host in range(top + 1):
        others = [v for v in range(top + 1) if v != host]
        safe = [v for v in others if idregs.is_safe(f, v, host)]
        unsafe = [v for v in others if not idregs.is_safe(f, v, host)]
        if unsafe:
            return host, (safe[0] if safe else host), unsafe[0]
    raise AssertionError(f"{f.reg}.{f.name}: every value is safe against every other")


@pytest.mark.parametrize("field", idregs.ID_FIELDS, ids=lambda f: f"{f.reg}.{f.name}")
def test_id_field_row_both_ways(field: idregs.IdField) -> None:
    rule = RULES["idreg"]
    reg = REG[field.reg]
    host, ok, bad = _field_values(field)
    base = 0
    d = dest({reg.id: base | host << field.shift}, {field.reg: field.mask})
    assert rule.check(reg.id, reg.name, base | ok << field.shift, d) == [], (host, ok)
    refused = rule.check(reg.id, reg.name, base | bad << field.shift, d)
    assert [p.field for p in refused] == [field.name], (host, bad, [p.line() for p in refused])
    # outside the writable mask nothing may differ; before Linux 6.7 (no masks) neither
    for masks in ({field.reg: 0}, None):
        refused = rule.check(reg.id, reg.name, base | ok << field.shift, dest({reg.id: base | host << field.shift},
                                                                              masks))
        assert (refused == []) == (ok == host)


# -- QEMU's cpreg load rules -------------------------------------------------------------

LOW, MID, HIGH = 0x603000000013C100, 0x603000000013C180, 0x603000000013C300
TCR2 = kvm.arm64_sysreg_id(3, 0, 2, 0, 3)


@pytest.mark.parametrize("rule", cpreg.QEMU_CPREG_RULES, ids=lambda r: r.name)
def test_cpreg_rule_row_both_ways(rule: cpreg.QemuCpregRule) -> None:
    dest_ids = {LOW, HIGH}
    same = cpreg.stream_outcome(rule, [LOW, HIGH], dest_ids, {})
    assert (same.failing, same.dropped, same.length_fails) == ([], [], False)
    # a stream-only register below the destination's highest id: every released QEMU fails
    below = cpreg.stream_outcome(rule, [LOW, MID, HIGH], dest_ids, {})
    assert below.failing == [MID] and below.length_fails == rule.length_check
    # above it: dropped where the merge stops at the end of the destination's list
    above = cpreg.stream_outcome(rule, [LOW, HIGH, HIGH + 8], dest_ids, {})
    assert (above.dropped == [HIGH + 8]) == rule.drops_tail and (above.failing == [HIGH + 8]) != rule.drops_tail
    # a tolerated register is dropped, whatever its value if the rule says any value
    tolerated = cpreg.stream_outcome(rule, [LOW, TCR2, HIGH], {LOW, HIGH}, {TCR2: 5})
    assert (tolerated.dropped == [TCR2]) == (TCR2 in rule.tolerated)
    assert cpreg.rule_for(None) is cpreg.QEMU_CPREG_RULES[0]
    if rule.since != (0,):
        assert cpreg.rule_for(rule.since) is rule


# -- x86 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("row", sorted(x86.LIBVIRT_TO_QEMU_FEATURE.items()), ids=lambda r: r[0])
def test_feature_name_row(row: tuple[str, str]) -> None:
    libvirt_name, qemu_name = row
    assert x86.qemu_feature_name(libvirt_name) == qemu_name
    assert x86.qemu_feature_name(libvirt_name + "_x") == (libvirt_name + "_x").replace("_", "-")


@pytest.mark.parametrize("row", sorted(x86.KVM_PV_FEATURES.items()), ids=lambda r: r[1][0])
def test_pv_feature_row(row: tuple[int, tuple[str, tuple[str, ...]]]) -> None:
    bit, (_linux, props) = row
    assert x86.pv_feature_names(1 << bit) == [props[0]]
    assert props[0] not in x86.pv_feature_names(~(1 << bit) & 0xFFFFFFFF)
    # QEMU's property turns the bit on, whichever of its names that QEMU has; only that bit,
    # unless an older QEMU's one property covers two (kvmclock: bits 0 and 3)
    for prop in props:
        got = x86.pv_bits_from_props({prop: True})
        assert got >> bit & 1, prop
        assert x86.pv_bits_from_props({prop: False}) == 0
        assert got & ~(1 << bit) == 0 or prop == "kvmclock", prop


@pytest.mark.parametrize("row", sorted(x86.ARCH_CAPABILITIES.items()), ids=lambda r: r[1][0])
def test_arch_capability_row(row: tuple[int, tuple[str, str]]) -> None:
    bit, (linux, feat) = row
    assert x86.ARCH_CAPABILITY_BY_FEATURE[feat] == bit
    on = {x86.ARCH_CAPABILITIES_FEATURE: "require", feat: "require"}
    assert x86.arch_capabilities_of(on) == 1 << bit
    assert x86.arch_capabilities_of({feat: "require"}) == 0      # no MSR without arch-capabilities
    assert x86.arch_capabilities_of(dict(on, **{feat: "disable"})) == 0
    assert linux in x86.arch_capability_names(1 << bit)[0] and feat in x86.arch_capability_names(1 << bit)[0]
    assert x86.ARCH_CAPABILITIES_NAMED >> bit & 1


@pytest.mark.parametrize("row", x86.LIBVIRT_DROPS_ON_INCOMING, ids=lambda r: r[1])
def test_libvirt_drop_row_both_ways(row: tuple[tuple[int, ...], str, str]) -> None:
    since, feature, why = row
    assert x86.dropped_on_incoming(since) == {feature: why} | {
        f: w for s, f, w in x86.LIBVIRT_DROPS_ON_INCOMING if s <= since and f != feature}
    before = since[:-1] + (since[-1] - 1,)
    assert feature not in x86.dropped_on_incoming(before)
    assert x86.dropped_on_incoming(None) == {}


@pytest.mark.parametrize("row", sorted(x86.PER_CPU_CPUID_BITS.items()), ids=lambda r: f"{r[0][0]:#x}.{r[0][1]}")
def test_per_cpu_cpuid_row_is_zeroed_by_the_probe(row: tuple[tuple[int, str], int]) -> None:
    from abiguard.arch.x86.probe import probe
    from abiguard.uapi.kvm import Missing

    (function, reg), mask = row

    class System:
        """Two probes of one host, run on two CPUs: only the per-CPU bits differ."""

        def __init__(self, cpu: int) -> None:
            self.cpu = cpu

        def supported_cpuid(self) -> list[tuple[int, int, int, int, int, int, int]]:
            regs_ = {"eax": 0x11, "ebx": 0x22, "ecx": 0x33, "edx": 0x44}
            regs_[reg] = (regs_[reg] & ~mask) | (mask & (0x01010101 * (self.cpu + 1)))
            return [(function, 0, 0, regs_["eax"], regs_["ebx"], regs_["ecx"], regs_["edx"])]

    a = probe(System(0), {}, Missing())  # type: ignore[arg-type]
    b = probe(System(1), {}, Missing())  # type: ignore[arg-type]
    assert a["supported_cpuid"] == b["supported_cpuid"]
    assert int(a["supported_cpuid"][0][reg], 16) & mask == 0


# -- every row has cases -----------------------------------------------------------------

def _params(test: object) -> list[object]:
    return [v for m in getattr(test, "pytestmark", []) if m.name == "parametrize" for v in m.args[1]]


TABLES: dict[str, tuple[list[object], object]] = {
    "firmware registers (regs.FW_REGS)": (list(regs.FW_REGS), test_firmware_row_both_ways),
    "ID-register fields (idregs.ID_FIELDS)": (list(idregs.ID_FIELDS), test_id_field_row_both_ways),
    "QEMU cpreg rules (cpreg.QEMU_CPREG_RULES)": (list(cpreg.QEMU_CPREG_RULES), test_cpreg_rule_row_both_ways),
    "x86 feature names": (list(x86.LIBVIRT_TO_QEMU_FEATURE.items()), test_feature_name_row),
    "x86 KVM PV features": (list(x86.KVM_PV_FEATURES.items()), test_pv_feature_row),
    "x86 IA32_ARCH_CAPABILITIES bits": (list(x86.ARCH_CAPABILITIES.items()), test_arch_capability_row),
    "x86 libvirt drops": (list(x86.LIBVIRT_DROPS_ON_INCOMING), test_libvirt_drop_row_both_ways),
    "x86 per-CPU CPUID bits": (list(x86.PER_CPU_CPUID_BITS.items()), test_per_cpu_cpuid_row_is_zeroed_by_the_probe),
}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_row_has_cases(table: str) -> None:
    rows, test = TABLES[table]
    cases = _params(test)
    missing = [r for r in rows if not any(c is r or c == r for c in cases)]
    assert rows and not missing, f"{table}: rows without a case: {missing[:5]}"


def test_every_rule_kind_has_a_row() -> None:
    """The kinds regs.kind_of can return are the rule table's, plus guest state."""
    kinds = {regs.kind_of(r.id) for r in regs.FW_REGS} | {"idreg", "ccsidr", "unknown_fw"}
    kinds.add(regs.kind_of(regs.CLIDR_EL1_ID))
    assert kinds == set(RULES) and regs.kind_of(regs.CLIDR_EL1_ID) == "clidr"
    assert regs.kind_of(next(iter(regs.VOLATILE_REGS))) == "state"


@pytest.mark.parametrize("kind", sorted(k for k, r in RULES.items() if r.default_is_fine))
def test_a_row_that_says_its_default_is_fine_finds_nothing_there(kind: str) -> None:
    """The verdict skips such a row's check when the VM's value is the destination's own
    default: the row must agree, for every register of its kind and any masks."""
    ids = [r for r in range(0x603000000013C000, 0x603000000013C000 + 0x1000)] + \
        [0x6020000000110000 | i for i in range(16)]
    ids = [r for r in ids if regs.kind_of(r) == kind]
    assert ids, kind
    for rid in ids:
        for value in (0, 1, 0x1122334455667788):
            for masks in (None, {}, {regs.reg_name(rid): (1 << 64) - 1}):
                assert RULES[kind].check(rid, regs.reg_name(rid), value, dest({rid: value}, masks)) == [], \
                    (hex(rid), value, masks)
