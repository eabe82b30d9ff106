"""What a plain start of a pinned arm64 VM realises, as the arm64 libvirt lab measured it
(tests/test_armfleet_lab.py, issue 13), on the bundled real profiles of the same kernels:

- SMCCC_ARCH_WORKAROUND_2 is a host property: KVM checks a written level against its own
  and stores nothing, so a 6.12 level (1) on 7.2 (level 0) is no reason to refuse a start;
  the lab saw the same guest view on both.
- registers a host lists beyond the contract's stream: guest-run state (TCR2_EL1, PIR_EL1)
  and hypercall bitmaps left at 0 (VENDOR_HYP_BMAP_2 on 7.x) are carried, not refused, and
  the stamp that ``pin`` writes records the stream the VM really carries from that host;
  anything else the host adds still refuses the start.
"""
from __future__ import annotations

import json
import os

from abiguard.arch import get
from abiguard.builtin import builtin_profiles
from abiguard.engine import baseline, verdict
from abiguard.model import contract, profile
from abiguard.model.stamp import HopStamp

ARM = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
BMAP_2 = 0x6030000000160003
WA2 = 0x6030000000140002
TCR2_EL1 = 0x603000000013c103


def _load(name: str):
    return profile.load(ARM[name])


def _baseline(*names: str) -> contract.Contract:
    doc = baseline.compute([_load(n) for n in names])
    return contract.loads(json.dumps(doc["contract"]), "baseline")


def test_the_newer_hosts_baseline_starts_on_both() -> None:
    c = _baseline("6.12.117+deb13-arm64", "7.2.13+deb14-arm64")
    p612, p72 = _load("6.12.117+deb13-arm64"), _load("7.2.13+deb14-arm64")
    for p in (p612, p72):
        v = verdict.realise(c, p)
        assert v.problems == [], (p.kernel_release, [x.line() for x in v.problems])
    # 7.2 answers PSCI 1.3 by default; the contract (6.12's) says 1.1, and only that is pinned
    assert verdict.realise(c, p72).boot_pins == {0x6030000000140000: 0x10001}
    # the workaround levels differ and nothing pins them
    assert c.body.values.get(WA2) != _section_registers(p72).get(WA2)


def _section_registers(p: profile.Profile) -> dict[int, int | None]:
    from abiguard.arch.arm64.judge import section_of

    section = section_of(p)
    assert section is not None
    probed = section.usable("psci+pmu+sve+ptrauth")
    assert probed is not None and probed.registers is not None
    return probed.registers


def test_the_stamp_records_what_the_vm_carries_from_its_boot_host() -> None:
    c = _baseline("6.12.117+deb13-arm64", "7.2.13+deb14-arm64")
    arm = get("aarch64")
    for name in ("6.12.117+deb13-arm64", "7.2.13+deb14-arm64"):
        p = _load(name)
        carried = arm.boot_stream(c, p)
        assert carried == tuple(sorted(_section_registers(p))), name      # QEMU's list is the host's
        assert set(c.body.stream) <= set(carried)
        stamp = HopStamp.boot(c, "0123456789abcdef", "2026-12-02T00:00:00Z", carried)
        assert stamp.stream == carried
    p72 = _load("7.2.13+deb14-arm64")
    assert BMAP_2 in arm.boot_stream(c, p72) and BMAP_2 not in c.body.stream
    assert TCR2_EL1 in arm.boot_stream(c, _load("6.12.117+deb13-arm64")) and TCR2_EL1 not in c.body.stream


def _hacked_72(edit) -> profile.Profile:
    doc = json.loads(open(ARM["7.2.13+deb14-arm64"]).read())
    n = 0
    for cfg in doc["kvm"]["aarch64"]["configs"].values():
        if "registers" in cfg:
            n += edit(cfg)
    assert n
    doc["digest"] = profile.digest_of(doc)
    return profile.Profile.from_json(doc, "7.2, edited")      # the same checks as a file


def test_an_added_bitmap_with_services_on_is_kept_off() -> None:
    c = _baseline("6.12.117+deb13-arm64", "7.2.13+deb14-arm64")

    def on(cfg: dict) -> int:
        if f"{BMAP_2:#x}" in cfg["registers"]:
            cfg["registers"][f"{BMAP_2:#x}"] = "0x1"      # DISCOVER_IMPL_VER on by default
            return 1
        return 0
    v = verdict.realise(c, _hacked_72(on))
    assert v.problems == [] and v.keep_off == {BMAP_2: 0}


def test_an_added_register_that_is_guest_abi_refuses_the_start() -> None:
    """a firmware register the contract's hosts never had (one this abiguard has no row for)"""
    c = _baseline("6.12.117+deb13-arm64", "7.2.13+deb14-arm64")
    extra = 0x603000000014000F

    def add(cfg: dict) -> int:
        cfg["reg_list"].append(f"{extra:#x}")
        cfg["registers"][f"{extra:#x}"] = "0x1"
        return 1
    v = verdict.realise(c, _hacked_72(add))
    assert [p.reg_id for p in v.problems] == [extra], [p.line() for p in v.problems]
    line = v.problems[0].line()
    assert "hidden from QEMU" in line and "default 0x1 is visible to the guest" in line, line


# ---- issue 25: born anywhere, back to the oldest

CLIDR, CTR = 0x603000000013C801, 0x603000000013D801
CCSIDR = [0x6020000000110000 + i for i in range(14)]


def test_the_oldest_and_newest_hosts_baseline_starts_and_arrives_on_both() -> None:
    """{6.1, 7.2}: the cache description is 6.1's (before Linux 6.3 KVM takes only its
    own); 7.2 takes it from abiguard_pin.so (set_clidr, set_ccsidr) and hides the 15
    registers it lists beyond 6.1's stream, so a VM started on 7.2 carries 6.1's stream
    and every host boots and accepts the contract. The guest on 6.1 reads the CPU's own
    CTR_EL0 (the 6.1 profile's guest view, as the lab's guest printed: 8444c004; ONE_REG
    says 9444c004): the contract says so (``guest``, beside DCZID_EL0, which is not in
    ONE_REG) and 7.2 pins it, while QEMU's stream keeps 9444c004 for 6.1's KVM."""
    p61, p72 = _load("6.1.0-50-arm64"), _load("7.2.13+deb14-arm64")
    doc = baseline.compute([p61, p72])
    c = contract.loads(json.dumps(doc["contract"]), "baseline")
    assert c.body.values[CLIDR] == 0x2000023 and c.body.values[CCSIDR[0]] == 0x701FE00A
    assert CCSIDR[3] not in c.body.stream
    for name, host in doc["hosts"].items():
        assert host["boots_with_contract"] and host["accepts_incoming"] and not host["cannot_pin"], (name, host)
    v = verdict.realise(c, p72)
    assert v.boot_pins[CLIDR] == 0x2000023 and {CCSIDR[0], CCSIDR[1], CCSIDR[2]} <= set(v.boot_pins)
    assert set(v.hidden) == set(CCSIDR[3:]) | {0x603000000013DF01, 0x603000000013DF11, 0x603000000013DF12, BMAP_2}
    assert get("aarch64").boot_stream(c, p72) == c.body.stream            # QEMU's list: the contract's
    assert verdict.realise(c, p61).allow and not verdict.realise(c, p61).boot_pins
    dczid = 0x603000000013D807     # DCZID_EL0: not in ONE_REG, read 0x4 on both
    assert doc["conflicts"] == [] and c.body.values[CTR] == 0x9444C004
    assert c.body.guest == {CTR: ("value", 0x8444C004), dczid: ("value", 0x4)}
    assert v.boot_pins[CTR] == 0x8444C004 and v.stream_values == {CTR: 0x9444C004}


def test_a_visible_cache_level_is_never_hidden() -> None:
    """a contract whose CLIDR reports a third cache level: 7.2 would keep CCSIDR[4] at its
    own default, which the guest can read, so the start is refused naming it"""
    p61, p72 = _load("6.1.0-50-arm64"), _load("7.2.13+deb14-arm64")
    c = contract.loads(json.dumps(baseline.compute([p61, p72])["contract"]), "baseline")
    c.body.values[CLIDR] = 0x2000023 | 4 << 6                               # Ctype3: unified
    v = verdict.realise(c, p72)
    assert [p.register for p in v.problems] == ["DEMUX_CCSIDR[4]"], [p.line() for p in v.problems]
    assert "the VM's CLIDR_EL1 reports this cache level" in v.problems[0].line()


def test_set_clidr_refuses_idc_the_hosts_ctr_lacks() -> None:
    """set_clidr checks the IDC a CLIDR implies against the host's sanitised CTR_EL0 (the
    profile's CTR_EL0 default), not the VM's: a host without IDC cannot take 6.1's CLIDR
    (LoUU = LoUIS = 0)"""
    from abiguard.arch.arm64.judge import dest_for
    from abiguard.arch.arm64.rules import RULES

    p72 = _load("7.2.13+deb14-arm64")
    d, _ = dest_for(p72, "psci")
    assert d is not None and not RULES["clidr"].check(CLIDR, "CLIDR_EL1", 0x2000023, d)
    d.registers = {**d.registers, CTR: d.registers[CTR] & ~(1 << 28)}
    problems = RULES["clidr"].check(CLIDR, "CLIDR_EL1", 0x2000023, d)
    assert len(problems) == 1 and "implies CTR_EL0.IDC" in problems[0].line()
    assert not RULES["clidr"].check(CLIDR, "CLIDR_EL1", 0x9200003, d)    # LoUU = LoUIS = 1: no IDC
