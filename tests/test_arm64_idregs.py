"""Unit tests for abiguard.arch.arm64.idregs (the arm64 ID-register tables)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from abiguard.arch.arm64 import idregs as idr


def _field(reg: str, name: str) -> idr.IdField:
    matches = [f for f in idr.FIELDS_BY_REG[reg] if f.name == name]
    assert len(matches) == 1, f"{reg}.{name}"
    return matches[0]


# ---------------------------------------------------------------- registers

@pytest.mark.parametrize("name, expected", [
    ("MIDR_EL1", 0x603000000013C000),
    ("ID_AA64PFR0_EL1", 0x603000000013C020),
    ("ID_AA64ISAR0_EL1", 0x603000000013C030),
    ("CTR_EL0", 0x603000000013D801),
    ("CLIDR_EL1", 0x603000000013C801),
    ("AIDR_EL1", 0x603000000013C807),
    ("DCZID_EL0", 0x603000000013D807),
    ("ID_AA64MMFR4_EL1", 0x603000000013C03C),
])
def test_known_one_reg_ids(name: str, expected: int) -> None:
    assert idr.REG_BY_NAME[name].id == expected
    assert idr.REG_BY_ID[expected].name == name


def test_every_id_matches_the_uapi_formula() -> None:
    for r in idr.ID_REGS:
        assert r.id == (0x6030000000130000 | r.op0 << 14 | r.op1 << 11
                        | r.crn << 7 | r.crm << 3 | r.op2), r.name
        assert r.id == idr.one_reg_id(r.op0, r.op1, r.crn, r.crm, r.op2)


def test_registers_are_unique_and_in_the_feature_id_range() -> None:
    assert len(idr.REG_BY_NAME) == len(idr.ID_REGS)
    assert len(idr.REG_BY_ID) == len(idr.ID_REGS)
    for r in idr.ID_REGS:
        assert (r.op0, r.crn) == (3, 0), r.name
        assert r.op1 in (0, 1, 3) and 0 <= r.crm <= 7 and 0 <= r.op2 <= 7, r.name


def test_register_coverage() -> None:
    names = set(idr.REG_BY_NAME)
    expected = {"MIDR_EL1", "MPIDR_EL1", "REVIDR_EL1", "ID_PFR0_EL1", "ID_PFR1_EL1",
                "ID_PFR2_EL1", "ID_DFR0_EL1", "ID_DFR1_EL1", "ID_AFR0_EL1", "MVFR0_EL1",
                "MVFR1_EL1", "MVFR2_EL1", "ID_AA64PFR2_EL1", "ID_AA64ZFR0_EL1",
                "ID_AA64SMFR0_EL1", "ID_AA64FPFR0_EL1", "ID_AA64DFR0_EL1",
                "ID_AA64DFR1_EL1", "ID_AA64AFR0_EL1", "ID_AA64AFR1_EL1",
                "ID_AA64ISAR3_EL1", "ID_AA64MMFR4_EL1", "CLIDR_EL1", "AIDR_EL1",
                "CTR_EL0", "DCZID_EL0"}
    expected |= {f"ID_MMFR{i}_EL1" for i in range(6)} | {f"ID_ISAR{i}_EL1" for i in range(7)}
    expected |= {f"ID_AA64MMFR{i}_EL1" for i in range(4)} | {f"ID_AA64ISAR{i}_EL1" for i in range(3)}
    assert expected <= names
    # unallocated encodings stay unnamed (KVM declares them ID_UNALLOCATED)
    for crm, op2 in ((3, 3), (3, 7), (4, 3), (4, 6), (6, 4), (7, 5)):
        assert idr.one_reg_id(3, 0, 0, crm, op2) not in idr.REG_BY_ID


# ---------------------------------------------------------------- fields

def test_fields_fit_and_never_overlap() -> None:
    for reg, fields in idr.FIELDS_BY_REG.items():
        seen = 0
        for f in fields:
            assert f.width > 0 and f.shift >= 0 and f.shift + f.width <= 64, f
            assert f.mask == ((1 << f.width) - 1) << f.shift
            assert not seen & f.mask, f"{reg}.{f.name} overlaps"
            seen |= f.mask
            assert 0 <= f.safe_val < 1 << f.width, f


def test_every_field_belongs_to_a_known_register() -> None:
    for f in idr.ID_FIELDS:
        assert f.reg in idr.REG_BY_NAME, f
        assert f.safety in idr.SAFETY_NAMES


def test_fields_by_reg_is_a_partition_of_id_fields() -> None:
    flattened = [f for group in idr.FIELDS_BY_REG.values() for f in group]
    assert sorted(flattened) == sorted(idr.ID_FIELDS)
    for reg, group in idr.FIELDS_BY_REG.items():
        assert all(f.reg == reg for f in group)
        names = [f.name for f in group]
        assert len(names) == len(set(names)), reg
        # the order of the kernel's ftr tables: descending shift
        assert [f.shift for f in group] == sorted((f.shift for f in group), reverse=True)


def test_registers_without_a_host_table_have_no_fields() -> None:
    for reg in ("MIDR_EL1", "MPIDR_EL1", "REVIDR_EL1", "AIDR_EL1", "CLIDR_EL1",
                "ID_AFR0_EL1", "ID_AA64AFR0_EL1", "ID_AA64AFR1_EL1", "ID_AA64DFR1_EL1"):
        assert reg not in idr.FIELDS_BY_REG


@pytest.mark.parametrize("reg, name, shift, width, signed, safety, safe_val", [
    ("ID_AA64PFR0_EL1", "FP", 16, 4, True, idr.LOWER_SAFE, 0xF),
    ("ID_AA64PFR0_EL1", "AdvSIMD", 20, 4, True, idr.LOWER_SAFE, 0xF),
    ("ID_AA64PFR0_EL1", "EL1", 4, 4, False, idr.LOWER_SAFE, 1),
    ("ID_AA64MMFR0_EL1", "TGRAN4", 28, 4, True, idr.LOWER_SAFE, 0xF),
    ("ID_AA64MMFR0_EL1", "TGRAN16", 20, 4, False, idr.LOWER_SAFE, 0),
    ("ID_AA64MMFR0_EL1", "TGRAN4_2", 40, 4, False, idr.EXACT, 1),
    ("ID_AA64MMFR1_EL1", "SpecSEI", 24, 4, False, idr.HIGHER_SAFE, 0),
    ("ID_AA64MMFR4_EL1", "E2H0", 24, 4, True, idr.LOWER_SAFE, 0),
    ("ID_AA64ISAR1_EL1", "APA", 4, 4, False, idr.EXACT, 0),
    ("ID_AA64ISAR2_EL1", "GPA3", 8, 4, False, idr.LOWER_SAFE, 0),
    ("ID_AA64SMFR0_EL1", "FA64", 63, 1, False, idr.EXACT, 0),
    ("CTR_EL0", "CWG", 24, 4, False, idr.HIGHER_OR_ZERO_SAFE, 0),
    ("CTR_EL0", "L1Ip", 14, 2, False, idr.EXACT, 2),
    ("CTR_EL0", "DIC", 29, 1, False, idr.LOWER_SAFE, 1),
    ("DCZID_EL0", "DZP", 4, 1, False, idr.EXACT, 1),
    ("ID_DFR1_EL1", "MTPMU", 0, 4, True, idr.LOWER_SAFE, 0),
    ("ID_MMFR4_EL1", "SpecSEI", 0, 4, False, idr.HIGHER_SAFE, 0),
])
def test_selected_rows_match_the_kernel_tables(reg: str, name: str, shift: int, width: int,
                                               signed: bool, safety: int,
                                               safe_val: int) -> None:
    assert _field(reg, name) == idr.IdField(reg, name, shift, width, signed, safety, safe_val)


@pytest.mark.parametrize("reg, name, safe_val", [
    ("ID_AA64DFR0_EL1", "PMUVer", 0),
    ("ID_AA64DFR0_EL1", "DebugVer", 6),
    ("ID_DFR0_EL1", "PerfMon", 0),
])
def test_kvm_overrides_are_applied(reg: str, name: str, safe_val: int) -> None:
    f = _field(reg, name)
    # kvm_arm64_ftr_safe_value(): host FTR_EXACT treated as FTR_LOWER_SAFE
    assert f.safety == idr.LOWER_SAFE
    assert f.safe_val == safe_val
    assert not f.signed


# ---------------------------------------------------------------- field_value

PFR0 = 0x1101001021110222


@pytest.mark.parametrize("name, expected", [
    ("EL0", 2), ("EL1", 2), ("EL2", 2), ("EL3", 0),
    ("FP", 1),        # shift 16: FP16 implemented
    ("AdvSIMD", 1),   # shift 20
    ("GIC", 1),       # shift 24
    ("RAS", 2), ("SVE", 0), ("SEL2", 1), ("DIT", 1),
    ("CSV2", 1), ("CSV3", 1),
])
def test_field_value_on_a_real_pfr0(name: str, expected: int) -> None:
    assert idr.field_value(_field("ID_AA64PFR0_EL1", name), PFR0) == expected


def test_field_value_sign_extends_only_signed_fields() -> None:
    fp = _field("ID_AA64PFR0_EL1", "FP")
    value = (PFR0 & ~fp.mask) | 0xF << fp.shift
    assert idr.field_value(fp, value) == -1
    assert idr.field_value(_field("ID_AA64PFR0_EL1", "EL0"), 0xF) == 0xF
    assert idr.field_value(_field("ID_AA64DFR0_EL1", "PMUVer"), 0xF << 8) == 0xF
    assert idr.field_value(_field("ID_AA64MMFR4_EL1", "E2H0"), 0xE << 24) == -2


# ---------------------------------------------------------------- safe_value

def test_safe_value_signed_field_ranks_not_implemented_lowest() -> None:
    fp = _field("ID_AA64PFR0_EL1", "FP")
    for other in (0, 1):
        assert idr.safe_value(fp, 0xF, other) == 0xF
        assert idr.safe_value(fp, other, 0xF) == 0xF
    assert idr.safe_value(fp, 0, 1) == 0
    assert idr.safe_value(fp, 1, 0) == 0
    # sign-extended input is accepted; the result is still the raw encoding
    assert idr.safe_value(fp, -1, 1) == 0xF


def test_safe_value_lower_safe() -> None:
    aes = _field("ID_AA64ISAR0_EL1", "AES")
    assert idr.safe_value(aes, 2, 1) == 1
    assert idr.safe_value(aes, 1, 2) == 1
    assert idr.safe_value(aes, 0xF, 0) == 0   # unsigned: 0xF is the highest


def test_safe_value_higher_safe() -> None:
    spec_sei = _field("ID_AA64MMFR1_EL1", "SpecSEI")
    assert idr.safe_value(spec_sei, 0, 1) == 1
    assert idr.safe_value(spec_sei, 1, 0) == 1


def test_safe_value_higher_or_zero_safe() -> None:
    cwg = _field("CTR_EL0", "CWG")
    assert idr.safe_value(cwg, 3, 5) == 5
    assert idr.safe_value(cwg, 5, 3) == 5
    assert idr.safe_value(cwg, 0, 4) == 0
    assert idr.safe_value(cwg, 4, 0) == 0


def test_safe_value_exact() -> None:
    l1ip = _field("CTR_EL0", "L1Ip")
    assert idr.safe_value(l1ip, 3, 3) == 3        # equal: kept
    assert idr.safe_value(l1ip, 3, 2) == 2        # PIPT vs VIPT: VIPT
    assert idr.safe_value(l1ip, 2, 3) == 2
    tgran = _field("ID_AA64MMFR0_EL1", "TGRAN4_2")
    assert idr.safe_value(tgran, 2, 3) == 1       # differing: safe_val (NI), not min
    apa = _field("ID_AA64ISAR1_EL1", "APA")
    assert idr.safe_value(apa, 3, 5) == 0


def test_safe_value_kvm_overrides_pick_the_minimum() -> None:
    debugver = _field("ID_AA64DFR0_EL1", "DebugVer")
    assert idr.safe_value(debugver, 8, 0xA) == 8  # host EXACT would give 6
    pmuver = _field("ID_AA64DFR0_EL1", "PMUVer")
    assert idr.safe_value(pmuver, 1, 6) == 1


def test_safe_value_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        idr.safe_value(_field("ID_AA64ISAR0_EL1", "AES"), 0x10, 0)
    with pytest.raises(ValueError):
        idr.safe_value(_field("ID_AA64ISAR0_EL1", "AES"), -1, 0)   # unsigned field
    with pytest.raises(ValueError):
        idr.safe_value(_field("ID_AA64PFR0_EL1", "FP"), -9, 0)


# -- the register-id parser the hook runs on every stream ---------------------------------

def _reference_is_reg_id(reg: int) -> bool:
    """uapi layout spelled out field by field: KVM_REG_ARM64, a size KVM defines, a group
    KVM defines, nothing else set above the low 16 bits."""
    return (0 <= reg < 1 << 64 and reg >> 56 == 0x60 and 2 <= (reg >> 52) & 0xF <= 8
            and (reg >> 48) & 0xF == 0 and (reg >> 28) & 0xFFFFFF == 0
            and (reg >> 16) & 0xFFF in (0x10, 0x11, 0x13, 0x14, 0x15, 0x16))


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.integers(-(1 << 70), 1 << 70),
                 st.builds(lambda size, group, low: (0x60 << 56) | (size << 52) | (group << 16) | low,
                           st.integers(0, 15), st.integers(0, 0xFFF), st.integers(0, 0xFFFF)),
                 st.sampled_from([0x6030000000130000, 0x603000000013C000, 0x6020000000110000,
                                  0x6080000000150400, 0x6090000000150000, 0x6030000000120000])))
def test_is_reg_id_is_the_uapi_layout(reg):
    from abiguard.arch.arm64 import regs

    assert regs.is_reg_id(reg) == _reference_is_reg_id(reg)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 1 << 64).map(hex), st.integers(0, 1 << 64).map(lambda i: f"{i:#X}"),
                          st.sampled_from(["0x6030000000130000", "0x06030000000130000", "6030000000130000",
                                           "-0x1", "0x", "", " 0x6030000000130000", "0x6030000000130000\n"]),
                          st.text(max_size=8)), max_size=12))
def test_parse_ids_keeps_only_canonical_well_formed_ids(words):
    from abiguard.arch.arm64 import regs

    ids, bad = regs.parse_ids(words)
    want_ids = [int(w, 16) for w in words if _canonical_id(w)]
    assert ids == want_ids
    assert bad == [w for w in words if not _canonical_id(w)]


def _canonical_id(w: str) -> bool:
    try:
        v = int(w, 16)
    except ValueError:
        return False
    return hex(v) == w and _reference_is_reg_id(v)


def _reference_kind(reg_id: int) -> str:
    from abiguard.arch.arm64 import regs
    from abiguard.uapi import kvm

    fw = regs.FW_BY_ID.get(reg_id)
    if fw is not None:
        return fw.kind
    if reg_id in regs.VOLATILE_REGS:
        return "state"
    if kvm.arm64_coproc(reg_id) == "sysreg":
        op0, op1, crn, _crm, _op2 = kvm.arm64_sysreg_encoding(reg_id)
        if op0 == 3 and op1 in (0, 1, 3) and crn == 0:
            return "idreg"
    return {"demux": "ccsidr", "fw": "unknown_fw", "fw_bmap": "unknown_fw"}.get(kvm.arm64_coproc(reg_id), "state")


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.builds(lambda size, group, low: (0x60 << 56) | (size << 52) | (group << 16) | low,
                           st.integers(2, 8), st.sampled_from([0x10, 0x11, 0x13, 0x14, 0x15, 0x16]),
                           st.integers(0, 0xFFFF)),
                 st.sampled_from(sorted(__import__("abiguard.arch.arm64.regs", fromlist=["x"]).FW_BY_ID))))
def test_kind_of_is_the_uapi_layout(reg_id):
    from abiguard.arch.arm64 import regs

    assert regs.kind_of(reg_id) == _reference_kind(reg_id)
    assert regs.kind_of(reg_id) == _reference_kind(reg_id)      # and again, from the memo
    assert regs.is_id_register(reg_id) == (_reference_kind(reg_id) == "idreg"
                                           or (reg_id in regs.VOLATILE_REGS and _sysreg_id_range(reg_id)))


def _sysreg_id_range(reg_id: int) -> bool:
    from abiguard.uapi import kvm

    op0, op1, crn, _crm, _op2 = kvm.arm64_sysreg_encoding(reg_id)
    return kvm.arm64_coproc(reg_id) == "sysreg" and op0 == 3 and op1 in (0, 1, 3) and crn == 0
