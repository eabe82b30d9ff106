"""The bundled arm64 host profiles are real: each shows what its kernel measured."""
from __future__ import annotations

import os

import pytest

from abiguard.builtin import builtin_profiles
from abiguard.model import profile
from helpers.arm64facts import FACTS, check_profile

BUNDLED = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}


def test_every_lab_host_is_bundled():
    assert sorted(BUNDLED) == sorted(FACTS)


@pytest.mark.parametrize("name", sorted(FACTS))
def test_bundled_profile_matches_kernel_facts(name):
    doc = profile.load(BUNDLED[name]).doc  # also verifies the digest
    check_profile(name, doc)


def test_tcr2_and_pie_registers_exist_only_on_6_12():
    """6.12 lists TCR2_EL1/PIRE0_EL1/PIR_EL1 for -cpu max; 7.2 stopped listing them."""
    tcr2 = "0x603000000013c103"
    listed = {n: tcr2 in profile.load(p).doc["kvm"]["aarch64"]["configs"]["psci"]["registers"]
              for n, p in BUNDLED.items() if n.endswith("-arm64")}
    assert listed == {"5.10.0-32-arm64": False, "6.1.0-50-arm64": False,
                      "6.12.117+deb13-arm64": True, "7.2.13+deb14-arm64": False}
