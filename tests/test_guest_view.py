"""The guest's view (issue 23): the probe's hand-encoded guest against GNU as, the view in
profiles and contracts (strict parsing, the hook view, the XML form), and the verdict on
the bundled real kernels, where ONE_REG and the guest disagree."""
from __future__ import annotations

import copy
import os
import subprocess

import pytest

from abiguard.arch.arm64 import a64, guest, judge
from abiguard.arch.arm64.section import Arm64Kvm
from abiguard.builtin import builtin_profiles
from abiguard.engine import verdict
from abiguard.errors import ContractError, ProfileError
from abiguard.model import contract, profile
from abiguard.xml.contract import from_element, to_xml_text
from helpers.realparts import need_commands

P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
CTR, DCZID, CLIDR = 0x603000000013D801, 0x603000000013D807, 0x603000000013C801
K61, K510, K612, K72 = "6.1.0-50-arm64", "5.10.0-32-arm64", "6.12.117+deb13-arm64", "7.2.13+deb14-arm64"


def _as(tmp_path, source: str) -> list[int]:
    need_commands("aarch64-linux-gnu-as", "aarch64-linux-gnu-objcopy")
    (tmp_path / "t.s").write_text(source)
    subprocess.run(["aarch64-linux-gnu-as", str(tmp_path / "t.s"), "-o", str(tmp_path / "t.o")], check=True)
    subprocess.run(["aarch64-linux-gnu-objcopy", "-O", "binary", str(tmp_path / "t.o"), str(tmp_path / "t.bin")],
                   check=True)
    data = (tmp_path / "t.bin").read_bytes()
    return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]


def test_every_instruction_form_is_what_gnu_as_assembles(tmp_path):
    """each encoder against the assembler, over every register the guest reads"""
    ours, text = [], []
    for enc in guest.REGISTERS + (guest.CSSELR_EL1, guest.CCSIDR_EL1):
        name = "S{}_{}_C{}_C{}_{}".format(*enc)
        text.append(f"mrs x7, {name}")
        ours.append(a64.mrs(7, enc))
    text += ["msr S3_2_C0_C0_0, x0", "msr elr_el1, x10", "mrs x9, esr_el1", "str x0, [x20, #8]",
             "str xzr, [x20, #32744]", "str x3, [x20, #0]", "movz x3, #0x1234, lsl #16", "movk x1, #0xc400, lsl #16",
             "movk x0, #0xffff, lsl #48", "movz x0, #0", "add x10, x10, #4", "hvc #0", "isb", "eret", "b ."]
    ours += [a64.msr((3, 2, 0, 0, 0), 0), a64.msr((3, 0, 4, 0, 1), 10), a64.mrs(9, (3, 0, 5, 2, 0)),
             a64.str_x(0, 20, 8), a64.str_x(31, 20, 32744), a64.str_x(3, 20, 0), a64.movz(3, 0x1234, 16),
             a64.movk(1, 0xC400, 16), a64.movk(0, 0xFFFF, 48), a64.movz(0, 0), a64.add_imm(10, 10, 4), a64.HVC0,
             a64.ISB, a64.ERET, a64.branch(0)]
    assert [hex(w) for w in _as(tmp_path, "\n".join(text) + "\n")] == [hex(w) for w in ours]
    with pytest.raises(ValueError):
        a64.str_x(0, 20, 4)


def test_the_whole_page_disassembles_to_the_program(tmp_path):
    """the page as objdump reads it: every slot stored once, every call made, the vector
    that steps over a trapped read at VBAR + 0x200"""
    need_commands("aarch64-linux-gnu-objdump")
    page, items = guest.program()
    (tmp_path / "page.bin").write_bytes(page)
    out = subprocess.run(["aarch64-linux-gnu-objdump", "-D", "-b", "binary", "-m", "aarch64",
                          str(tmp_path / "page.bin")], check=True, capture_output=True, text=True).stdout
    lines = [ln.split("\t") for ln in out.splitlines() if ln.startswith(" ") and "\t" in ln]
    code = ["\t".join(x.strip() for x in ln[2:]) for ln in lines if int(ln[0].strip(" :"), 16) >= guest.ENTRY]
    assert sum(c.startswith("hvc") for c in code) == len(guest.CALLS)
    stores = [c for c in code if c.startswith("str")]
    assert len(stores) == len(items) + 1 and stores[-1] == "str\txzr, [x20, #32744]"
    assert len({s for s in stores}) == len(stores)
    assert not any(c.startswith((".inst", "udf")) for c in code)
    at = {int(ln[0].strip(" :"), 16): "\t".join(x.strip() for x in ln[2:]) for ln in lines}
    assert at[0x200].startswith("mrs\tx9, esr_el1") and at[0x214] == "eret"
    assert at[0x000].startswith("mrs\tx9, esr_el1") and at[0x008] == "b\t0x8"


def test_view_keeps_the_caches_clidr_describes():
    answers = {CLIDR: 0x2000023, CTR: 0x8444C004, guest.DEMUX_CCSIDR | 0: 0x701FE00A,
               guest.DEMUX_CCSIDR | 1: 0x201FE012, guest.DEMUX_CCSIDR | 2: 0x70FFE07A,
               guest.DEMUX_CCSIDR | 3: 0x1234, "VENDOR_HYP_KVM_PTP": 0x1234_5678, "PSCI_VERSION": 0x10001}
    v = guest.view_of(answers, {0x603000000013C01B: 0x62000000}, 7)
    assert set(v["registers"]) == {hex(CLIDR), hex(CTR), "0x6020000000110000", "0x6020000000110001",
                                   "0x6020000000110002"}
    assert v["firmware"] == {"VENDOR_HYP_KVM_PTP": "0x0", "PSCI_VERSION": "0x10001"}
    assert v["faults"] == {"0x603000000013c01b": "0x62000000"} and v["exits"] == 7
    assert "FEAT_IDST" in guest.esr_class(0x62000000) and "UNDEFINED" in guest.esr_class(0x2000000)


#: registers whose guest view differs from KVM_GET_ONE_REG on the bundled kernels, in every
#: vCPU configuration (README, "The guest's view"); DCZID_EL0 is not in ONE_REG anywhere
DIFFERS_FROM_ONE_REG = {K510: {CTR}, K61: {CTR}}


def test_bundled_profiles_carry_the_guest_view_of_every_config():
    for name, path in P.items():
        s = profile.load(path).arch_section()
        assert isinstance(s, Arm64Kvm)
        for cname, c in s.configs.items():
            g = c.guest
            assert g is not None and not g.faults, (name, cname)
            assert g.exits == len(guest.program()[1]) + 1, (name, cname)
            assert set(g.firmware) == guest.CALL_KEYS, (name, cname)
            assert DCZID in g.registers and DCZID not in (c.registers or {}), (name, cname)
            differs = {r for r, v in g.registers.items() if r in (c.registers or {}) and c.registers[r] != v}
            assert differs == DIFFERS_FROM_ONE_REG.get(name, set()), (name, cname, differs)
    ctr61 = profile.load(P[K61]).arch_section().configs["psci"]  # type: ignore[union-attr]
    assert (ctr61.registers[CTR], ctr61.guest.registers[CTR]) == (0x9444C004, 0x8444C004)  # type: ignore[index,union-attr]


def _doc(name: str) -> dict:
    return copy.deepcopy(profile.load(P[name]).doc)


@pytest.mark.parametrize("change,grep", [
    (lambda g: g.update(extra=1), "must have exactly"),
    (lambda g: g["firmware"].update({"MADE_UP_CALL": "0x0"}), "does not make"),
    (lambda g: g["firmware"].update({"PSCI_VERSION": "0X10003"}), "PSCI_VERSION"),
    (lambda g: g["registers"].update({"0x6030000000140000": "0x1"}), "which the guest does not read"),
    (lambda g: g["registers"].update({"0x603000000013d807": 4}), "0x603000000013d807"),
    (lambda g: g["faults"].update({"nonsense": "0x0"}), "faults"),
    (lambda g: g.update(exits=1 << 40), "exits"),
    (lambda g: g.update(registers=[]), "registers"),
])
def test_profile_guest_view_is_parsed_strictly(change, grep):
    doc = _doc(K72)
    change(doc["kvm"]["aarch64"]["configs"]["psci"]["guest_view"])
    doc.pop("digest")
    doc["digest"] = profile.digest_of(doc)
    with pytest.raises(ProfileError, match=grep.replace("(", r"\(")):
        profile.Profile.from_json(doc, "t")


def test_hook_view_keeps_the_guest_view():
    p = profile.load(P[K61])
    back = profile.Profile.from_view(p.to_view())
    for name, c in p.arch_section().configs.items():  # type: ignore[union-attr]
        g, h = c.guest, back.arch_section().configs[name].guest  # type: ignore[union-attr]
        assert g is not None and h is not None
        assert (g.registers, g.firmware, g.faults, g.exits) == (h.registers, h.firmware, h.faults, h.exits)
    from abiguard.arch.arm64 import section

    for bad in (({"x": 1}, {}, {}, 0), ({}, {1: 1}, {}, 0), ({}, {}, {1.5: 1}, 0), ({}, {}, {}, "0"), ({}, {}, {})):
        with pytest.raises(ValueError):
            section._guest_from_view(bad)


def test_contract_carries_what_its_guest_saw_and_round_trips_through_xml():
    c61 = contract.from_profile(profile.load(P[K61]), "psci")
    body = c61.body
    assert body.guest[CTR] == ("value", 0x8444C004) and body.values[CTR] == 0x9444C004  # type: ignore[union-attr]
    assert body.guest[DCZID] == ("value", 0x4) and body.guest["PSCI_VERSION"] == ("value", 0x10001)  # type: ignore[union-attr]
    assert CLIDR not in body.guest  # type: ignore[union-attr]   # what ONE_REG says already
    back = from_element(_element(to_xml_text(c61)), "xml")
    assert back == c61 and back.body.guest == body.guest  # type: ignore[union-attr]
    doc = c61.to_json()
    doc["aarch64"]["guest"][hex(CTR)] = "0x9444c004"
    with pytest.raises(ContractError):
        contract.Contract.from_json(doc, "tampered")         # the digest covers the guest view
    for bad in ({"PSCI_VERSION": "esr:zz"}, {"0x6030000000140000": "0x1"}, {"NOT_A_CALL": "0x0"}, []):
        doc = c61.to_json()
        doc["aarch64"]["guest"] = bad
        with pytest.raises(ContractError):
            contract.seal_json(doc, "bad")


def _element(text: str):
    from lxml import etree

    return etree.fromstring(text.encode())


def _problems(src: str, dst: str, config: str = "psci") -> list:
    c = contract.from_profile(profile.load(P[src]), config)
    return verdict.check(c, profile.load(P[dst]), verdict.Policy()).problems


def _check(src: str, dst: str | profile.Profile, config: str = "psci") -> verdict.Verdict:
    c = contract.from_profile(profile.load(P[src]), config)
    return verdict.check(c, dst if isinstance(dst, profile.Profile) else profile.load(P[dst]), verdict.Policy())


def _edited(name: str, edit) -> profile.Profile:
    doc = _doc(name)
    edit(doc)
    doc.pop("digest")
    doc["digest"] = profile.digest_of(doc)
    return profile.Profile.from_json(doc, "t")


def test_the_guest_view_decides_where_one_reg_does_not_say_it():
    """6.1 -> 7.2: KVM takes 6.1's stream and both ONE_REG values of CTR_EL0 agree, but
    6.1's guest read the CPU's IDC=0 and 7.2 gives its guest the VM's value, IDC=1 (the
    arm64 lab's bookworm -> sid move, where the guest's CTR_EL0 changed 8444c004 ->
    9444c004). 7.2 takes a written CTR_EL0 (Linux >= 6.11): the move is allowed with the
    guest's value pinned there and QEMU's stream keeping 6.1's ONE_REG value (issue 25's
    G/S pin); a VM with no pins (``unpinned``) would see it change."""
    v = _check(K61, K72)
    assert v.problems == [] and v.boot_pins[CTR] == 0x8444C004 and v.stream_values == {CTR: 0x9444C004}
    assert any(n.startswith("CTR_EL0 (0x603000000013d801) pinned to 0x8444c004") for n in v.notes), v.notes
    [un] = v.unpinned
    assert (un.reg_id, un.field, un.source, un.destination) == (
        CTR, "IDC", "0x8444c004 as its guest read it", "would give the guest 0x9444c004")
    assert un.pinnable
    # a destination that traps the read but cannot take the guest's value (CTR_EL0 outside
    # its writable mask, as before 6.11) refuses, naming the register, field and both values
    fixed = _edited(K72, lambda d: d["kvm"]["aarch64"]["writable_masks"].update(CTR_EL0="0x0"))
    ctr = [p for p in _check(K61, fixed).problems if p.reg_id == CTR]
    assert len(ctr) == 1 and ctr[0].field == "IDC" and ctr[0].source == "0x8444c004 as its guest read it", ctr
    assert "0x9444c004" in ctr[0].destination and "no pin here shows the guest what it read" in ctr[0].why
    # a destination that does not trap the read shows the CPU's own value: no pin helps
    back = [p for p in _check(K72, K61).problems if p.reg_id == CTR]
    assert (back[0].source, back[0].destination) == ("0x9444c004 as its guest read it",
                                                     "would give the guest 0x8444c004")
    # 5.10 and 6.1 guests both read the CPU's value: no guest-view problem between them
    assert not [p for p in _check(K510, K61).problems if p.reg_id == CTR or p.reg_id is None]
    assert not [p for p in _check(K612, K72).problems if p.reg_id in (CTR, DCZID) or p.reg_id is None]


def test_a_firmware_answer_or_a_trap_that_differs_refuses():
    """where the firmware registers agree, an answer the guest gets otherwise is the guest
    view's to judge; a read that traps on one side only too"""
    c = contract.from_profile(profile.load(P[K72]), "psci")
    doc = _doc(K72)
    g = doc["kvm"]["aarch64"]["configs"]["psci"]["guest_view"]
    g["firmware"]["PSCI_FEATURES(SYSTEM_SUSPEND)"] = "0x0"
    g["faults"]["0x603000000013c01b"] = "0x62000000"
    doc.pop("digest")
    doc["digest"] = profile.digest_of(doc)
    dest = profile.Profile.from_json(doc, "t")
    names = {p.register: p for p in verdict.check(c, dest, verdict.Policy()).problems}
    assert names["PSCI_FEATURES(SYSTEM_SUSPEND)"].source == "0xffffffffffffffff as its guest read it"
    assert names["PSCI_FEATURES(SYSTEM_SUSPEND)"].destination == "would give the guest 0x0"
    trap = [p for p in names.values() if p.reg_id == 0x603000000013C01B][0]
    assert "FEAT_IDST" in trap.destination and "0x0 as its guest read it" == trap.source


def test_a_destination_without_a_guest_view_is_refused_and_an_old_contract_judged_on_the_destination():
    doc = _doc(K72)
    doc["kvm"]["aarch64"]["configs"]["psci"]["guest_view"] = None
    doc.pop("digest")
    doc["digest"] = profile.digest_of(doc)
    dest = profile.Profile.from_json(doc, "t")
    c = contract.from_profile(profile.load(P[K72]), "psci")
    assert [p.register for p in verdict.check(c, dest, verdict.Policy()).problems] == ["guest view"]
    # a contract sealed before guest views (none recorded): the destination's own guest
    # view still decides where it differs from its ONE_REG (7.2's contract onto 6.1: CTR_EL0)
    old = contract.seal(c.arch, c.machine_type, c.origin, c.body.replace(guest={}))  # type: ignore[union-attr]
    s61 = profile.load(P[K61])
    probed = judge.section_of(s61).usable("psci")  # type: ignore[union-attr]
    dest, _ = judge.dest_for(s61, "psci")
    assert dest is not None and dest.guest is probed.guest                           # the profile's own view
    ctr = judge.guest_here(old.body, dest, judge.section_of(s61).name_of).problems  # type: ignore[arg-type,union-attr]
    assert [p.reg_id for p in ctr] == [CTR] and ctr[0].source == "0x9444c004 as its guest read it"


def test_a_profile_without_a_guest_view_falls_back_to_the_lab_record_and_says_so():
    """guestreads: a 6.1 profile with no guest view (probed before guest views) is matched
    to the arm64 lab's record of 6.1 (data/guest-reads/arm64.json) for CTR_EL0 alone; the
    verdict says where that came from, and judges the rest as unknown"""
    from abiguard.arch.arm64 import guestreads

    s61 = _edited(K61, lambda d: [c.update(guest_view=None) for c in d["kvm"]["aarch64"]["configs"].values()])
    view = guestreads.guest_view(s61, "psci")
    assert view is not None and view.registers == {CTR: 0x8444C004} and "arm64 lab's record" in view.partial
    c72 = contract.from_profile(profile.load(P[K72]), "psci")
    v = verdict.check(c72, s61, verdict.Policy())
    assert any("arm64 lab's record of 6.1.0-50-arm64" in n for n in v.notes), v.notes
    assert {p.register for p in v.problems} >= {"CTR_EL0", "guest view"}
    # a 6.1 contract sealed from it records what the lab saw its guest read
    assert contract.from_profile(s61, "psci").body.guest == {CTR: ("value", 0x8444C004)}  # type: ignore[union-attr]
    doc = __import__("abiguard.engine.baseline", fromlist=["compute"]).compute([s61, profile.load(P[K72])])
    assert any("arm64 lab's record" in x for x in doc["conflicts"]), doc["conflicts"]


def test_a_baseline_records_what_a_guest_born_in_the_fleet_reads():
    """{6.1, 7.2}: 6.1's guest reads the CPU's CTR_EL0 and nothing changes it there; 7.2
    traps the read and takes a written one, so the contract records 6.1's guest value and
    7.2 pins it (no conflict); {5.10, 7.2} likewise, 5.10's value known from its profile's
    guest view. Hosts whose guests no pin changes and that disagree are a conflict."""
    from abiguard.engine import baseline

    for old in (K61, K510):
        doc = baseline.compute([profile.load(P[old]), profile.load(P[K72])])
        assert not [x for x in doc["conflicts"] if "CTR_EL0" in x], doc["conflicts"]
        c = contract.Contract.from_json(doc["contract"], "baseline")
        assert c.body.guest[CTR] == ("value", 0x8444C004)  # type: ignore[union-attr]
        assert c.body.values[CTR] == 0x9444C004  # type: ignore[union-attr]
        assert from_element(_element(to_xml_text(c)), "xml") == c     # as abiguard pin writes it
        host72 = doc["hosts"][P[K72]]
        assert host72["boots_with_contract"], host72
        assert "CTR_EL0 = 0x8444c004 (abiguard_pin.so at start; QEMU's stream carries 0x9444c004)" in host72["pins"]
        # 5.10's SMCCC_ARCH_WORKAROUND_3 level (2) rides in a VM started there, and 7.2's KVM
        # refuses it (its own is 0): no contract of the two is written, whatever CTR_EL0 does
        assert host72["accepts_incoming"] == (old == K61), host72
        assert doc["outcome"]["verdict"] == ("written" if old == K61 else "refused"), doc["outcome"]
    # two hosts that do not trap the read, whose guests read different values: a conflict
    other = _edited(K510, lambda d: [c["guest_view"]["registers"].update({f"{CTR:#x}": "0x8444c003"})
                                     for c in d["kvm"]["aarch64"]["configs"].values() if c.get("guest_view")])
    doc = baseline.compute([profile.load(P[K61]), other], config="psci")
    ctr = [c for c in doc["conflicts"] if c.startswith("CTR_EL0: the hosts' guests read")]
    assert len(ctr) == 1 and "0x8444c004 on" in ctr[0] and "0x8444c003 on" in ctr[0], doc["conflicts"]
    same = baseline.compute([profile.load(P[K612]), profile.load(P[K72])])
    assert not [x for x in same["conflicts"] if "guests read" in x], same["conflicts"]
    body = contract.Contract.from_json(same["contract"], "baseline").body
    assert body.guest[DCZID] == ("value", 0x4) and CTR not in body.guest  # type: ignore[union-attr]
