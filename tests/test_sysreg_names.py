"""arm64 system registers are named by the kernel's own tables: ``data/sysreg/arm64.json``,
which ``packaging/gen-sysreg-names`` writes from arch/arm64/tools/sysreg and
arch/arm64/include/asm/sysreg.h (here run on a small synthetic kernel tree), read by
:func:`abiguard.arch.arm64.regs.other_sysreg_names`."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from abiguard.arch.arm64 import idregs, regs
from abiguard.builtin import builtin_profiles
from abiguard.errors import AbiguardError
from abiguard.model import profile
from abiguard.uapi.arm64 import arm64_sysreg_id

REPO = Path(__file__).resolve().parents[1]
GEN = REPO / "packaging" / "gen-sysreg-names"
DATA = REPO / "plugin" / "abiguard" / "data" / "sysreg" / "arm64.json"
ENCODING_NAME = re.compile(r"S\d_\d_C\d+_C\d+_\d")

#: registers of the bundled profiles that keep their encoding as a name: the feature-ID
#: space's unallocated encodings (op0=3, op1=0, CRn=0), which KVM lists as RAZ
#: placeholders (sys_regs.c ID_UNALLOCATED) and which neither the architecture nor the
#: kernel names
UNNAMED = frozenset({(3, 0, 0, 3, 3), (3, 0, 0, 3, 7), (3, 0, 0, 4, 3), (3, 0, 0, 4, 6), (3, 0, 0, 5, 3),
                     (3, 0, 0, 5, 6), (3, 0, 0, 5, 7), (3, 0, 0, 6, 4), (3, 0, 0, 6, 5), (3, 0, 0, 6, 6),
                     (3, 0, 0, 6, 7), (3, 0, 0, 7, 5), (3, 0, 0, 7, 6), (3, 0, 0, 7, 7)})

#: the names abiguard printed from its hand-typed table before the kernel's; each still
#: comes out the same (its (3, 3, 4, 2, 2) "POR_EL0" was wrong: that is SVCR, and POR_EL0
#: is (3, 3, 10, 2, 4))
HAND_TYPED = {
    (3, 3, 14, 3, 1): "KVM_REG_ARM_TIMER_CTL", (3, 3, 14, 0, 2): "KVM_REG_ARM_TIMER_CVAL",
    (2, 0, 0, 2, 0): "MDCCINT_EL1", (2, 0, 0, 2, 2): "MDSCR_EL1", (2, 0, 1, 0, 4): "OSLAR_EL1",
    (2, 0, 1, 1, 4): "OSLSR_EL1", (2, 0, 1, 3, 4): "OSDLR_EL1", (2, 0, 7, 8, 6): "DBGCLAIMSET_EL1",
    (3, 0, 1, 0, 0): "SCTLR_EL1", (3, 0, 1, 0, 1): "ACTLR_EL1", (3, 0, 1, 0, 2): "CPACR_EL1",
    (3, 0, 1, 0, 3): "SCTLR2_EL1", (3, 0, 1, 2, 0): "ZCR_EL1", (3, 0, 1, 2, 6): "SMCR_EL1",
    (3, 0, 2, 0, 0): "TTBR0_EL1", (3, 0, 2, 0, 1): "TTBR1_EL1", (3, 0, 2, 0, 2): "TCR_EL1",
    (3, 0, 2, 0, 3): "TCR2_EL1", (3, 0, 2, 1, 0): "APIAKEYLO_EL1", (3, 0, 2, 1, 1): "APIAKEYHI_EL1",
    (3, 0, 2, 1, 2): "APIBKEYLO_EL1", (3, 0, 2, 1, 3): "APIBKEYHI_EL1", (3, 0, 2, 2, 0): "APDAKEYLO_EL1",
    (3, 0, 2, 2, 1): "APDAKEYHI_EL1", (3, 0, 2, 2, 2): "APDBKEYLO_EL1", (3, 0, 2, 2, 3): "APDBKEYHI_EL1",
    (3, 0, 2, 3, 0): "APGAKEYLO_EL1", (3, 0, 2, 3, 1): "APGAKEYHI_EL1", (3, 0, 4, 6, 0): "ICC_PMR_EL1",
    (3, 0, 5, 1, 0): "AFSR0_EL1", (3, 0, 5, 1, 1): "AFSR1_EL1", (3, 0, 5, 2, 0): "ESR_EL1",
    (3, 0, 6, 0, 0): "FAR_EL1", (3, 0, 7, 4, 0): "PAR_EL1", (3, 0, 9, 14, 1): "PMINTENSET_EL1",
    (3, 0, 9, 14, 2): "PMINTENCLR_EL1", (3, 0, 10, 2, 0): "MAIR_EL1", (3, 0, 10, 2, 2): "PIRE0_EL1",
    (3, 0, 10, 2, 3): "PIR_EL1", (3, 0, 10, 2, 4): "POR_EL1", (3, 0, 10, 3, 0): "AMAIR_EL1",
    (3, 0, 10, 4, 4): "MPAMIDR_EL1", (3, 0, 12, 0, 0): "VBAR_EL1", (3, 0, 13, 0, 1): "CONTEXTIDR_EL1",
    (3, 0, 13, 0, 4): "TPIDR_EL1", (3, 0, 14, 1, 0): "CNTKCTL_EL1", (3, 2, 0, 0, 0): "CSSELR_EL1",
    (3, 3, 9, 12, 0): "PMCR_EL0", (3, 3, 9, 12, 1): "PMCNTENSET_EL0",
    (3, 3, 9, 12, 2): "PMCNTENCLR_EL0", (3, 3, 9, 12, 3): "PMOVSCLR_EL0", (3, 3, 9, 12, 4): "PMSWINC_EL0",
    (3, 3, 9, 12, 5): "PMSELR_EL0", (3, 3, 9, 13, 0): "PMCCNTR_EL0", (3, 3, 9, 14, 0): "PMUSERENR_EL0",
    (3, 3, 9, 14, 3): "PMOVSSET_EL0", (3, 3, 13, 0, 2): "TPIDR_EL0", (3, 3, 13, 0, 3): "TPIDRRO_EL0",
    (3, 3, 13, 0, 5): "TPIDR2_EL0", (3, 3, 14, 15, 7): "PMCCFILTR_EL0",
    (3, 4, 3, 0, 0): "DACR32_EL2", (3, 4, 5, 0, 1): "IFSR32_EL2", (3, 4, 5, 3, 0): "FPEXC32_EL2",
    **{(2, 0, 0, n, op2): f"DBG{kind}{n}_EL1" for n in range(16)
       for op2, kind in ((4, "BVR"), (5, "BCR"), (6, "WVR"), (7, "WCR"))},
}


def _profile_register_ids() -> set[int]:
    ids: set[int] = set()
    for path in builtin_profiles():
        section = profile.load(path).arch_section()
        assert section is not None, path
        for config in section.configs.values():
            ids.update(config.reg_list)
            ids.update(config.registers or {})
    return ids


def test_every_bundled_register_has_a_name() -> None:
    ids = _profile_register_ids()
    assert len(ids) > 300
    by_encoding = {rid: regs.reg_name(rid) for rid in ids if ENCODING_NAME.fullmatch(regs.reg_name(rid))}
    assert {rid: name for rid, name in by_encoding.items()
            if _encoding(rid) not in UNNAMED} == {}, "registers the kernel's table does not name"
    assert {_encoding(rid) for rid in by_encoding} == UNNAMED, "a register of UNNAMED got a name: drop it there"


def test_a_profile_names_its_registers_as_the_kernel_does() -> None:
    """what reports print through a profile (``name_of``: the probing abiguard's names, kept
    in the profile) -- every register of every bundled profile, not only through reg_name:
    a name the probe stored as an encoding gives way to the kernel's table"""
    seen = 0
    for path in builtin_profiles():
        section = profile.load(path).arch_section()
        assert section is not None, path
        ids = {rid for config in section.configs.values() for rid in [*config.reg_list, *(config.registers or {})]}
        printed = {rid: section.name_of(rid) for rid in ids}
        assert {rid: n for rid, n in printed.items() if ENCODING_NAME.fullmatch(n) and _encoding(rid) not in UNNAMED} \
            == {}, path
        seen += arm64_sysreg_id(3, 3, 14, 2, 1) in printed
        assert printed.get(arm64_sysreg_id(3, 3, 14, 2, 1), "CNTP_CTL_EL0") == "CNTP_CTL_EL0", path
    assert seen >= 4, "the bundled 6.1+ profiles list CNTP_CTL_EL0"


def _encoding(rid: int) -> tuple[int, int, int, int, int]:
    return ((rid >> 14) & 3, (rid >> 11) & 7, (rid >> 7) & 15, (rid >> 3) & 15, rid & 7)


@pytest.mark.parametrize("encoding, rid, name", [
    ((3, 3, 14, 2, 1), 0x603000000013DF11, "CNTP_CTL_EL0"),
    ((3, 3, 14, 2, 2), 0x603000000013DF12, "CNTP_CVAL_EL0"),
    ((3, 0, 9, 14, 6), 0x603000000013C4F6, "PMMIR_EL1"),
    ((3, 3, 14, 8, 0), 0x603000000013DF40, "PMEVCNTR0_EL0"),
    ((3, 3, 14, 15, 6), 0x603000000013DF7E, "PMEVTYPER30_EL0"),
    ((2, 4, 0, 7, 0), 0x603000000013A038, "DBGVCR32_EL2"),
    ((3, 3, 4, 2, 2), 0x603000000013DA12, "SVCR"),
    ((3, 3, 10, 2, 4), 0x603000000013DD14, "POR_EL0"),
    # KVM's uapi names win over the architecture's at the encodings KVM gives them
    ((3, 3, 14, 3, 1), 0x603000000013DF19, "KVM_REG_ARM_TIMER_CTL"),
    ((3, 3, 14, 0, 2), 0x603000000013DF02, "KVM_REG_ARM_TIMER_CVAL"),
    ((3, 3, 14, 3, 2), 0x603000000013DF1A, "KVM_REG_ARM_TIMER_CNT"),
    ((3, 3, 14, 0, 1), 0x603000000013DF01, "KVM_REG_ARM_PTIMER_CNT"),
])
def test_named_examples(encoding: tuple[int, int, int, int, int], rid: int, name: str) -> None:
    assert arm64_sysreg_id(*encoding) == rid
    assert regs.reg_name(rid) == name


def test_hand_typed_names_are_kept() -> None:
    assert {enc: regs.reg_name(arm64_sysreg_id(*enc)) for enc in HAND_TYPED} == HAND_TYPED


def test_names_the_hook_keeps_are_the_tables() -> None:
    """the registers the hook names without loading the generated table (its 6.1 -> 7.x
    arrival notes): the same names the table gives"""
    table = regs.other_sysreg_names()
    assert regs.HOOK_REG_NAMES and all(table[rid] == name for rid, name in regs.HOOK_REG_NAMES.items())


def test_id_and_firmware_tables_come_first() -> None:
    for reg in idregs.REG_BY_ID.values():
        assert regs.reg_name(reg.id) == reg.name
    for fw in regs.FW_REGS:
        assert regs.reg_name(fw.id) == fw.name
    # the kernel's table names unallocated encodings nowhere, and KVM's ids stay encodings
    assert regs.reg_name(arm64_sysreg_id(3, 0, 0, 7, 7)) == "S3_0_C0_C7_7"


# -- the generator, on a synthetic kernel tree ------------------------------------------------

MAKEFILE = """\
# SPDX-License-Identifier: GPL-2.0
VERSION = 7
PATCHLEVEL = 2
SUBLEVEL = 13
EXTRAVERSION = -rc1
NAME = Synthetic
"""

#: lines as the kernel writes them (7.2's arch/arm64/tools/sysreg)
SYSREG_TABLE = """\
# SPDX-License-Identifier: GPL-2.0-only
# Sysreg \t<name>\t<op0> \t<op1>\t<crn>\t<crm>\t<op2>

Sysreg\tSCTLR2_EL1      3\t0\t1\t0\t3
Res0    63:13
Field   12      CPTM0
EndSysreg

Sysreg\tSCTLR2_EL12     3\t5\t1\t0\t3
Mapping\tSCTLR2_EL1
EndSysreg

SysregFields\tZCR_ELx
Res0\t63:9
Raz\t8:4
Field\t3:0\tLEN
EndSysregFields

Sysreg ZCR_EL1\t3\t0\t1\t2\t0
Fields\tZCR_ELx
EndSysreg

Sysreg\tSVCR\t3\t3\t4\t2\t2
Res0\t63:2
Field\t1\tZA
Field\t0\tSM
EndSysreg

Sysreg\tICH_VMCR_EL2\t3\t4\t12\t11\t7
Prefix\tFEAT_GCIE
Res0\t63:32
Field\t0\tEN
EndPrefix
Res0\t63:32
EndSysreg

Sysreg\tICH_HFGRTR_EL2\t3\t4\t12\t9\t4
Res0\t63:21
EndSysreg
"""

#: lines as the kernel writes them (7.2's arch/arm64/include/asm/sysreg.h)
SYSREG_HEADER = """\
/* SPDX-License-Identifier: GPL-2.0-only */
#define Op0_shift\t19
#define Op1_shift\t16
#define CRn_shift\t12
#define CRm_shift\t8
#define Op2_shift\t5

#define sys_reg(op0, op1, crn, crm, op2) \\
\t(((op0) << Op0_shift) | ((op1) << Op1_shift) | \\
\t ((crn) << CRn_shift) | ((crm) << CRm_shift) | \\
\t ((op2) << Op2_shift))

#define sys_insn\tsys_reg
#define SYS_DC_ISW\t\t\tsys_insn(1, 0, 7, 6, 2)
#define SYS_SVCR_SMSTOP_SM_EL0\t\tsys_reg(0, 3, 4, 2, 3)
#define SYS_DBGBVRn_EL1(n)\t\tsys_reg(2, 0, 0, n, 4)
#define SYS_DBGDTRRX_EL0\t\tsys_reg(2, 3, 0, 5, 0)
#define SYS_DBGDTRTX_EL0\t\tsys_reg(2, 3, 0, 5, 0)
#define SYS_TRCACATR(m)\t\t\tsys_reg(2, 1, 2, ((m & 7) << 1), (2 | (m >> 3)))
#define SYS_PAR_EL1\t\t\tsys_reg(3, 0, 7, 4, 0)
#define SYS_PAR_EL1_F\t\t\tBIT(0)
#define SYS_PMMIR_EL1\t\t\tsys_reg(3, 0, 9, 14, 6)
#define SYS_ZCR_EL1\t\t\tsys_reg(3, 0, 1, 2, 0)
#define SYS_CNTP_CTL_EL0\t\tsys_reg(3, 3, 14, 2, 1)
#define SYS_CNTP_CVAL_EL0\t\tsys_reg(3, 3, 14, 2, 2)
#define SYS_AARCH32_CNTPCTSS\t\tsys_reg(0, 8, 0, 14, 0)
#define __PMEV_op2(n)\t\t\t((n) & 0x7)
#define __CNTR_CRm(n)\t\t\t(0x8 | (((n) >> 3) & 0x3))
#define SYS_PMEVCNTRn_EL0(n)\t\tsys_reg(3, 3, 14, __CNTR_CRm(n), __PMEV_op2(n))
#define __SYS__LR8_EL2(x)\t\tsys_reg(3, 4, 12, 13, x)
#define SYS_ICH_LR9_EL2\t\t\t__SYS__LR8_EL2(1)
#define SYS_ICH_VSEIR_EL2\t\tsys_reg(3, 4, 12, 9, 4)
"""

#: what the generator makes of them: tools/sysreg's names first (ICH_HFGRTR_EL2 over
#: sysreg.h's ICH_VSEIR_EL2), the first of two names in one file (DBGDTRRX_EL0), the
#: numbered families expanded, no instruction (op0 0 or 1), no parameterised define it
#: cannot name (TRCACATR), no bit (PAR_EL1_F)
EXPECTED = {
    (3, 0, 1, 0, 3): "SCTLR2_EL1", (3, 5, 1, 0, 3): "SCTLR2_EL12", (3, 0, 1, 2, 0): "ZCR_EL1",
    (3, 3, 4, 2, 2): "SVCR", (3, 4, 12, 11, 7): "ICH_VMCR_EL2", (3, 4, 12, 9, 4): "ICH_HFGRTR_EL2",
    (2, 3, 0, 5, 0): "DBGDTRRX_EL0", (3, 0, 7, 4, 0): "PAR_EL1", (3, 0, 9, 14, 6): "PMMIR_EL1",
    (3, 3, 14, 2, 1): "CNTP_CTL_EL0", (3, 3, 14, 2, 2): "CNTP_CVAL_EL0", (3, 4, 12, 13, 1): "ICH_LR9_EL2",
    **{(2, 0, 0, n, 4): f"DBGBVR{n}_EL1" for n in range(16)},
    **{(3, 3, 14, 8 | n >> 3, n & 7): f"PMEVCNTR{n}_EL0" for n in range(31)},
}


def _tree(root: Path) -> Path:
    for path, text in (("Makefile", MAKEFILE), ("arch/arm64/tools/sysreg", SYSREG_TABLE),
                       ("arch/arm64/include/asm/sysreg.h", SYSREG_HEADER)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def _generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GEN), *args], capture_output=True, text=True, timeout=60)


def _gen_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gen_sysreg_names", str(GEN))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _keyed(names: dict[tuple[int, ...], str]) -> dict[str, str]:
    return {",".join(map(str, enc)): name for enc, name in sorted(names.items())}


def test_generator_on_a_synthetic_tree(tmp_path: Path) -> None:
    out = tmp_path / "arm64.json"
    cp = _generate(str(_tree(tmp_path / "linux")), "-o", str(out), "--commit", "ab" * 20)
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(out.read_text())
    assert doc["source"] == {"kernel": "7.2.13-rc1", "commit": "ab" * 20,
                             "files": ["arch/arm64/tools/sysreg", "arch/arm64/include/asm/sysreg.h"]}
    assert doc["generated_by"] == "packaging/gen-sysreg-names"
    assert doc["names"] == _keyed(EXPECTED)
    assert list(doc["names"]) == list(_keyed(EXPECTED)), "keys sorted by encoding"


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_generator_reads_a_git_directory(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "linux")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "synthetic"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (tree / "arch/arm64/tools/sysreg").unlink()       # read from git, not from the work tree
    cp = _generate("--git", str(tree / ".git"), "--rev", "HEAD", "-o", "-")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["source"]["commit"] == head
    assert doc["names"] == _keyed(EXPECTED)


def test_committed_table_is_the_generators() -> None:
    """The committed file is the generator's output, untouched, and agrees with it on every
    line the synthetic tree copies from the kernel it was made from."""
    gen = _gen_module()
    text = DATA.read_text()
    doc = json.loads(text)
    assert text == gen.render(doc), "edited by hand: run packaging/gen-sysreg-names"
    assert doc["generated_by"] == "packaging/gen-sysreg-names"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", doc["source"]["kernel"])
    assert doc["source"]["files"] == list(gen.FILES)
    keys = [tuple(map(int, k.split(","))) for k in doc["names"]]
    assert keys == sorted(keys) and all(gen.is_register(k) for k in keys)
    synthetic = gen.build_names(SYSREG_TABLE, SYSREG_HEADER)
    assert {k: doc["names"].get(k) for k in _keyed(synthetic)} == _keyed(synthetic)


# -- a broken data file is a packaging bug (TCR2_EL1: a register only the table names; the
# hook's own few, regs.HOOK_REG_NAMES, never read it) ----------------------------------------------------

@pytest.mark.parametrize("text, why", [
    ("{not json", "cannot read"),
    ('{"names": []}', "no 'names' object"),
    ('{"names": {}}', "no 'names' object"),
    ('["3,0,2,0,3", "TCR2_EL1"]', "no 'names' object"),
    ('{"names": {"3,0,2,0": "TCR2_EL1"}}', "not \"op0,op1,crn,crm,op2\": NAME"),
    ('{"names": {"3,0,2,0,03": "TCR2_EL1"}}', "not \"op0,op1,crn,crm,op2\": NAME"),
    ('{"names": {"3,0,2,0,x": "TCR2_EL1"}}', "not \"op0,op1,crn,crm,op2\": NAME"),
    ('{"names": {"3,0,2,0,3": 7}}', "not \"op0,op1,crn,crm,op2\": NAME"),
    ('{"names": {"3,0,2,0,3": "TCR2 EL1"}}', "not \"op0,op1,crn,crm,op2\": NAME"),
    ('{"names": {"3,8,2,0,3": "TCR2_EL1"}}', "not an encoding"),
    ('{"names": {"3,0,16,0,3": "TCR2_EL1"}}', "not an encoding"),
])
def test_a_malformed_table_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, why: str) -> None:
    path = tmp_path / "arm64.json"
    path.write_text(text)
    monkeypatch.setattr(regs, "SYSREG_NAMES_FILE", str(path))
    monkeypatch.setattr(regs, "_other_names", {})
    with pytest.raises(AbiguardError, match=re.escape(why)) as err:
        regs.reg_name(arm64_sysreg_id(3, 0, 2, 0, 3))
    assert str(path) in str(err.value) and "packaging" in str(err.value)


def test_a_missing_table_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(regs, "SYSREG_NAMES_FILE", str(tmp_path / "absent.json"))
    monkeypatch.setattr(regs, "_other_names", {})
    with pytest.raises(AbiguardError, match="cannot read the arm64 register names"):
        regs.other_sysreg_names()


def test_the_table_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "arm64.json"
    path.write_text('{"names": {"3,0,2,0,3": "X_EL0", "3,3,14,3,1": "CNTV_CTL_EL0"}}')
    monkeypatch.setattr(regs, "SYSREG_NAMES_FILE", str(path))
    monkeypatch.setattr(regs, "_other_names", {})
    assert regs.reg_name(arm64_sysreg_id(3, 0, 2, 0, 3)) == "X_EL0"
    assert regs.reg_name(arm64_sysreg_id(3, 3, 14, 3, 1)) == "KVM_REG_ARM_TIMER_CTL"
    path.unlink()
    assert regs.reg_name(arm64_sysreg_id(3, 0, 2, 0, 3)) == "X_EL0"
