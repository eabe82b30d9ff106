"""The x86 baseline's pure parts, over the committed real profiles (tests/data/x86): what it
does to libvirt's answer (or its own) so every host's libvirt reads it the same way.
libvirt's baselineHypervisorCPU / compareHypervisorCPU themselves are exercised against
three real libvirts in tests/test_x86_fleet.py (lab)."""
from __future__ import annotations

from pathlib import Path

import pytest

from abiguard.arch.x86 import baseline as xb, features as x86
from abiguard.arch.x86.hypervisor_cpu import carrier_cpu, parse_cpu, unknown_feature
from abiguard.arch.x86.judge import explicit_arch_capabilities
from abiguard.engine import baseline, verdict
from abiguard.model import profile

DATA = Path(__file__).parent / "data" / "x86" / "profiles"
VERSIONS = ("bookworm", "trixie", "sid")


@pytest.fixture(scope="module")
def profiles() -> list[profile.Profile]:
    return [profile.load(str(DATA / f"{v}.json")).with_label(v) for v in VERSIONS]


def test_profiles_carry_what_libvirts_baseline_needs(profiles):
    for p in profiles:
        cpu = p.libvirt.cpu
        assert cpu is not None and cpu.features and cpu.models and cpu.host_features, p.label
        assert cpu.host_features <= cpu.features, (p.label, sorted(cpu.host_features - cpu.features)[:5])
        assert p.libvirt.domcaps.host_model_xml.startswith("<cpu"), p.label
        assert p.qemu.named_cpu_props, p.label


def test_the_profile_baseline_is_readable_by_every_libvirt_and_starts_everywhere(profiles):
    doc = baseline.compute(profiles, hypervisors=[])
    body = doc["contract"]["x86_64"]
    for p in profiles:
        unknown = set(body["features"]) - p.libvirt.cpu.features
        assert not unknown, (p.label, unknown)
        assert body["cpu_model"] in p.libvirt.cpu.models, p.label
    # sid's libvirt drops cmp_legacy from an incoming definition: never required
    assert body["features"].get("cmp_legacy") in (None, "disable")
    assert any("computed from the profiles" in c for c in doc["conflicts"]), doc["conflicts"]
    for label, rep in doc["hosts"].items():
        assert rep["accepts_incoming"], (label, rep["incoming_problems"])


def test_every_arch_capability_every_libvirt_names_is_explicit(profiles):
    doc = baseline.compute(profiles, hypervisors=[])
    feats = doc["contract"]["x86_64"]["features"]
    common = frozenset.intersection(*(p.libvirt.cpu.features for p in profiles))
    for feat in x86.ARCH_CAPABILITY_BY_FEATURE:
        if feat in common:
            assert feats.get(feat) in ("require", "disable"), feat
        else:
            assert feat not in feats, feat     # bookworm's libvirt could not read it
    assert int(doc["contract"]["x86_64"]["arch_capabilities"], 16) == x86.arch_capabilities_of(feats)


def test_names_a_libvirt_lacks_are_left_out_and_said(profiles):
    conflicts: list[str] = []
    out = xb._readable_everywhere({"sse2": "require", "tsa-sq-no": "require", "cmp_legacy": "require"},
                                  profiles, conflicts)
    assert "tsa-sq-no" not in out and out["sse2"] == "require" and out["cmp_legacy"] == "disable"
    assert any("tsa-sq-no" in c and "bookworm" in c for c in conflicts), conflicts
    assert any("cmp_legacy" in c and "sid" in c for c in conflicts), conflicts


def test_explicit_arch_capabilities_pins_every_other_bit_off():
    known = frozenset(["arch-capabilities", "mds-no", "rdctl-no", "taa-no"])
    out = explicit_arch_capabilities({"arch-capabilities": "require", "mds-no": "require"}, known)
    assert out == {"arch-capabilities": "require", "mds-no": "require", "rdctl-no": "disable", "taa-no": "disable"}
    assert x86.arch_capabilities_of(out) == 1 << 5
    off = explicit_arch_capabilities({"mds-no": "require"}, known)       # no MSR: every bit off, the MSR too
    assert off["arch-capabilities"] == "disable" and x86.arch_capabilities_of(off) == 0
    assert explicit_arch_capabilities({"x": "require"}, None) == {"x": "require"}   # no CPU map: nothing added


def test_carrier_cpu_spells_a_host_as_the_carrier_model_plus_and_minus():
    xml = carrier_cpu({"fpu", "sse"}, {"fpu", "avx"})
    model, feats = parse_cpu(xml)
    assert model == "kvm64" and feats == {"avx": "require", "sse": "disable"}


@pytest.mark.parametrize("message, name", [
    ("internal error: Unknown CPU feature tsa-l1-no", "tsa-l1-no"),
    ("unsupported configuration: unknown CPU feature: overflow-recov", "overflow-recov"),
    ("internal error: Unknown CPU model EPYC-Genoa", None),
])
def test_unknown_feature_is_read_from_libvirts_error(message, name):
    assert unknown_feature(message) == name


def test_a_host_model_contract_from_the_newest_host_is_refused_on_the_oldest_naming_what_it_lacks(profiles):
    """The rollback of a VM pinned on sid to bookworm, on a machine type both have: the
    verdict names the CPU model and every feature bookworm's libvirt cannot read."""
    from abiguard.model import contract

    sid, bookworm = profiles[2], profiles[0]
    sealed = contract.from_profile(sid, machine_type="pc-q35-7.2")
    v = verdict.check(sealed, bookworm)
    assert not v.allow
    unknown = set(sealed.body.features) - bookworm.libvirt.cpu.features
    named = {p.field for p in v.problems if p.register == "CPU feature"}
    assert unknown and unknown <= named, (sorted(unknown - named), sorted(named))
