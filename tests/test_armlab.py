"""The arm64 lab end to end, on real Debian arm64 kernels booted under TCG with EL2:
probe every lab host, replay every host's register stream on every other host, and hold
the fresh results against the bundled ones and against the verdict engine.

Needs root-free but heavy real parts: qemu-system-aarch64, Debian's archive for the
kernels (cached in /var/cache/abiguard-lab), ~4 minutes on 2 cores.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from abiguard.builtin import builtin_profiles
from abiguard.model import profile
from helpers.arm64facts import FACTS, check_profile
from helpers.groundtruth import compare, load_dir
from helpers.realparts import need, need_commands
from helpers.timing import phase
from lab import warmup

pytestmark = pytest.mark.lab
HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLED = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}


@pytest.fixture(scope="session")
def lab_out(tmp_path_factory):
    need_commands("qemu-system-aarch64", "apt-get", "dpkg-deb", "timeout")
    need(os.path.exists("/usr/share/keyrings/debian-archive-keyring.gpg"), "Debian archive keyring")
    out = tmp_path_factory.mktemp("armlab")
    warmup.wait("armlab-kernels")
    with phase("arm64 kernels: probe every host, replay every stream on every other"):
        cp = subprocess.run([sys.executable, os.path.join(HERE, "lab", "armlab_matrix.py"), str(out)],
                            capture_output=True, text=True, timeout=2400)
    assert cp.returncode == 0, cp.stderr[-4000:]
    sys.stderr.write(f"\narmlab: {cp.stderr.strip().splitlines()[-1]}\n")
    return out


@pytest.fixture(scope="session")
def fresh(lab_out):
    return load_dir(str(lab_out / "profiles")), load_dir(str(lab_out / "groundtruth"))


def test_every_host_booted_and_probed(fresh, lab_out):
    profiles, groundtruth = fresh
    assert len(profiles) == 8 and set(groundtruth) == set(profiles)
    for name, doc in profiles.items():
        profile.Profile.from_json(doc, name)
        lab = load_dir(str(lab_out / "lab"))[name + "-probe"]
        assert lab["kvm_initialized"] and lab["dev_kvm"], lab


def test_fresh_profiles_show_the_kernel_facts(fresh):
    profiles, _ = fresh
    for name, doc in profiles.items():
        if name not in FACTS:
            warnings.warn(f"lab host {name} is not a bundled kernel (a newer Debian build?): facts not checked",
                          stacklevel=1)
            continue
        check_profile(name, doc)


def test_fresh_profiles_are_the_bundled_ones(fresh):
    """Same kernel, same emulated CPU: the same profile, to the digest (the probe is
    deterministic across boots and machines)."""
    profiles, groundtruth = fresh
    for name, doc in profiles.items():
        if name in BUNDLED:
            assert doc["digest"] == profile.load(BUNDLED[name]).digest, name
        assert groundtruth[name]["destination_profile_digest"] == doc["digest"], "replay boot re-probed differently"


def test_engine_agrees_with_the_fresh_ground_truth(fresh):
    profiles, groundtruth = fresh
    results = compare(profiles, groundtruth)
    assert results
    bad = [r for r in results if not r.agrees]
    assert not bad, bad[:5]
