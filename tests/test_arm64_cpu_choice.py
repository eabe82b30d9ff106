"""The CPU an arm64 guest is shown under a contract of several CPU models (issue 28):
``baseline --cpu`` and ``pin --cpu`` choose it among the contract's ``impl_cpus`` (a MIDR, a
model Linux names, a host's profile), refuse any other naming the choices, and ``status``
says it; what a guest kernel older than 6.16 misses under such a contract, by Linux's own
errata table (data/errata/arm64.json, written by packaging/gen-arm64-errata from Debian's
linux-source-7.2), which the crosscpu lab holds to what each model's guest enables."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from abiguard.arch.arm64 import cpus, errata, regs
from abiguard.builtin import builtin_profiles
from abiguard.engine import baseline
from abiguard.errors import AbiguardError, UsageError
from abiguard.model import contract, profile

REPO = Path(__file__).resolve().parent.parent
GEN = REPO / "packaging" / "gen-arm64-errata"
PATHS = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
A72_PATH, N1_PATH = PATHS["7.2.13+deb14-arm64-cortex-a72"], PATHS["7.2.13+deb14-arm64-neoverse-n1"]
A72, N1 = profile.load(A72_PATH).with_label(A72_PATH), profile.load(N1_PATH).with_label(N1_PATH)
MIDR = regs.MIDR_EL1_ID
#: QEMU's cortex-a57 (r1p0) and cortex-a72 (r0p3): the lab's hosts
A57_MIDR, A72_MIDR = 0x411FD070, 0x410FD083


def own(p: profile.Profile) -> tuple[int, int, int]:
    cpu = cpus.profile_cpu(p, "psci+pmu")
    assert cpu is not None
    return cpu


def two_models() -> contract.Contract:
    return contract.Contract.from_json(baseline.compute([A72, N1])["contract"], "test")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "abiguard", *args], capture_output=True, text=True, timeout=120)


# --- choosing the CPU ---

@pytest.mark.parametrize("how", ["neoverse-n1", "NEOVERSE_N1", "MIDR_NEOVERSE_N1", "hex", "label"])
def test_the_operator_chooses_any_cpu_of_the_contract(how: str) -> None:
    c = two_models()
    n1 = own(N1)
    text = {"hex": hex(n1[0]), "label": N1.label}.get(how, how)
    chosen = cpus.choose(c, text, cpus.labels([A72, N1], c))
    assert chosen == n1
    shown = cpus.show(c, chosen)
    assert shown.body.own_cpu() == n1 and shown.body.impl_cpus == c.body.impl_cpus
    assert shown.digest != c.digest
    # it is a contract like any other: it reads back, its own CPU among those it tells
    assert contract.Contract.from_json(shown.to_json(), "again").digest == shown.digest
    assert cpus.show(c, own(A72)) is c          # the CPU already shown: the same contract


@pytest.mark.parametrize("text, said", [
    ("cortex-a57", "is not one of the CPUs the contract tells the guest"),
    ("0x411fd070", "MIDR 0x411fd070 is not one of"),
    ("0xnothex", "not a hex MIDR"),
    ("pentium", "neither a MIDR"),
    ("\x1b[2Jevil", "neither a MIDR"),
])
def test_a_cpu_the_contract_does_not_tell_is_refused_naming_the_choices(text: str, said: str) -> None:
    c = two_models()
    with pytest.raises(UsageError) as e:
        cpus.choose(c, text)
    msg = str(e.value)
    assert said in msg and "\x1b" not in msg, msg
    if "hex" not in said:
        assert f"{own(A72)[0]:#x} (cortex-a72" in msg and f"{own(N1)[0]:#x} (neoverse-n1" in msg, msg


def test_one_cpu_model_offers_its_own_cpu_only() -> None:
    c = contract.from_profile(A72, "psci+pmu")
    assert cpus.choose(c, "cortex-a72") == own(A72)
    with pytest.raises(UsageError, match="one CPU model: the contract tells the guest no other"):
        cpus.choose(c, "neoverse-n1")


def test_baseline_cpu_on_the_command_line() -> None:
    """--cpu re-seals the baseline showing the chosen CPU before any host is asked. The two
    bundled 7.2 models have no contract both boot and accept (ID fields 7.2's KVM cannot
    lower: issue 24's invariant refuses it, exit 1), so the document is read from --json,
    which prints it with its outcome either way; the lab's cortex-a57/a72 pair, which holds,
    writes it (tests/test_armfleet_crosscpu.py)."""
    d = cli("baseline", A72_PATH, N1_PATH, "--qemu", "11.1", "--json")
    p = cli("baseline", A72_PATH, N1_PATH, "--qemu", "11.1", "--cpu", N1_PATH, "--json")
    assert d.returncode == p.returncode == 1, (d.stderr, p.stderr)
    default, doc = json.loads(d.stdout), json.loads(p.stdout)
    assert not doc["outcome"]["holds"] and "no contract written" in p.stderr
    body = doc["contract"]["aarch64"]
    assert int(body["values"][f"{MIDR:#x}"], 16) == own(N1)[0]
    assert body["impl_cpus"] == default["contract"]["aarch64"]["impl_cpus"]
    # every host's answer is for the re-sealed contract: the library now pins MIDR_EL1 on
    # the cortex-a72 host, not on the neoverse-n1
    def midr_pins(d: dict, h: str) -> list[str]:
        return [x for x in d["hosts"][h]["pins"] if x.startswith("MIDR_EL1 = ")]

    assert midr_pins(default, N1_PATH) == [f"MIDR_EL1 = {own(A72)[0]:#x} (abiguard_pin.so at start)"]
    assert midr_pins(doc, A72_PATH) == [f"MIDR_EL1 = {own(N1)[0]:#x} (abiguard_pin.so at start)"]
    assert midr_pins(doc, N1_PATH) == [] and midr_pins(default, A72_PATH) == []
    assert doc["older_guests"], doc.get("older_guests")
    bad = cli("baseline", A72_PATH, N1_PATH, "--cpu", "cortex-a57")
    assert bad.returncode == 2 and "choose one of" in bad.stderr and "neoverse-n1" in bad.stderr, bad.stderr


def test_pin_cpu_is_an_option_of_pin() -> None:
    """``pin --cpu`` reaches libvirt only after the choice is checked: a wrong CPU exits 2
    before any connection (the lab pins with it; tests/test_armfleet_crosscpu.py)"""
    p = cli("pin", "--baseline", A72_PATH, "--cpu", "cortex-a57", "-c", "test:///nonexistent", "dom")
    assert p.returncode == 2 and "choose one of" in p.stderr and "cortex-a72" in p.stderr, p.stderr
    assert "--cpu" in cli("pin", "--help").stdout
    p = cli("pin", "--cpu", "cortex-a72", "-c", "test:///nonexistent", "dom")
    assert p.returncode == 2 and "give it with --baseline" in p.stderr, p.stderr


def test_status_says_the_cpu_shown_and_told() -> None:
    c = two_models()
    said = cpus.shown(cpus.show(c, own(N1)))
    assert said is not None and said.startswith(f"shown {own(N1)[0]:#x} (neoverse-n1")
    assert "told 2 CPUs" in said and "cortex-a72" in said
    assert "told" not in (cpus.shown(contract.from_profile(A72, "psci+pmu")) or "")


# --- what a guest older than 6.16 misses, by Linux's errata table ---

def test_the_table_knows_what_the_lab_measured() -> None:
    """the errata QEMU's cortex-a57 (r1p0), cortex-a72 (r0p3), cortex-a53 (r0p4) and
    cortex-a35 (r1p0) guests enable under Linux 7.2, as the crosscpu lab recorded them
    unpinned (the lab checks this table against its own run each time:
    test_linux_guest_reports_every_cpu_it_may_run_on)"""
    a57 = {d for d in errata.applies(A57_MIDR, 0) if d.startswith("ARM errat")}
    a72 = {d for d in errata.applies(A72_MIDR, 0) if d.startswith("ARM errat")}
    assert a57 == {"ARM errata 1165522, 1319367, or 1530923", "ARM erratum 1742098", "ARM erratum 832075",
                   "ARM erratum 834220"}
    assert a72 == {"ARM errata 1165522, 1319367, or 1530923", "ARM erratum 1742098"}
    assert errata.missed(((A72_MIDR, 0, 0), (A57_MIDR, 0, 0)), (A72_MIDR, 0)) == {
        A57_MIDR: ["ARM erratum 832075", "ARM erratum 834220"]}
    assert errata.missed(((A72_MIDR, 0, 0), (A57_MIDR, 0, 0)), (A57_MIDR, 0)) == {}
    # revisions outside a range, and REVIDR bits that say a revision is fixed
    assert "ARM erratum 832075" not in errata.applies(0x412FD070, 0)          # r2p0
    a53_r0p4 = 0x410FD034
    assert "ARM erratum 843419" in errata.applies(a53_r0p4, 0)
    assert "ARM erratum 843419" not in errata.applies(a53_r0p4, 1 << 8)       # MIDR_FIXED(0x4, BIT(8))
    assert errata.model_name(A57_MIDR) == "cortex-a57" and errata.describe(A72_MIDR) == "0x410fd083 (cortex-a72 r0p3)"
    # the crosscpu lab's models since issue 28: QEMU's cortex-a53 (r0p4) and cortex-a35 (r1p0)
    a35_r1p0 = 0x411FD040
    assert {d for d in errata.applies(a53_r0p4, 0) if d.startswith("ARM errat")} == {
        "ARM erratum 843419", "ARM erratum 845719"}
    assert [d for d in errata.applies(a35_r1p0, 0) if d.startswith("ARM errat")] == []
    assert errata.missed(((a35_r1p0, 0, 0), (a53_r0p4, 0, 0)), (a35_r1p0, 0)) == {
        a53_r0p4: ["ARM erratum 843419", "ARM erratum 845719"]}
    assert errata.describe(a35_r1p0) == "0x411fd040 (cortex-a35 r1p0)"


def test_baseline_and_pin_say_what_an_older_guest_misses() -> None:
    doc = json.loads(cli("baseline", A72_PATH, N1_PATH, "--json").stdout)
    assert doc["older_guests"] == cpus.older_guests(two_models())
    c = contract.seal_json(_told(A72_MIDR, [(A72_MIDR, 0, 0), (A57_MIDR, 0, 0)]))
    note = cpus.older_guests(c)
    assert len(note) == 1 and "older than 6.16" in note[0] and "0x410fd083 (cortex-a72 r0p3)" in note[0]
    assert "on 0x411fd070 (cortex-a57 r1p0): ARM erratum 832075, ARM erratum 834220" in note[0], note
    assert "Linux 7.2.13" in note[0]
    assert cpus.older_guests(contract.from_profile(A72, "psci+pmu")) == []


def _told(shown: int, told: list[tuple[int, int, int]]) -> dict:
    doc = contract.from_profile(A72, "psci+pmu").to_json()
    doc["aarch64"]["values"][f"{MIDR:#x}"] = hex(shown)
    doc["aarch64"]["values"][f"{regs.REVIDR_EL1_ID:#x}"] = "0x0"
    doc["aarch64"]["values"][f"{regs.AIDR_EL1_ID:#x}"] = "0x0"
    doc["aarch64"]["values"][f"{regs.VENDOR_HYP_BMAP_2_ID:#x}"] = "0x3"
    doc["aarch64"]["impl_cpus"] = [{"midr": hex(m), "revidr": hex(r), "aidr": hex(a)} for m, r, a in told]
    return doc


# --- the generator and its table ---

CPUTYPE = """
#define ARM_CPU_IMP_ARM\t\t0x41
#define ARM_CPU_PART_CORTEX_A53\t\t0xD03
#define ARM_CPU_PART_CORTEX_A57\t\t0xD07
#define MIDR_CORTEX_A53 MIDR_CPU_MODEL(ARM_CPU_IMP_ARM, ARM_CPU_PART_CORTEX_A53)
#define MIDR_CORTEX_A57 MIDR_CPU_MODEL(ARM_CPU_IMP_ARM, ARM_CPU_PART_CORTEX_A57)
"""
ERRATA_C = """
#ifdef CONFIG_LIST
static const struct midr_range a_list[] = {
\t/* Cortex-A53 r0p[01] */
\tMIDR_REV_RANGE(MIDR_CORTEX_A53, 0, 0, 1),
#if defined(CONFIG_X) || \\
\tdefined(CONFIG_Y)
\tMIDR_ALL_VERSIONS(MIDR_CORTEX_A57),
#endif
\t{},
};
#endif
static const struct arm64_cpu_capabilities multi[] = {
\t{
\t\t.matches = is_affected_midr_range,
\t\tERRATA_MIDR_REV_RANGE(MIDR_CORTEX_A53, 0, 0, 4),
\t\tMIDR_FIXED(MIDR_CPU_VAR_REV(0, 4), BIT(8)),
\t},
\t{},
};
const struct arm64_cpu_capabilities arm64_errata[] = {
#ifdef CONFIG_ARM64_ERRATUM_1
\t{
\t/* Cortex-A57 r0p0 - r1p2 */
\t\t.desc = "ARM erratum 1",
\t\t.capability = ARM64_WORKAROUND_1,
\t\tERRATA_MIDR_RANGE(MIDR_CORTEX_A57,
\t\t\t\t  0, 0,
\t\t\t\t  1, 2),
\t},
#endif
\t{
\t\t.desc = "ARM errata 2, " "or 3",
\t\t.capability = ARM64_WORKAROUND_2,
\t\tERRATA_MIDR_RANGE_LIST(a_list),
\t},
\t{
\t\t.desc = "ARM erratum 4",
\t\t.capability = ARM64_WORKAROUND_4,
\t\t.matches = cpucap_multi_entry_cap_matches,
\t\t.match_list = multi,
\t},
\t{
\t\t.desc = "Spectre-v9",
\t\t.capability = ARM64_SPECTRE_V9,
\t\t.matches = has_spectre_v9,
\t},
\t{
\t},
};
"""


def test_generator_on_a_synthetic_tree(tmp_path: Path) -> None:
    for rel, text in (("arch/arm64/include/asm/cputype.h", CPUTYPE), ("arch/arm64/kernel/cpu_errata.c", ERRATA_C),
                      ("Makefile", "VERSION = 6\nPATCHLEVEL = 15\nSUBLEVEL = 2\n")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, str(GEN), str(tmp_path), "--origin", "synthetic", "-o", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["source"]["kernel"] == "6.15.2" and doc["source"]["origin"] == "synthetic"
    assert doc["generated_by"] == "packaging/gen-arm64-errata"
    assert doc["models"] == {"MIDR_CORTEX_A53": {"implementer": "0x41", "part": "0xd03"},
                             "MIDR_CORTEX_A57": {"implementer": "0x41", "part": "0xd07"}}
    e = {x["desc"]: x for x in doc["errata"]}
    assert list(e) == ["ARM erratum 1", "ARM errata 2, or 3", "ARM erratum 4", "Spectre-v9"]
    assert [(r["model"], r["from"], r["to"]) for r in e["ARM erratum 1"]["ranges"]] == [
        ("MIDR_CORTEX_A57", [0, 0], [1, 2])]
    assert e["ARM erratum 1"]["config"] == ["CONFIG_ARM64_ERRATUM_1"]
    assert [(r["model"], r["from"], r["to"]) for r in e["ARM errata 2, or 3"]["ranges"]] == [
        ("MIDR_CORTEX_A53", [0, 0], [0, 1]), ("MIDR_CORTEX_A57", [0, 0], [15, 15])]
    assert e["ARM erratum 4"]["fixed"] == [[0, 4, 256]] and e["ARM erratum 4"]["matches"] is None
    assert e["Spectre-v9"]["ranges"] == [] and e["Spectre-v9"]["matches"] == "has_spectre_v9"


def test_the_committed_table_says_where_it_came_from() -> None:
    doc = json.loads((REPO / "plugin/abiguard/data/errata/arm64.json").read_text())
    assert doc["generated_by"] == "packaging/gen-arm64-errata"
    assert doc["source"]["kernel"] == "7.2.13" and "linux-source-7.2 7.2.13-1" in doc["source"]["origin"]
    assert doc["source"]["files"] == ["arch/arm64/kernel/cpu_errata.c", "arch/arm64/include/asm/cputype.h"]
    assert len(doc["errata"]) > 30 and "MIDR_NEOVERSE_N1" in doc["models"]


@pytest.mark.parametrize("text", ["", "[]", '{"models": {}, "errata": [{"desc": 1}], "source": {}}',
                                  '{"models": {"MIDR_X": {"implementer": "zz", "part": "0x1"}}, "errata": [], '
                                  '"source": {"kernel": "1"}}'])
def test_a_malformed_table_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    bad = tmp_path / "arm64.json"
    bad.write_text(text)
    monkeypatch.setattr(errata, "ERRATA_FILE", str(bad))
    monkeypatch.setattr(errata, "_table", {})
    with pytest.raises(AbiguardError, match="gen-arm64-errata"):
        errata.table()
