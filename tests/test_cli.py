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
    # guest) says IDC=1 -- both profiles' ONE_REG values agree, the guests do not
    ctr = abiguard("check", "--from", P["6.1.0-50-arm64"], "--to", P["7.2.13+deb14-arm64"])
    assert ctr.returncode == 1 and ": REFUSE" in ctr.stdout
    assert "CTR_EL0 (0x603000000013d801) field IDC: VM has 0x8444c004 as its guest read it, destination would " \
           "give the guest 0x9444c004" in ctr.stdout, ctr.stdout
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
    # 6.1 -> 7.2: KVM takes the stream, the guest's CTR_EL0 (guest view) would change
    assert doc["a_to_b"]["allow"] is False and doc["b_to_a"]["allow"] is False
    assert [p["register"] for p in doc["a_to_b"]["problems"]] == ["CTR_EL0"]
    assert "CTR_EL0" in {p["register"] for p in doc["b_to_a"]["problems"]}


def test_baseline_over_the_kernels_with_rollback(tmp_path):
    out = tmp_path / "fleet.json"
    cp = abiguard("baseline", P["6.12.117+deb13-arm64"], P["7.2.13+deb14-arm64"],
                  "--rollback-to", P["6.1.0-50-arm64"], "-o", str(out))
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(out.read_text())
    body = doc["contract"]["aarch64"]
    assert body["values"]["0x6030000000140000"] == "0x10001"          # lowest common PSCI: 1.1
    assert "0x6030000000160003" not in body["stream"]                  # BMAP_2: not on 6.1/6.12
    assert "0x603000000013c103" not in body["stream"]                  # TCR2_EL1: only on 6.12
    hosts = doc["hosts"]
    assert hosts[P["6.1.0-50-arm64"]]["accepts_incoming"] is False or hosts[P["6.1.0-50-arm64"]]["cannot_pin"]
    # a start on 6.12 cannot give 6.1's HCX=0 (not writable there); TCR2_EL1, which only
    # 6.12 lists, is guest-run state and rides in the stream (judged where the VM goes)
    cannot = hosts[P["6.12.117+deb13-arm64"]]["cannot_pin"]
    assert any("HCX" in line for line in cannot) and not any("TCR2_EL1" in line for line in cannot), cannot
    assert doc["rollback_hosts"] == [P["6.1.0-50-arm64"]]
    # the baseline is a contract check can use
    again = abiguard("check", "--from", str(out), "--to", P["7.2.13+deb14-arm64"])
    # the baseline is a contract check reads, and check agrees with the baseline's own report
    accepts = hosts[P["7.2.13+deb14-arm64"]]["accepts_incoming"]
    assert accepts is True
    assert again.returncode == 0 and ": ALLOW" in again.stdout, again.stdout + again.stderr
    refused = abiguard("check", "--from", str(out), "--to", P["6.12.117+deb13-arm64"])
    assert hosts[P["6.12.117+deb13-arm64"]]["accepts_incoming"] is False
    assert refused.returncode == 1 and "ID_AA64MMFR1_EL1 (0x603000000013c039) field HCX" in refused.stdout


def test_matrix_reads_in_ten_seconds():
    cp = abiguard("matrix")
    assert cp.returncode == 0
    assert "destination QEMU 7.2-11.0:" in cp.stdout and "destination QEMU >= 11.1:" in cp.stdout
    rows = [r.split() for r in cp.stdout.splitlines() if r.startswith(("5.10", "6.1", "6.12", "7.2"))]
    assert len(rows) == 8                                       # one 4x4 table per QEMU rule
    q72, q111 = rows[:4], rows[4:]
    # 6.1 -> 7.2: KVM takes the stream, but the guest's CTR_EL0 would change (guest view)
    assert q72[1][4] == "cannot:CTR_EL0" and q111[1][4] == "cannot:CTR_EL0"
    # the rollback 7.2 -> 6.12 works once pinned (shown with real QEMU in the nested lab);
    # 6.12 -> 7.2 fails on QEMU 7.2's stream-length check and works on 11.1
    assert q72[3][3:5] == ["pin", "first"] and q111[3][3:5] == ["pin", "first"]
    assert q72[2][4].startswith("cannot:cpreg_vmstate") and q111[2][4] == "keeps"


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
