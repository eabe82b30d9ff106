"""The probe against this machine's real x86 KVM (root and /dev/kvm needed)."""
from __future__ import annotations

import json
import os

import pytest

from abiguard.model import profile
from abiguard.probe import host as probe
from abiguard.uapi import kvm
from helpers.realparts import need_kvm
from helpers.run import abiguard

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def kvm_section():
    if os.uname().machine != "x86_64":
        pytest.skip("x86 probe test runs on x86_64 hosts")
    need_kvm()
    section, unavailable = probe.probe_kvm()
    return section, unavailable


def test_api_version_and_caps(kvm_section):
    section, _ = kvm_section
    assert section["api_version"] == kvm.KVM_API_VERSION
    caps = section["caps"]
    assert caps["KVM_CAP_USER_MEMORY"] == 1 and caps["KVM_CAP_EXT_CPUID"] == 1
    assert caps["KVM_CAP_MAX_VCPUS"] >= caps["KVM_CAP_NR_VCPUS"] >= 1
    assert set(caps) <= set(kvm.CAPS)


def test_supported_cpuid_is_the_kernels(kvm_section):
    x86 = kvm_section[0]["x86_64"]
    leaves = {int(r["function"], 16) for r in x86["supported_cpuid"]}
    assert {0x0, 0x1, 0x7, 0x80000000, 0x40000000, 0x40000001} <= leaves
    signature = [r for r in x86["supported_cpuid"] if r["function"] == "0x40000000"][0]
    # "KVMKVMKVM\0\0\0" in ebx, ecx, edx
    assert (signature["ebx"], signature["ecx"], signature["edx"]) == ("0x4b4d564b", "0x564b4d56", "0x4d")
    leaf1 = [r for r in x86["supported_cpuid"] if r["function"] == "0x1"][0]
    assert int(leaf1["ebx"], 16) >> 24 == 0, "the APIC id of the probing CPU is not guest ABI"
    pv = int(x86["pv_features"]["eax"], 16)
    assert pv & 1 << 3, "KVM_FEATURE_CLOCKSOURCE2 is offered by every KVM since 2.6.35"


def test_feature_msrs_read_back(kvm_section):
    section, unavailable = kvm_section
    msrs = section["x86_64"].get("feature_msrs")
    if section["caps"].get("KVM_CAP_GET_MSR_FEATURES"):
        assert msrs and all(v is not None for v in msrs.values()), unavailable
        assert "0x10a" in msrs  # IA32_ARCH_CAPABILITIES is emulated by KVM on every x86 host
    else:
        assert any("MSR_FEATURE" in u["what"] for u in unavailable)


def test_quirks_mask_matches_capability(kvm_section):
    section, _ = kvm_section
    assert int(section["x86_64"]["disable_quirks2"], 16) == section["caps"].get("KVM_CAP_DISABLE_QUIRKS2", 0)


def test_cli_probe_writes_a_valid_deterministic_profile(tmp_path):
    need_kvm()
    out = tmp_path / "host.json"
    again = tmp_path / "again.json"
    for path in (out, again):
        proc = abiguard("probe", "--kvm-only", "-o", str(path))
        assert proc.returncode == 0, proc.stderr
    doc = profile.load(str(out))
    assert doc.machine == "x86_64"
    assert doc.digest == profile.load(str(again)).digest, "same host, same profile"
    text = out.read_text()
    assert text == profile.render(json.loads(text)), "keys are written in a deterministic order"


def test_missing_device_is_recorded_not_guessed(tmp_path):
    section, unavailable = probe.probe_kvm(device=str(tmp_path / "no-such-kvm"))
    assert section is None
    assert unavailable == [{"what": f"open {tmp_path / 'no-such-kvm'}", "errno": 2, "error": "ENOENT",
                            "detail": "No such file or directory"}]


def test_device_that_is_not_kvm_is_refused_by_the_kernel(tmp_path):
    """/dev/null answers KVM ioctls with ENOTTY: recorded with its errno, no crash."""
    with pytest.raises(OSError) as err:
        with kvm.KvmSystem("/dev/null") as system:
            system.api_version()
    assert err.value.errno == 25


def test_qemu_part_over_qmp():
    """QEMU's own answers over QMP, on -machine none -accel kvm: no libvirt needed."""
    need_kvm()
    from abiguard.probe import stack
    from helpers.realparts import need_commands

    need_commands("qemu-system-x86_64")
    unavailable: list = []
    qemu = stack.probe_qemu("x86_64", unavailable)
    assert not unavailable, unavailable
    assert qemu["version"].count(".") == 2
    names = {m["name"] for m in qemu["machines"]}
    aliases = {m.get("alias") for m in qemu["machines"]}
    assert {"pc", "q35"} <= aliases and any(n.startswith("pc-i440fx-") for n in names)
    props = qemu["host_cpu_expansion"]["props"]
    assert qemu["host_cpu_expansion"]["model"] == "host" and props["lm"] is True
    assert "qemu64" in qemu["cpu_definitions"]
