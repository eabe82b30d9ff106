"""The command line on the bundled real profiles: exit codes and messages a person can act on."""
from __future__ import annotations

import json
import os

import pytest

from abiguard.builtin import builtin_profiles
from helpers.run import abiguard

P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}


def test_check_allow_and_refuse():
    ok = abiguard("check", "--from", P["6.12.117+deb13-arm64"], "--to", P["7.2.13+deb14-arm64"], "--qemu", "11.1")
    assert ok.returncode == 0 and ": ALLOW" in ok.stdout
    # 6.1 does not trap CTR_EL0: its guest reads the CPU's IDC=0 while ONE_REG (and 7.2's
    # guest) says IDC=1 -- both profiles' ONE_REG values agree, the guests do not. 7.2 traps
    # the read and takes a written CTR_EL0 (>= 6.11): allowed with it pinned to what the
    # 6.1 guest read, QEMU's stream keeping 6.1's ONE_REG value (issue 25's G/S pin)
    ctr = abiguard("check", "--from", P["6.1.0-50-arm64"], "--to", P["7.2.13+deb14-arm64"])
    assert ctr.returncode == 0 and ": ALLOW" in ctr.stdout
    assert "note: CTR_EL0 (0x603000000013d801) pinned to 0x8444c004, the value its guest read where its contract " \
           "comes from (this host's guest would read 0x9444c004); QEMU's stream keeps 0x9444c004" in ctr.stdout, \
        ctr.stdout
    # --json says what a VM with no pins would meet instead (the matrix's "pin first")
    doc = json.loads(abiguard("check", "--json", "--from", P["6.1.0-50-arm64"], "--to", P["7.2.13+deb14-arm64"]).stdout)
    assert doc["allow"] is True and [(u["register"], u["field"], u["source"], u["destination"], u["pinnable"])
                                     for u in doc["unpinned"]] == [
        ("CTR_EL0", "IDC", "0x8444c004 as its guest read it", "would give the guest 0x9444c004", True)]
    # a destination that neither shows the guest the same value nor can pin it refuses with
    # both guest values: 7.2's VM to 6.1, whose guest reads the CPU's IDC 0
    back = abiguard("check", "--from", P["7.2.13+deb14-arm64"], "--to", P["6.1.0-50-arm64"])
    assert back.returncode == 1 and "CTR_EL0 (0x603000000013d801) field IDC: VM has 0x9444c004 as its guest " \
        "read it, destination would give the guest 0x8444c004" in back.stdout, back.stdout
    no = abiguard("check", "--from", P["7.2.13+deb14-arm64"], "--to", P["6.12.117+deb13-arm64"])
    assert no.returncode == 1 and ": REFUSE" in no.stdout
    assert "PSCI_VERSION (0x6030000000140000): VM has PSCI 1.3, destination accepts 0.2, 1.0, 1.1" in no.stdout


def test_check_json_names_register_field_and_values():
    cp = abiguard("check", "--json", "--from", P["7.2.13+deb14-arm64-cortex-a72"],
                  "--to", P["7.2.13+deb14-arm64"], "--config", "psci")
    doc = json.loads(cp.stdout)
    assert cp.returncode == 1 and doc["allow"] is False
    midr = [p for p in doc["problems"] if p["register"] == "MIDR_EL1"][0]
    assert (midr["reg_id"], midr["source"], midr["destination"]) == ("0x603000000013c000", "0x410fd083", "has 0xf0510")
    assert doc["verdict"] == "refuse"


def test_check_tells_one_story_per_destination_qemu():
    """A destination profile without its QEMU (a KVM-only profile): what holds on every
    released QEMU first, then each QEMU range with its own verdict; registers that fail
    for one reason on one line, an indexed run as a range."""
    cp = abiguard("check", "--from", P["7.2.13+deb14-arm64"], "--to", P["6.1.0-50-arm64"])
    out = cp.stdout.splitlines()
    assert cp.returncode == 1 and out[0].endswith(": REFUSE"), out[:3]
    assert out[1] == "  on every destination QEMU:"
    assert "  destination QEMU 7.2-11.0: REFUSE" in out and "  destination QEMU >= 11.1: REFUSE" in out
    ranged = [ln for ln in out if "DEMUX_CCSIDR[3..13]" in ln]
    assert len(ranged) == 2 and all("(14 registers)" in ln for ln in ranged), ranged
    assert not any("as destination QEMU" in ln or "strict model" in ln for ln in out), out
    doc = json.loads(abiguard("check", "--json", "--from", P["7.2.13+deb14-arm64"], "--to",
                              P["6.1.0-50-arm64"]).stdout)
    assert [q["qemu"] for q in doc["by_qemu"]] == ["QEMU 7.2-11.0", "QEMU >= 11.1"]
    assert all(q["verdict"] == "refuse" for q in doc["by_qemu"])


def test_diff_both_directions():
    cp = abiguard("diff", P["6.1.0-50-arm64"], P["7.2.13+deb14-arm64"], "--json")
    doc = json.loads(cp.stdout)
    # 6.1 -> 7.2: KVM takes the stream; the guest's CTR_EL0 (guest view) is kept by a pin
    # on 7.2, which the verdict names; 7.2 -> 6.1 cannot keep it
    assert doc["a_to_b"]["allow"] is True and doc["b_to_a"]["allow"] is False
    assert any(n.startswith("CTR_EL0 (0x603000000013d801) pinned to 0x8444c004") for n in doc["a_to_b"]["notes"])
    assert "CTR_EL0" in {p["register"] for p in doc["b_to_a"]["problems"]}


def test_baseline_over_the_kernels_with_rollback(tmp_path):
    """6.1 as the rollback host: no contract every host boots and accepts (6.12 cannot lower
    HCX, 6.1 has neither writable ID registers nor 6.12's cache geometry), so nothing is
    written, exit 1, each host's reasons, and what to leave out."""
    out = tmp_path / "fleet.json"
    cp = abiguard("baseline", P["6.12.117+deb13-arm64"], P["7.2.13+deb14-arm64"],
                  "--rollback-to", P["6.1.0-50-arm64"], "-o", str(out))
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert not out.exists()
    assert "abiguard: no contract written" in cp.stdout
    assert "ID_AA64MMFR1_EL1 (0x603000000013c039) field HCX: VM has 0x0, destination has 0x1" in cp.stdout
    assert "outside its writable mask" in cp.stdout
    assert "leave out " in cp.stdout and ": the rest have contract " in cp.stdout, cp.stdout
    js = abiguard("baseline", P["6.12.117+deb13-arm64"], P["7.2.13+deb14-arm64"],
                  "--rollback-to", P["6.1.0-50-arm64"], "--json")
    assert js.returncode == 1
    doc = json.loads(js.stdout)
    assert doc["outcome"]["holds"] is False and doc["outcome"]["verdict"] == "refused"
    body = doc["contract"]["aarch64"]
    assert body["values"]["0x6030000000140000"] == "0x10001"          # lowest common PSCI: 1.1
    assert "0x6030000000160003" not in body["stream"]                  # BMAP_2: not on 6.1/6.12
    assert "0x603000000013c103" not in body["stream"]                  # TCR2_EL1: only on 6.12
    hosts = doc["hosts"]
    # 6.1 takes only its own cache description (before Linux 6.3), so the fleet's is 6.1's,
    # which 6.12 and 7.2 take from abiguard_pin.so: the rollback host accepts and boots it
    assert hosts[P["6.1.0-50-arm64"]]["accepts_incoming"] is True and not hosts[P["6.1.0-50-arm64"]]["cannot_pin"]
    assert body["values"]["0x603000000013c801"] == "0x2000023"        # CLIDR_EL1: 6.1's
    # a start on 6.12 cannot give 6.1's HCX=0 (not writable there); TCR2_EL1, which only
    # 6.12 lists, is guest-run state and rides in the stream (judged where the VM goes)
    cannot = hosts[P["6.12.117+deb13-arm64"]]["cannot_pin"]
    assert any("HCX" in line for line in cannot) and not any("TCR2_EL1" in line for line in cannot), cannot
    assert doc["rollback_hosts"] == [P["6.1.0-50-arm64"]]
    # leaving out 6.12 is enough: 6.1 and 7.2 have a contract both boot and accept (7.2
    # takes 6.1's cache description and shows QEMU 6.1's register list: issue 25)
    options = [s["leave_out"] for s in doc["outcome"]["leave_out"]]
    assert [P["6.12.117+deb13-arm64"]] in options and all(len(o) == 1 for o in options), options
    # the refused document is still a contract check reads, and check agrees with its report
    refused_doc = tmp_path / "refused.json"
    refused_doc.write_text(js.stdout)
    refused = abiguard("check", "--from", str(refused_doc), "--to", P["6.12.117+deb13-arm64"])
    assert hosts[P["6.12.117+deb13-arm64"]]["accepts_incoming"] is False
    assert refused.returncode == 1 and "ID_AA64MMFR1_EL1 (0x603000000013c039) field HCX" in refused.stdout
    # judged for QEMU 11.1 (the bundled profiles name none): leaving out 6.12 or 6.1 is the
    # advice (6.1 + 7.2 hold since issue 25), and taken, the rest have a contract, written,
    # which both boot and accept
    js = abiguard("baseline", P["6.12.117+deb13-arm64"], P["7.2.13+deb14-arm64"],
                  "--rollback-to", P["6.1.0-50-arm64"], "--qemu", "11.1", "--json")
    advice = json.loads(js.stdout)["outcome"]["leave_out"]
    assert js.returncode == 1 and sorted(s["leave_out"] for s in advice) == sorted(
        [[P["6.12.117+deb13-arm64"]], [P["6.1.0-50-arm64"]]]), advice
    cp = abiguard("baseline", P["6.12.117+deb13-arm64"], P["7.2.13+deb14-arm64"], "--qemu", "11.1", "-o", str(out))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "arrivals judged for QEMU 11.1" in cp.stdout
    doc = json.loads(out.read_text())
    assert doc["outcome"]["holds"] is True and doc["qemu_where_unnamed"] == "11.1"
    assert doc["contract"]["digest"] == next(a["contract"] for a in advice if a["leave_out"] == [P["6.1.0-50-arm64"]])
    assert all(h["boots_with_contract"] and h["accepts_incoming"] for h in doc["hosts"].values())
    # on the strict model (any released QEMU) it is refused: a VM started on 6.12 carries
    # registers 7.2 does not list, which QEMU 7.2-11.0 refuses (the nested lab shows it)
    strict = abiguard("baseline", P["6.12.117+deb13-arm64"], P["7.2.13+deb14-arm64"], "-o", str(tmp_path / "s.json"))
    assert strict.returncode == 1 and "(a VM started on 6.12.117+deb13-arm64" in strict.stdout \
        or "(a VM moved on from 6.12.117+deb13-arm64" in strict.stdout, strict.stdout


def test_matrix_reads_in_ten_seconds():
    cp = abiguard("matrix")
    assert cp.returncode == 0
    assert "destination QEMU 7.2-11.0:" in cp.stdout and "destination QEMU >= 11.1:" in cp.stdout
    rows = [r.split() for r in cp.stdout.splitlines() if r.startswith(("5.10", "6.1", "6.12", "7.2"))
            and " -> " not in r]
    assert len(rows) == 8                                       # one 4x4 table per QEMU rule
    q72, q111 = rows[:4], rows[4:]
    # 6.1 -> 7.2: KVM takes the stream, but a VM with no pins would see its guest's CTR_EL0
    # change (the guest's view); pinned to the pair's contract, 7.2 shows it 6.1's
    assert q72[1][4:6] == ["pin", "first"] and q111[1][4:6] == ["pin", "first"]
    assert "  6.1.0-50 -> 7.2.13: pin first: " in cp.stdout
    assert "unpinned: CTR_EL0 field IDC: VM has 0x8444c004 as its guest read it, destination would give the " \
        "guest 0x9444c004" in " ".join(cp.stdout.split())
    # "pin first" is "baseline over the pair writes a contract" (engine.baseline.holds)
    assert q111[3][1:] == ["cannot", "pin", "first", "pin", "first", "-"] and q111[2][4] == "keeps"
    # 5.10 and 7.2 have no contract: a VM started on 5.10 carries its SMCCC_ARCH_WORKAROUND_3
    # level (2, NOT_REQUIRED), which no pin lowers and 7.2's KVM refuses -- either way round
    # (7.2 -> 5.10 moves, but never back)
    assert q72[0][4] == q111[0][4] == q72[3][1] == "cannot"
    text = " ".join(cp.stdout.split())
    assert "5.10.0-32 -> 7.2.13: cannot: SMCCC_ARCH_WORKAROUND_3: VM has 2 (NOT_REQUIRED), destination reports " \
        "0x0 [" in text
    assert "7.2.13 -> 5.10.0-32: cannot: SMCCC_ARCH_WORKAROUND_3: VM has 2 (NOT_REQUIRED), destination reports " \
        "0x0 (on the way back to 7.2.13+deb14-arm64) [" in text
    # each cell's reason names its pair and its own numbers; a pin-first cell what to pin
    assert "  7.2.13 -> 6.12.117: pin first: on 7.2.13+deb14-arm64 at start: PSCI_VERSION = 0x10001" in cp.stdout


@pytest.mark.parametrize("content, message", [
    ('{"format": "abiguard-host-profile", "version": 1', "not valid JSON"),
    ("", "not valid JSON"),
    ('{"format": "abiguard-host-profile", "version": 7, "host": {}}', "reads version 1"),
    ('{"format": "something-else"}', "not an abiguard host profile, contract or baseline"),
    ('[1, 2, 3]', "not an abiguard host profile"),
])
def test_bad_source_files(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    cp = abiguard("check", "--from", str(bad), "--to", P["7.2.13+deb14-arm64"])
    assert cp.returncode == 2
    assert cp.stderr.startswith(f"abiguard: {bad}: ") and message in cp.stderr


def test_profile_of_another_architecture_and_edited_profiles(tmp_path):
    doc = json.loads(open(P["7.2.13+deb14-arm64"]).read())
    doc["kvm"]["aarch64"]["configs"]["psci"]["registers"]["0x6030000000140000"] = "0x10001"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    cp = abiguard("check", "--from", P["6.1.0-50-arm64"], "--to", str(edited))
    assert cp.returncode == 2 and "does not match its digest" in cp.stderr and str(edited) in cp.stderr
    x86 = tmp_path / "x86.json"
    arm = json.loads(open(P["6.1.0-50-arm64"]).read())
    arm["host"]["machine"] = "x86_64"
    from abiguard.model import profile
    x86.write_text(profile.render(profile.finalize({k: v for k, v in arm.items() if k not in ("digest", "meta")},
                                                   0.0, "x")))
    cp = abiguard("check", "--from", P["6.1.0-50-arm64"], "--to", str(x86))
    assert cp.returncode == 1 and "architecture" in cp.stdout


def test_unknown_register_id_in_a_contract(tmp_path):
    from abiguard.model import contract, profile
    doc = contract.from_profile(profile.load(P["7.2.13+deb14-arm64"])).to_json()
    doc["aarch64"]["stream"].append("0x6030000000ff0001")   # group 0xff: no such KVM register group
    import hashlib
    doc["digest"] = "sha256:" + hashlib.sha256(contract.canonical(
        {k: v for k, v in doc.items() if k != "digest"}).encode()).hexdigest()
    f = tmp_path / "c.json"
    f.write_text(json.dumps(doc))
    cp = abiguard("check", "--from", str(f), "--to", P["7.2.13+deb14-arm64"])
    assert cp.returncode == 2
    assert cp.stderr.startswith(f"abiguard: {f}: member 'stream'") and "0x6030000000ff0001" in cp.stderr


def test_profile_of_an_unknown_architecture(tmp_path):
    from abiguard.model import profile
    doc = json.loads(open(P["6.1.0-50-arm64"]).read())
    doc["host"]["machine"] = "riscv64"
    f = tmp_path / "rv.json"
    f.write_text(profile.render(profile.finalize({k: v for k, v in doc.items() if k not in ("digest", "meta")},
                                                 0.0, "x")))
    cp = abiguard("check", "--from", P["6.1.0-50-arm64"], "--to", str(f))
    assert cp.returncode == 2 and f"abiguard: {f}: architecture 'riscv64'" in cp.stderr
