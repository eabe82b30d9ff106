"""IA32_ARCH_CAPABILITIES a host's KVM will not put into a vCPU (issue 26).

On the machine these labs run on (AMD EPYC, kernel 6.18) KVM offers MSR 0x10a as
0x400000000c000069 on the system fd, yet KVM_SET_MSRS on a vCPU takes none of its bits:
QEMU 7.2 and 10.0, whose host CPU expansion offers them, abort any VM that asks for one
("failed to set MSR 0x10a"). The probe measures which bits a vCPU takes
(``kvm.x86_64.vcpu_msrs``); a contract never asks a host for a bit it does not take, the
verdict refuses a start that would, and a bit such a host cannot give does not widen.

Pure over the committed real profiles (tests/data/x86, recorded before the probe measured
it) with this measurement added; the real part: the probe on this machine's /dev/kvm.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from abiguard.arch.x86 import features as x86
from abiguard.arch.x86.judge import contract_body, unstartable_arch_capabilities
from abiguard.engine import baseline, verdict
from abiguard.errors import ProfileError
from abiguard.model import contract, profile
from helpers.realparts import need

DATA = Path(__file__).parent / "data" / "x86" / "profiles"
#: measured on the lab machine (AMD EPYC, 6.18.44-fc): KVM's value, and what a vCPU took
MEASURED = {"0x10a": {"value": "0x400000000c000069", "settable": "0x0"}}


def with_vcpu_msrs(name: str, vcpu_msrs: dict | None) -> profile.Profile:
    doc = json.loads((DATA / f"{name}.json").read_text())
    doc = copy.deepcopy(doc)
    if vcpu_msrs is not None:
        doc["kvm"]["x86_64"]["vcpu_msrs"] = vcpu_msrs
    doc["digest"] = profile.digest_of(doc)
    return profile.Profile.from_json(doc, f"{name} (+vcpu_msrs)").with_label(name)


@pytest.fixture(scope="module")
def measured() -> dict[str, profile.Profile]:
    return {v: with_vcpu_msrs(v, MEASURED) for v in ("bookworm", "trixie", "sid")}


def test_old_profile_asks_for_the_bits_and_the_measured_one_does_not(measured):
    old = contract_body(with_vcpu_msrs("bookworm", None))
    assert old.features.get("arch-capabilities") == "require" and old.arch_capabilities == 0x69
    new = contract_body(measured["bookworm"])
    assert new.features.get("arch-capabilities") == "disable" and new.arch_capabilities == 0
    for feat in x86.ARCH_CAPABILITY_BY_FEATURE:
        assert new.features.get(feat) in (None, "disable"), feat
    assert unstartable_arch_capabilities(measured["trixie"]) == set(x86.ARCH_CAPABILITY_BY_FEATURE)
    assert unstartable_arch_capabilities(with_vcpu_msrs("trixie", None)) == set()


def test_a_start_asking_for_a_bit_kvm_refuses_is_refused_naming_it(measured):
    """What QEMU 7.2 aborts on (measured in the lab): the pin of the old profile's contract."""
    old = contract.from_profile(with_vcpu_msrs("bookworm", None))
    v = verdict.realise(old, measured["bookworm"])
    lines = [p.line() for p in v.problems]
    assert not v.allow, lines
    assert any("RDCL_NO" in ln and "cannot start it" in ln and "failed to set MSR 0x10a" in ln for ln in lines), lines
    rep = baseline.host_report(old, measured["bookworm"])
    assert rep["starts_with_contract"] is False and rep["cannot_start"], rep
    # the contract made from the measured profile starts there, and on trixie
    fine = contract.from_profile(measured["bookworm"])
    for v_name in ("bookworm", "trixie"):
        rep = baseline.host_report(fine, measured[v_name])
        assert rep["starts_with_contract"], (v_name, rep["cannot_start"])


def test_a_bit_no_vcpu_takes_does_not_widen(measured):
    """GDS_NO / RFDS_NO: libvirt 9.0 cannot name them, trixie's QEMU offers them. Where
    trixie's KVM puts neither into a vCPU, no guest there reads them: no widening."""
    bookworm = with_vcpu_msrs("bookworm", None)
    sealed = contract.from_profile(bookworm)
    # the old answer: trixie would give GDS_NO and RFDS_NO to a VM that did not have them
    v_old = verdict.check(sealed, with_vcpu_msrs("trixie", None))
    assert any("GDS_NO" in p.line() and p.kind == "widen" for p in v_old.problems), [p.line() for p in v_old.problems]
    v_new = verdict.check(sealed, measured["trixie"])
    assert not any(p.kind == "widen" and "ARCH_CAPABILITIES" in p.register for p in v_new.problems), \
        [p.line() for p in v_new.problems]


def test_every_baseline_of_measured_hosts_starts_on_each_of_them(measured):
    import itertools

    names = list(measured)
    for n in range(1, len(names) + 1):
        for subset in itertools.combinations(names, n):
            doc = baseline.compute([measured[s] for s in subset], hypervisors=[])
            body = doc["contract"]["x86_64"]
            assert body["arch_capabilities"] == "0x0", (subset, body["arch_capabilities"])
            for label, rep in doc["hosts"].items():
                assert rep["starts_with_contract"], (subset, label, rep["cannot_start"])
                assert rep["accepts_incoming"], (subset, label, rep["incoming_problems"])


@pytest.mark.parametrize("bad, what", [
    ({"0x10a": {"value": "0x1", "settable": "0x3"}}, "settable"),
    ({"0x10a": {"value": "0x1"}}, "settable"),
    ({"0x10a": "0x1"}, "vcpu_msrs.0x10a"),
    ({"10a": {"value": "0x1", "settable": "0x0"}}, "vcpu_msrs"),
])
def test_bad_vcpu_msrs_are_named(bad, what):
    with pytest.raises(ProfileError) as e:
        with_vcpu_msrs("bookworm", bad)
    assert what in str(e.value), str(e.value)


def test_the_view_carries_the_measurement(measured):
    p = measured["trixie"]
    back = profile.Profile.from_view(p.to_view())
    assert back.arch_section().vcpu_msrs == {0x10a: (0x400000000c000069, 0)}
    with pytest.raises((TypeError, ValueError)):
        view = list(p.to_view())
        kvm_v = list(view[3])
        sec = list(kvm_v[3])
        sec[5] = {0x10a: ("0x1", 0)}
        kvm_v[3] = tuple(sec)
        view[3] = tuple(kvm_v)
        profile.Profile.from_view(tuple(view))


def test_this_machines_kvm_is_measured():
    """The probe on this machine's /dev/kvm: the bits a vCPU takes are a subset of KVM's
    value, and a contract made from this host asks for no other bit."""
    need(os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm (x86 KVM)")
    need(os.uname().machine == "x86_64", "an x86_64 host")
    from abiguard.arch.x86 import probe
    from abiguard.uapi import kvm

    missing = kvm.Missing()
    with kvm.KvmSystem() as system:
        caps = kvm.caps_of(system, missing, "/dev/kvm")
        out = probe.probe(system, caps, missing)
    assert "0x10a" in out["feature_msrs"], out["feature_msrs"]
    got = out["vcpu_msrs"]["0x10a"]
    value, settable = int(got["value"], 16), int(got["settable"], 16)
    assert value == int(out["feature_msrs"]["0x10a"], 16) and not settable & ~value, got
    print(f"\nthis machine: IA32_ARCH_CAPABILITIES offered {value:#x}, a vCPU takes {settable:#x}")


def test_a_bit_an_old_libvirt_cannot_name_leaves_the_msr_out():
    """Where trixie's vCPUs would take GDS_NO / RFDS_NO (a host whose KVM puts every bit in,
    as a profile without the measurement is read) and bookworm's libvirt 9.0 cannot name them
    to turn them off, the baseline leaves IA32_ARCH_CAPABILITIES out, naming the bits and the
    host: every host then starts and accepts it."""
    takes_all = {"0x10a": {"value": "0x400000000c000069", "settable": "0x400000000c000069"}}
    hosts = [with_vcpu_msrs("bookworm", takes_all), with_vcpu_msrs("trixie", takes_all)]
    doc = baseline.compute(hosts, hypervisors=[])
    body = doc["contract"]["x86_64"]
    assert body["features"]["arch-capabilities"] == "disable" and body["arch_capabilities"] == "0x0", body
    line = next(c for c in doc["conflicts"] if c.startswith("IA32_ARCH_CAPABILITIES left out"))
    assert "gds-no (bit 26) reaches a guest on trixie" in line and "rfds-no (bit 27)" in line, line
    for label, rep in doc["hosts"].items():
        assert rep["starts_with_contract"] and rep["accepts_incoming"], (label, rep)


def test_rollback_hosts_are_held_to_the_same_start(measured):
    """A rollback host (the profile a host ran before) is one the contract must start on too."""
    doc = baseline.compute([measured["sid"]], rollback=[measured["bookworm"], measured["trixie"]], hypervisors=[])
    assert sorted(doc["hosts"]) == ["bookworm", "sid", "trixie"] and doc["rollback_hosts"] == ["bookworm", "trixie"]
    for label, rep in doc["hosts"].items():
        assert rep["starts_with_contract"] and rep["accepts_incoming"], (label, rep)
    # the contract of the newest host alone asks bookworm's QEMU for what it cannot start
    own = contract.from_profile(measured["sid"])
    rep = baseline.host_report(own, measured["bookworm"])
    assert not rep["starts_with_contract"] and any("machine type" in ln for ln in rep["cannot_start"]), rep
