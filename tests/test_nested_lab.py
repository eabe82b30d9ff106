"""Enforcement proven with real QEMU on real arm64 kernels (tests/lab/nested).

Debian's arm64 qemu-system-aarch64 (bookworm 7.2, sid 11.1) runs with -accel kvm -cpu host
inside the arm64 lab's 7.2 and 6.12 kernels. A tiny guest prints what the SMCCC/PSCI/KVM
hypercall discovery answers; its state is saved to a file (QMP migrate) on one kernel and
restored (-incoming) on the other, once as booted with the kernel's defaults and once with
abiguard's pins (abiguard_pin.so via LD_PRELOAD, configured by abiguard's pin planning from the
bundled real host profiles). Each pair's JSON is kept in $NESTED_RESULTS (default: a
temporary directory). About 4-5 minutes warm on 2 cores; the first run also fetches the
two QEMU builds (~2 minutes each).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from abiguard.arch.arm64 import pins as arm64_pins
from abiguard.builtin import builtin_profiles
from abiguard.engine import verdict
from abiguard.model import contract, profile
from abiguard.model.pins import env_value
from helpers.realparts import need, need_commands
from helpers.timing import phase
from lab import warmup

pytestmark = pytest.mark.lab
HERE = os.path.dirname(os.path.abspath(__file__))
NESTED = os.path.join(HERE, "lab", "nested")
ARMLAB_CACHE = os.environ.get("ARMLAB_CACHE", "/var/cache/abiguard-lab/armlab")
NESTED_CACHE = os.environ.get("NESTED_CACHE", "/var/cache/abiguard-lab/nested")
PROFILES = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
K72, K612, K61 = "7.2.13+deb14-arm64", "6.12.117+deb13-arm64", "6.1.0-50-arm64"
QEMU = {"bookworm": "7.2.22", "sid": "11.1.3"}
PSCI, BMAP, BMAP2 = "0x6030000000140000", "0x6030000000160002", "0x6030000000160003"
ISAR0 = "0x603000000013c030"
PAIRS = [(s, a, b) for s in ("bookworm", "sid") for a, b in ((K72, K612), (K612, K72))]
#: the VM of each pair: the fleet contract (6.12's values: it may roll back to 6.12), or for
#: the ID-register pair a VM booted on 6.1 arriving on 7.2
EXTRA = ("bookworm", K61, K72)
ALL_PAIRS = [*PAIRS, EXTRA]


def load(name: str) -> profile.Profile:
    return profile.load(PROFILES[name])


def with_qemu(prof: profile.Profile, version: str) -> profile.Profile:
    doc = copy.deepcopy(prof.doc)
    doc["stack"] = {"qemu": {"version": version}}
    doc["digest"] = profile.digest_of(doc)
    return profile.Profile.from_json(doc, f"{prof.name} with QEMU {version}")


def fleet_contract(of: str = K612) -> contract.Contract:
    """The contract of a VM that must be able to roll back to 6.12: 6.12's values, for QEMU's
    -cpu host (the richest vCPU configuration: PMU, SVE, pointer authentication)"""
    return contract.from_profile(load(of))


def pins_on(host: str, stream_of: str | None = None, of: str = K612) -> str:
    """at boot: every firmware value of the contract, explicitly (PSCI 1.1, VENDOR_HYP_BMAP_2
    = 0 on 7.2); arriving with another host's stream: what the hook would pin (carried)"""
    if stream_of is None:
        return env_value(arm64_pins.for_start(fleet_contract(of), load(host), explicit=True))
    stream = contract.from_profile(load(stream_of)).body.stream
    return env_value(arm64_pins.for_arrival(fleet_contract(of), load(host), stream)) or "-"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    need_commands("qemu-system-aarch64", "dpkg-deb", "readelf", "apt-get", "timeout",
                  "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objcopy")
    for k in (K72, K612):
        need(os.path.exists(os.path.join(ARMLAB_CACHE, "kernels", k, "Image")),
             f"the arm64 lab's kernel {k} (tests/lab/armlab.sh fetch)")
    out = os.environ.get("NESTED_RESULTS") or str(tmp_path_factory.mktemp("nested"))
    res = {}
    warmup.wait("armlab-kernels", "nested-qemu")
    for suite in ("bookworm", "sid"):
        if not os.path.exists(os.path.join(NESTED_CACHE, "stage-" + suite, "usr/bin/qemu-system-aarch64")):
            with phase(f"{suite}'s arm64 QEMU fetched and unpacked"):
                cp = subprocess.run([os.path.join(NESTED, "fetch_qemu.sh"), suite], capture_output=True,
                                    text=True, timeout=900, check=False)
            assert cp.returncode == 0, cp.stderr[-3000:]
    for suite, src, dst in ALL_PAIRS:
        # the source boots the VM pinned to its contract; the destination pins what the hook
        # would: values that differ from its defaults, registers it has and the stream lacks
        of = src if (suite, src, dst) == EXTRA else K612
        path = os.path.join(out, f"{suite}-{src}-to-{dst}.json")
        with phase(f"QEMU {QEMU[suite]}: {src} -> {dst}, unpinned and pinned"):
            cp = subprocess.run([sys.executable, os.path.join(NESTED, "nested_lab.py"), "pair", src, dst, suite,
                                 pins_on(src, of=of), pins_on(dst, src, of=of), "--out", path],
                                capture_output=True, text=True, timeout=900, check=False)
        assert cp.returncode == 0, cp.stderr[-3000:]
        with open(path) as f:
            res[(suite, src, dst)] = json.load(f)
        sys.stderr.write(f"\nnested {suite} {src} -> {dst}: {res[(suite, src, dst)]['host_wall_s']} s\n")
    return res


def steps(r: dict, boot: str) -> dict:
    return {s["name"]: s for s in r[boot]["steps"]}


@pytest.mark.parametrize("suite,src,dst", ALL_PAIRS)
def test_boots_ran_clean(results, suite, src, dst):
    r = results[(suite, src, dst)]
    for boot in ("source_boot", "destination_boot"):
        assert r[boot].get("kernel") == (src if boot == "source_boot" else dst), r[boot].get("errors")
    s = steps(r, "source_boot")
    for n in ("unpinned", "pinned"):
        assert s[n]["qemu_version"] == QEMU[suite]
        assert s[n]["migrate_status"] == "completed" and s[n]["guest_consistent"], s[n]
        assert "error" not in s[n], s[n]


@pytest.mark.parametrize("suite,src,dst", ALL_PAIRS)
def test_library_write_path_on_real_kvm(results, suite, src, dst):
    r = results[(suite, src, dst)]
    s, d = steps(r, "source_boot"), steps(r, "destination_boot")
    pins = dict(kv.split("=") for kv in r["pins"].split(","))
    # pinned values read back on a real vCPU; the scratch vCPU (no PSCI_0_2) untouched
    assert s["src-pinned"]["rc"] == 0 and "register(s) pinned" in s["src-pinned"]["stderr"]
    assert s["src-pinned"]["values"][PSCI] == pins[PSCI]
    assert s["src-scratch-untouched"]["values"][PSCI] == "0x1"         # PSCI 0.1: KVM's default
    assert s["src-scratch-untouched"]["stderr"] == ""
    # a value the kernel refuses: exit 1 with the register, value and errno
    bad = s["src-bad-bitmap"]
    assert bad["rc"] == 1 and bad["stdout"] == ""
    assert bad["stderr"].startswith(f"abiguard-pin: KVM_SET_ONE_REG {BMAP} = 0x80 on vCPU fd")
    assert "errno 22 (Invalid argument); this host's KVM refuses the pinned value" in bad["stderr"]
    missing = s["src-missing-register"]                                 # VENDOR_HYP_BMAP_2
    if src in (K612, K61):
        assert missing["rc"] == 1 and "errno 2 (No such file or directory); this host's KVM does not " \
                                      "have the register" in missing["stderr"]
    else:
        assert missing["rc"] == 0 and missing["values"][BMAP2] == "0x0"
    # ID register: a field lowered inside the writable mask is taken; a bit outside is refused
    low, out = s["src-idreg-lowered"], s["src-idreg-outside-mask"]
    if src == K61:   # no writable ID registers: abiguard refuses the pin, and so does the kernel
        assert "no writable ID registers (before Linux 6.7)" in low["abiguard_refuses"][0]
        assert low["rc"] == 1 and "errno 22" in low["stderr"]
    else:
        assert low["abiguard_refuses"] == []                           # 6.12 and 7.2: writable
        assert low["rc"] == 0 and low["values"][ISAR0] == low["expect"] != low["default"], low
    assert out["rc"] == 1 and f"KVM_SET_ONE_REG {ISAR0}" in out["stderr"] and "errno 22" in out["stderr"]
    refused = d["dst-refused"]                                          # PSCI 1.3
    if dst in (K612, K61):
        assert refused["rc"] == 1 and "KVM_SET_ONE_REG 0x6030000000140000 = 0x10003" in refused["stderr"]
    else:
        assert refused["rc"] == 0 and refused["values"][PSCI] == "0x10003"
    # QEMU re-applies on every VCPU_INIT (realize + resets)
    assert s["pinned"]["qemu_output"].count("register(s) pinned") >= 2
    assert "abiguard-pin" not in s["unpinned"]["qemu_output"]


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_rollback_7_2_to_6_12(results, suite):
    """the kvmarm case: a VM booted on 7.2 rolled back to 6.12"""
    r = results[(suite, K72, K612)]
    s, d = steps(r, "source_boot"), steps(r, "destination_boot")
    assert s["unpinned"]["guest_sees"]["PSCI_VERSION"] == "00010003"
    assert s["pinned"]["guest_sees"]["PSCI_VERSION"] == "00010001"
    # without the pin: QEMU fails the restore on 6.12 (PSCI 1.3 refused by its KVM)
    un = d["unpinned"]
    assert not un["restored"] and un["rc"] != 0
    if suite == "bookworm":
        assert "error while loading state for instance 0x0 of device 'cpu'" in un["qemu_output"]
    else:
        assert "Could not set register fw reg 0 to 10003 (is 10001)" in un["qemu_output"]
    # with the pin: restored, and the guest sees exactly the same services, and continues
    pi = d["pinned"]
    assert pi["restored"] and pi["incoming_migrate_status"] == "completed", pi
    assert pi["guest_sees"] == s["pinned"]["guest_sees"]
    assert 0 < pi["guest_first"] - s["pinned"]["guest_last"] <= 2
    assert pi["after_reset_sees"] == pi["guest_sees"]               # and after a reboot on 6.12
    # abiguard agrees, under each QEMU's rule: unpinned refused (PSCI), pinned allowed
    dest = with_qemu(load(K612), QEMU[suite])
    v = verdict.check(contract.from_profile(load(K72)), dest)
    assert [p.register for p in v.problems] == ["PSCI_VERSION"]
    doc = contract.from_profile(load(K72)).to_json()
    doc["aarch64"]["values"].update({f"{p.id:#x}": f"{p.value:#x}"
                                     for p in arm64_pins.for_start(fleet_contract(), load(K72), explicit=True)})
    assert verdict.check(contract.seal_json(doc), dest).problems == []


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_upgrade_6_12_to_7_2(results, suite):
    """6.12 -> 7.2: under QEMU 7.2 no pin helps (6.12 lists more registers, so QEMU's length
    check fails) and abiguard refuses up front; QEMU 11.1 tolerates the difference"""
    r = results[(suite, K612, K72)]
    s, d = steps(r, "source_boot"), steps(r, "destination_boot")
    dest = with_qemu(load(K72), QEMU[suite])
    v = verdict.check(fleet_contract(), dest)
    if suite == "bookworm":
        for n in ("unpinned", "pinned"):
            assert not d[n]["restored"]
            assert "Failed to load cpu:cpreg_vmstate_array_len" in d[n]["qemu_output"], d[n]
        assert "cpreg_vmstate_array_len" in [p.register for p in v.problems]
    else:
        pi = d["pinned"]
        assert pi["restored"], pi
        assert pi["guest_sees"] == s["pinned"]["guest_sees"]
        assert pi["after_reset_sees"] == pi["guest_sees"]
        # 11.1 keeps the destination's own VENDOR_HYP_BMAP_2 (0 here, pinned 0 when not)
        assert "fw feat reg 3 expected by the destination but not in the incoming stream" in pi["qemu_output"]
        assert v.problems == []


def test_incoming_id_register_pins_6_1_to_7_2(results):
    """a VM booted on 6.1 arriving on 7.2 (QEMU 7.2): the destination pins 6.1's ID-register
    fields (inside 7.2's writable masks, safe by the kernel's rule) and PSCI 1.1 at every
    vCPU init, so a reboot on 7.2 keeps the guest's view; the restore keeps it too"""
    r = results[EXTRA]
    s, d = steps(r, "source_boot"), steps(r, "destination_boot")
    assert "0x603000000013c028=" in r["dst_pins"] and "0x6030000000140000=0x10001" in r["dst_pins"]
    for n in ("unpinned", "pinned"):
        assert d[n]["restored"], d[n]
        assert d[n]["guest_sees"] == s[n]["guest_sees"]
        assert d[n]["after_reset_sees"] == d[n]["guest_sees"]
    pi = d["pinned"]
    assert pi["qemu_output"].count("register(s) pinned") >= 3               # realize, resets, reboot
    assert "EBUSY" not in pi["qemu_output"]          # the pins equal what the stream carried
    assert verdict.check(fleet_contract(K61), with_qemu(load(K72), QEMU["bookworm"])).problems == []
