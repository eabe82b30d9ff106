"""What the arm64 lab measured on each real kernel: the facts every profile of that host
must show, whether it is the bundled one or one the lab just regenerated."""
from __future__ import annotations

from typing import Any

PSCI_VERSION = "0x6030000000140000"
WA = {1: "0x6030000000140001", 2: "0x6030000000140002", 3: "0x6030000000140003"}
BMAPS = {"STD_BMAP": "0x6030000000160000", "STD_HYP_BMAP": "0x6030000000160001",
         "VENDOR_HYP_BMAP": "0x6030000000160002", "VENDOR_HYP_BMAP_2": "0x6030000000160003"}
MIDR = "0x603000000013c000"
ALL_CONFIGS = ["psci", "psci+pmu", "psci+pmu+ptrauth", "psci+pmu+sve", "psci+pmu+sve+ptrauth",
               "psci+ptrauth", "psci+sve", "psci+sve+ptrauth"]

#: host -> facts; None for a bitmap means "not in KVM_GET_REG_LIST"
FACTS: dict[str, dict[str, Any]] = {
    "5.10.0-32-arm64": dict(reg_list=312, psci="0x10000", psci_ok=["0.2", "1.0"], wa=("0x2", "0x0", "0x2"),
                            bmaps=(None, None, None, None), masks=None, midr="0xf0510", ipa=48,
                            configs=ALL_CONFIGS),
    "6.1.0-50-arm64": dict(reg_list=242, psci="0x10001", psci_ok=["0.2", "1.0", "1.1"], wa=("0x2", "0x0", "0x0"),
                           bmaps=("0x1", "0x1", "0x3", None), masks=None, midr="0xf0510", ipa=48,
                           configs=ALL_CONFIGS),
    "6.12.117+deb13-arm64": dict(reg_list=259, psci="0x10001", psci_ok=["0.2", "1.0", "1.1"],
                                 wa=("0x2", "0x0", "0x0"), bmaps=("0x1", "0x1", "0x3", None), masks=35,
                                 midr="0xf0510", ipa=52, configs=ALL_CONFIGS),
    "7.2.13+deb14-arm64": dict(reg_list=257, psci="0x10003", psci_ok=["0.2", "1.0", "1.1", "1.2", "1.3"],
                               wa=("0x2", "0x0", "0x0"), bmaps=("0x1", "0x1", "0x3", "0x0"), masks=40,
                               midr="0xf0510", ipa=52, configs=ALL_CONFIGS),
    "6.12.117+deb13-arm64-cortex-a72": dict(reg_list=259, psci="0x10001", psci_ok=["0.2", "1.0", "1.1"],
                                            wa=("0x0", "0x0", "0x0"), bmaps=("0x1", "0x1", "0x3", None),
                                            masks=35, midr="0x410fd083", ipa=44, configs=["psci", "psci+pmu"]),
    "7.2.13+deb14-arm64-cortex-a72": dict(reg_list=257, psci="0x10003", psci_ok=["0.2", "1.0", "1.1", "1.2", "1.3"],
                                          wa=("0x0", "0x0", "0x0"), bmaps=("0x1", "0x1", "0x3", "0x0"),
                                          masks=40, midr="0x410fd083", ipa=44, configs=["psci", "psci+pmu"]),
    "6.12.117+deb13-arm64-neoverse-n1": dict(reg_list=259, psci="0x10001", psci_ok=["0.2", "1.0", "1.1"],
                                             wa=("0x2", "0x0", "0x1"), bmaps=("0x1", "0x1", "0x3", None),
                                             masks=35, midr="0x414fd0c1", ipa=48, configs=["psci", "psci+pmu"]),
    "7.2.13+deb14-arm64-neoverse-n1": dict(reg_list=257, psci="0x10003", psci_ok=["0.2", "1.0", "1.1", "1.2", "1.3"],
                                           wa=("0x2", "0x0", "0x1"), bmaps=("0x1", "0x1", "0x3", "0x0"),
                                           masks=40, midr="0x414fd0c1", ipa=48, configs=["psci", "psci+pmu"]),
}


def check_profile(name: str, profile: dict[str, Any]) -> None:
    facts = FACTS[name]
    section = profile["kvm"]["aarch64"]
    base = section["configs"]["psci"]
    regs = base["registers"]
    assert profile["host"]["machine"] == "aarch64"
    assert profile["kvm"]["api_version"] == 12
    assert sorted(section["configs"]) == facts["configs"]
    assert len(base["reg_list"]) == facts["reg_list"]
    assert regs[PSCI_VERSION] == facts["psci"]
    assert tuple(regs[WA[i]] for i in (1, 2, 3)) == facts["wa"]
    assert tuple(regs.get(BMAPS[n]) for n in BMAPS) == facts["bmaps"]
    assert regs[MIDR] == facts["midr"]
    assert profile["kvm"]["caps"]["KVM_CAP_ARM_VM_IPA_SIZE"] == facts["ipa"]
    accepted = sorted(v for v, r in section["firmware_acceptance"]["PSCI_VERSION"].items() if r == "accepted")
    assert accepted == facts["psci_ok"]
    if facts["masks"] is None:
        assert section["writable_masks"] is None
        assert any(u["what"] == "KVM_ARM_GET_REG_WRITABLE_MASKS" and u["error"] == "ENOTTY"
                   for u in profile["unavailable"])
    else:
        assert len(section["writable_masks"]) == facts["masks"]
    # the bitmaps default to every service the kernel knows, except the opt-in BMAP_2
    acceptance = section["firmware_acceptance"]
    for bmap, default in zip(BMAPS, facts["bmaps"]):
        if default is None:
            assert bmap not in acceptance
        elif bmap == "VENDOR_HYP_BMAP_2":
            assert acceptance[bmap]["known_bits"] == "0x3" and default == "0x0"
        else:
            assert acceptance[bmap]["known_bits"] == default
