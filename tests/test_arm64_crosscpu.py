"""The engine's answers across arm64 CPU models (issue 16), against the bundled real kernels'
profiles (Linux 6.12 and 7.2 probed on QEMU's cortex-a72 and neoverse-n1): which CPU a
guest may be moved to, what pinning MIDR/REVIDR/AIDR takes, what a mixed fleet's baseline
gives, and how a contract's implementation CPUs are read, written and refused."""
from __future__ import annotations

import json
import os

import pytest
from lxml import etree

from abiguard.arch.arm64 import regs
from abiguard.arch.arm64.pins import for_start
from abiguard.builtin import builtin_profiles
from abiguard.engine import baseline, verdict
from abiguard.errors import ContractError, EnforceError
from abiguard.model import contract, pins as enforce, profile
from abiguard.xml import contract as contract_xml

P = {os.path.basename(p)[:-5]: profile.load(p) for p in builtin_profiles()}
A72_7, N1_7 = P["7.2.13+deb14-arm64-cortex-a72"], P["7.2.13+deb14-arm64-neoverse-n1"]
A72_6, N1_6 = P["6.12.117+deb13-arm64-cortex-a72"], P["6.12.117+deb13-arm64-neoverse-n1"]
MIDR = regs.MIDR_EL1_ID
A57 = 0x411FD070       # another CPU of the same generation (QEMU's cortex-a57)


def own(p: profile.Profile) -> int:
    return int(p.doc["kvm"]["aarch64"]["configs"]["psci+pmu"]["registers"][f"{MIDR:#x}"], 16)


def shown_another(p: profile.Profile, cpus: list[tuple[int, int, int]] | None) -> contract.Contract:
    """A contract booted on *p* whose guest is shown QEMU's cortex-a57 (and told *cpus*)."""
    doc = contract.from_profile(p, "psci+pmu").to_json()
    doc["aarch64"]["values"][f"{MIDR:#x}"] = hex(A57)
    if cpus is not None:
        doc["aarch64"]["values"][f"{regs.VENDOR_HYP_BMAP_2_ID:#x}"] = "0x3"
        doc["aarch64"]["impl_cpus"] = [{"midr": hex(m), "revidr": hex(r), "aidr": hex(a)} for m, r, a in cpus]
    return contract.seal_json(doc)


def test_a_guest_is_moved_only_to_a_cpu_it_was_told_about() -> None:
    c = shown_another(A72_7, None)
    v = verdict.check(c, A72_7)
    bad = [p for p in v.problems if p.register == "MIDR_EL1"]
    assert bad and bad[0].pinnable and bad[0].source == hex(A57) and bad[0].destination == f"has {own(A72_7):#x}"
    assert "was not told about it" in bad[0].why and "abiguard baseline" in bad[0].fix
    told = shown_another(A72_7, [(A57, 0, 0), (own(A72_7), 0, 0)])
    v = verdict.check(told, A72_7)
    assert v.allow, [p.line() for p in v.problems]
    assert v.boot_pins[MIDR] == A57 and v.boot_pins[regs.VENDOR_HYP_BMAP_2_ID] == 3


def test_a_kernel_without_the_capability_cannot_show_another_midr() -> None:
    v = verdict.check(contract.from_profile(A72_7, "psci+pmu"), N1_6)
    bad = [p for p in v.problems if p.register == "MIDR_EL1"]
    assert bad and not bad[0].pinnable and "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS" in bad[0].why, v.problems
    assert "6.15" in bad[0].why


def test_a_vm_booted_before_6_16_can_never_be_told() -> None:
    """its stream has no VENDOR_HYP_BMAP_2, and a stream never gains a register"""
    v = verdict.check(contract.from_profile(A72_6, "psci+pmu"), N1_7)
    bad = [p for p in v.problems if p.register == "MIDR_EL1"]
    assert bad and not bad[0].pinnable and "VENDOR_HYP_BMAP_2" in bad[0].why, [p.line() for p in v.problems]


def test_the_matrix_says_pin_first_only_where_a_pin_helps() -> None:
    same_gen = verdict.check_pair(A72_7, A72_7)
    assert same_gen.allow
    v = verdict.check_pair(A72_6, N1_7)
    assert not v.allow and any(p.register == "MIDR_EL1" and not p.pinnable for p in v.problems)


def test_a_mixed_fleet_baseline_shows_the_first_cpu_and_tells_all() -> None:
    doc = baseline.compute([A72_7, N1_7])
    body = doc["contract"]["aarch64"]
    assert int(body["values"][f"{MIDR:#x}"], 16) == own(A72_7)
    assert [int(c["midr"], 16) for c in body["impl_cpus"]] == [own(A72_7), own(N1_7)]
    assert int(body["values"][f"{regs.VENDOR_HYP_BMAP_2_ID:#x}"], 16) == regs.DISCOVER_IMPL_BITS
    n1 = doc["hosts"][N1_7.label]
    # what KVM cannot make equal between these two models is said, per register and field
    assert not n1["boots_with_contract"]
    assert any("ID_AA64PFR0_EL1" in ln and "FP" in ln for ln in n1["cannot_pin"]), n1["cannot_pin"]
    assert any(ln.startswith("MIDR_EL1 = ") for ln in n1["pins"]), n1["pins"]
    a72 = doc["hosts"][A72_7.label]
    assert a72["boots_with_contract"], a72


def test_a_fleet_with_an_older_kernel_has_a_conflict_and_no_cpu_list() -> None:
    doc = baseline.compute([A72_7, N1_6])
    assert "impl_cpus" not in doc["contract"]["aarch64"]
    assert int(doc["contract"]["aarch64"]["values"][f"{MIDR:#x}"], 16) == own(A72_7)     # shows one CPU
    assert any("KVM_CAP_ARM_WRITABLE_IMP_ID_REGS" in c and "6.12" in c for c in doc["conflicts"]), doc["conflicts"]


def test_one_cpu_model_gives_the_contract_it_always_gave() -> None:
    """no impl_cpus member, no discovery bits: contracts of one-model fleets keep their digests"""
    doc = baseline.compute([A72_7, A72_7.with_label("again")])
    body = doc["contract"]["aarch64"]
    assert "impl_cpus" not in body and int(body["values"][f"{regs.VENDOR_HYP_BMAP_2_ID:#x}"], 16) == 0


def test_pins_carry_the_cpu_list_to_the_library() -> None:
    told = shown_another(A72_7, [(A57, 0, 0), (own(A72_7), 0, 0)])
    text = enforce.env_value(for_start(told, A72_7))
    assert text.endswith(f",cpu={A57:#x}/0x0/0x0,cpu={own(A72_7):#x}/0x0/0x0"), text
    assert f"{MIDR:#018x}={A57:#x}" in text
    with pytest.raises(EnforceError, match="KVM_CAP_ARM_WRITABLE_IMP_ID_REGS"):
        for_start(shown_another(N1_6, None), N1_6)


def test_cpu_list_survives_the_xml_form() -> None:
    told = shown_another(A72_7, [(A57, 0, 0), (own(A72_7), 0x5, 0x7)])
    text = contract_xml.to_xml_text(told)
    back = contract_xml.from_element(etree.fromstring(text.encode()), "x")
    assert back.digest == told.digest and back.body.impl_cpus == ((A57, 0, 0), (own(A72_7), 5, 7))
    one = contract.from_profile(A72_7, "psci+pmu")
    assert "<abiguard:cpu" not in contract_xml.to_xml_text(one)


def _with(mutate) -> dict:
    doc = shown_another(A72_7, [(A57, 0, 0), (own(A72_7), 0, 0)]).to_json()
    mutate(doc["aarch64"])
    return doc


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.__setitem__("impl_cpus", []), "1..16 CPUs"),
    (lambda b: b.__setitem__("impl_cpus", "0x1"), "1..16 CPUs"),
    (lambda b: b["impl_cpus"].__setitem__(0, {"midr": "0x1"}), "exactly 'midr', 'revidr' and 'aidr'"),
    (lambda b: b["impl_cpus"][0].__setitem__("extra", "0x1"), "exactly 'midr', 'revidr' and 'aidr'"),
    (lambda b: b["impl_cpus"][0].__setitem__("midr", 1), "hex string"),
    (lambda b: b["impl_cpus"][0].__setitem__("midr", "0x1ffffffff"), "fit in 32 bits"),
    (lambda b: b["impl_cpus"].append(dict(b["impl_cpus"][0])), "repeats an earlier CPU"),
    (lambda b: b["impl_cpus"].extend({"midr": hex(i), "revidr": "0x0", "aidr": "0x0"} for i in range(1, 16)),
     "1..16 CPUs"),
    (lambda b: b["values"].__setitem__(f"{regs.VENDOR_HYP_BMAP_2_ID:#x}", "0x1"), "bits 0x3"),
    (lambda b: b["values"].__setitem__(f"{MIDR:#x}", "0x412fd050"), "the contract's own CPU"),
    (lambda b: b.pop("impl_cpus"), "'impl_cpus' is missing"),
])
def test_hostile_cpu_lists_are_refused(mutate, message) -> None:
    with pytest.raises(ContractError, match=message.replace("(", r"\(").replace(".", r"\.")):
        contract.seal_json(_with(mutate))


def test_hostile_cpu_elements_in_xml_are_refused() -> None:
    told = shown_another(A72_7, [(A57, 0, 0), (own(A72_7), 0x5, 0x7)])
    text = contract_xml.to_xml_text(told).replace(' revidr="0x0"', "", 1)
    with pytest.raises(ContractError):
        contract_xml.from_element(etree.fromstring(text.encode()), "x")
    swapped = contract_xml.to_xml_text(told).replace(' aidr="0x7"', ' aidr="0x8"', 1)
    with pytest.raises(ContractError, match="digest"):     # an edited list breaks the seal
        contract_xml.from_element(etree.fromstring(swapped.encode()), "x")
    assert json.dumps(told.to_json())       # the JSON form stays plain JSON
