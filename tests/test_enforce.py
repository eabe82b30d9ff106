"""The enforcement backend: abiguard_pin.so (built here with the system compiler and driven
through LD_PRELOAD), the pins a contract needs on a host (abiguard.arch.arm64.pins, planned
from the verdict and validated by the same rule rows, against the bundled real host
profiles) and the library configuration they render to (abiguard.model.pins).

The library's write path needs a real arm64 KVM vCPU: tests/test_nested_lab.py runs it in
the arm64 lab (pinned value read back, a value the kernel refuses aborts the start)."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from abiguard import preload
from abiguard.arch.arm64 import pins as arm64_pins
from abiguard.arch.arm64.regs import preload_allows
from abiguard.builtin import builtin_profiles
from abiguard.errors import EnforceError
from abiguard.model import contract, pins as enforce, profile
from abiguard.model.names import QEMU_NS
from helpers.realparts import need

PROFILES = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
PSCI, BMAP, BMAP2 = 0x6030000000140000, 0x6030000000160002, 0x6030000000160003
WA1 = 0x6030000000140001
ID_AA64PFR0 = 0x603000000013C020        # op0=3 op1=0 CRn=0 CRm=4 op2=0
ID_AA64ISAR0 = 0x603000000013C030       # CRm=6 op2=0
MIDR = 0x603000000013C000               # CRm=0 op2=0
CLIDR = 0x603000000013C801              # op1=1


def load(name: str) -> profile.Profile:
    return profile.load(PROFILES[name])


def plan(c: contract.Contract, prof: profile.Profile, explicit: bool = False, carried: bool = False) -> list:
    return arm64_pins.for_arrival(c, prof) if carried else arm64_pins.for_start(c, prof, explicit)


def check_pins(pins: dict, prof: profile.Profile, config: str) -> list[str]:
    return [p.line() for p in arm64_pins.check(pins, prof, config)]


# -- the library ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> str:
    cc = os.environ.get("CC", "cc")
    need(shutil.which(cc) is not None, f"a C compiler ({cc}) to build {preload.LIBRARY_NAME}")
    out = str(tmp_path_factory.mktemp("pin") / preload.LIBRARY_NAME)
    return preload.build_library(out, cc)


# a stand-in for QEMU: ioctl() through libc, so the preloaded wrapper sees it; on x86 a
# KVM_ARM_VCPU_INIT on a non-KVM fd fails (ENOTTY), so nothing is written
PROBE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(32)
buf[4] = 4                                  # features[0] = 1 << KVM_ARM_VCPU_PSCI_0_2
fd = os.open("/dev/null", os.O_RDWR)
ret = libc.ioctl(fd, ctypes.c_ulong(0x4020AEAE), buf)
print("ioctl", ret, ctypes.get_errno())
"""


def run_with(lib: str | None, pins: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", preload.ENV_PINS)}
    if lib:
        env["LD_PRELOAD"] = lib
    if pins is not None:
        env[preload.ENV_PINS] = pins
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_library_builds_warning_free(lib):
    assert os.path.getsize(lib) > 0


def test_unset_does_nothing(lib):
    plain, pre = run_with(None, None), run_with(lib, None)
    assert pre.returncode == 0 and pre.stderr == ""
    assert pre.stdout == plain.stdout           # the same ioctl result and errno (ENOTTY)
    assert pre.stdout.startswith("ioctl -1 25")


def test_good_config_loads_and_passes_ioctls_through(lib):
    r = run_with(lib, f"{PSCI:#x}=0x10001,{BMAP2:#x}=0x0,{ID_AA64PFR0:#x}=0x1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ioctl -1 25") and r.stderr == ""      # failed init: nothing written


@pytest.mark.parametrize("pins, message", [
    ("", "is set but empty"),
    ("garbage", "expected REGISTER_ID=VALUE"),
    ("0x6030000000140000", "expected REGISTER_ID=VALUE"),
    ("6030000000140000=0x10001", "expected REGISTER_ID=VALUE"),          # no 0x
    ("0x6030000000140000=0x10001,", "expected REGISTER_ID=VALUE"),       # trailing comma
    ("0x6030000000140000=0x10001;0x6030000000160003=0x0", "malformed value"),
    ("0x6030000000140000=65537", "malformed value"),                     # decimal
    ("0x6030000000140000=0x", "malformed value"),
    ("0x6030000000140000=0x10000000000000000", "malformed value"),       # 17 digits
    ("0x6030000000140000=-0x1", "malformed value"),
    ("0x6030000000140000=0x1 ", "malformed value"),
    (f"{PSCI:#x}=0x10001,{PSCI:#x}=0x10000", "given twice"),
    ("0x603000000013c005=0x0", "not on the allow-list"),                 # CRm=0: MPIDR
    ("0x603000000013d000=0x0", "not on the allow-list"),                 # CSSELR_EL1 (op1=2)
    ("0x6030000000100000=0x0", "not on the allow-list"),                 # core register X0
    ("0x6030000000150000=0x0", "not on the allow-list"),                 # SVE group
    ("0x602000000011000e=0x0", "not on the allow-list"),                 # CCSIDR demux, CSSELR 14
    ("0x6030000000140000=0x10001,hide=0x1", "not an arm64 32/64-bit register id"),
    ("0x6030000000140000=0x10001/0x10000", "only CTR_EL0 takes a stream value"),
    ("0x603000000013d801=0x8444c004/9444c004", "malformed stream value"),
    ("0x603000000013d801=0x8444c004/0x9444c004/0x1", "malformed stream value"),
    ("0x6030000000140000=0x10001,hide=12", "expected hide=0xREGISTER_ID"),
    ("hide=0x6030000000160003,0x6030000000140000=0x10001", "registers come before the cpu= items"),
    ("hide=0x6030000000160003,hide=0x6030000000160003", "given twice"),
    ("0x6030000000170000=0x0", "not on the allow-list"),
    (",".join(f"{r:#x}=0x0" for r in ([0x603000000013C008 + i for i in range(56)]
                                       + [0x6030000000140000 + i for i in range(9)])), "more than 64"),
])
def test_bad_config_exits_before_anything_runs(lib, pins, message):
    r = run_with(lib, pins)
    assert r.returncode == 1
    assert r.stdout == ""                              # the program never ran
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("abiguard-pin: ") and message in lines[0], r.stderr


def test_allow_list_matches_python():
    with open(preload.SOURCE_PATH) as f:
        src = f.read()
    assert "0x6030000000140000ULL" in src and "0x6030000000160000ULL" in src
    for rid in (PSCI, WA1, BMAP, BMAP2, ID_AA64PFR0, ID_AA64ISAR0, 0x603000000013C038 + 7, MIDR,
                0x603000000013C006, 0x603000000013C807):   # + REVIDR, AIDR (the library's is_imp_id)
        assert preload_allows(rid), hex(rid)
    assert "0x603000000013c000ULL" in src and "0x603000000013c807ULL" in src
    # the cache description: CLIDR_EL1, CTR_EL0, the 14 CCSIDR demux ids
    assert "0x603000000013c801ULL" in src and "0x603000000013d801ULL" in src and "0x6020000000110000ULL" in src
    for rid in (CLIDR, 0x603000000013D801, 0x6020000000110000, 0x602000000011000D):
        assert preload_allows(rid), hex(rid)
    for rid in (0x6030000000100000, 0x602000000011000E, 0x6030000000150000, 0x603000000013D000,
                0x603000000013C005, 0x603000000013C040):  # CSSELR, MPIDR (CRm=0), CRm=8
        assert not preload_allows(rid), hex(rid)


# -- configuration from a contract ----------------------------------------------------

def test_rollback_contract_pins_psci_only_what_differs():
    """a VM of the 6.12 contract booted on 7.2: PSCI pinned to 1.1 (7.2 defaults to 1.3);
    VENDOR_HYP_BMAP_2 (absent from the 6.12 stream) is 0 by default on 7.2: no pin needed"""
    c = contract.from_profile(load("6.12.117+deb13-arm64"), "psci")
    pins = plan(c, load("7.2.13+deb14-arm64"))
    assert [(p.name, p.value, p.how) for p in pins] == [("PSCI_VERSION", 0x10001, "preload")]
    assert "host default 0x10003" in pins[0].why
    assert enforce.env_value(pins) == "0x6030000000140000=0x10001"


def test_explicit_pins_every_firmware_value_and_keeps_bitmap_2_off():
    c = contract.from_profile(load("6.12.117+deb13-arm64"), "psci")
    pins = plan(c, load("7.2.13+deb14-arm64"), explicit=True)
    by = {p.id: p for p in pins}
    assert by[PSCI].value == 0x10001
    assert by[BMAP2].value == 0 and "absent from the VM's stream" in by[BMAP2].why
    assert by[BMAP].value == 3 and "pinned explicitly" in by[BMAP].why
    assert WA1 not in by                                    # never pinned
    env = enforce.env_value(pins)
    assert env.startswith("0x6030000000140000=0x10001,") and env.endswith("0x6030000000160003=0x0")


def test_host_only_bitmap_with_a_non_zero_default_is_pinned_off():
    doc = copy.deepcopy(load("7.2.13+deb14-arm64").doc)
    doc["kvm"]["aarch64"]["configs"]["psci"]["registers"][f"{BMAP2:#x}"] = "0x1"
    doc["digest"] = profile.digest_of(doc)
    prof = profile.Profile.from_json(doc, "edited")
    c = contract.from_profile(load("6.12.117+deb13-arm64"), "psci")
    by = {p.id: p for p in plan(c, prof)}
    assert by[BMAP2].value == 0 and "host default 0x1" in by[BMAP2].why


def test_same_host_contract_needs_no_library():
    c = contract.from_profile(load("7.2.13+deb14-arm64"), "psci")
    assert plan(c, load("7.2.13+deb14-arm64")) == []
    assert enforce.commandline_xml([]) == ""


def test_plan_refuses_what_the_host_refuses():
    c = contract.from_profile(load("7.2.13+deb14-arm64"), "psci")
    with pytest.raises(EnforceError) as e:
        plan(c, load("6.12.117+deb13-arm64"))
    msg = str(e.value)
    assert msg.startswith("abiguard: cannot enforce the contract on 6.12.117+deb13-arm64: PSCI_VERSION")
    assert "VM has PSCI 1.3, destination accepts 0.2, 1.0, 1.1: its KVM refuses PSCI 1.3" in msg


def test_plan_refuses_what_kvm_would_refuse_of_the_cache_description():
    """6.1's cache description starts on 7.2 (pinned); a line smaller than 7.2's minimum
    (its sanitised CTR_EL0: DminLine 4, 64 bytes) is what set_ccsidr refuses"""
    c = contract.from_profile(load("6.1.0-50-arm64"), "psci")
    pins = {p.id: p for p in plan(c, load("7.2.13+deb14-arm64"))}
    assert pins[0x6020000000110000].value == 0x701FE00A and pins[CLIDR].value == 0x2000023
    c.body.values[0x6020000000110000] = 0x701FE008         # LineSize 0: 16 bytes
    with pytest.raises(EnforceError) as e:
        plan(c, load("7.2.13+deb14-arm64"))
    assert any("DEMUX_CCSIDR[0]" in p and "smaller than the host's" in p for p in e.value.problems)
    with pytest.raises(EnforceError) as e:                  # before 6.3: the hardware's geometry only
        plan(contract.from_profile(load("7.2.13+deb14-arm64"), "psci"), load("6.1.0-50-arm64"))
    assert any("DEMUX_CCSIDR[0]" in p and "before Linux 6.3" in p for p in e.value.problems)


def test_incoming_pins_the_cache_description_and_hides_the_rest():
    """6.1 -> 7.2 incoming: CCSIDR/CLIDR come with the stream and are pinned so every vCPU
    reset keeps them (7.2 resets CLIDR to its own); the 15 registers 7.2 lists beyond
    6.1's stream are hidden from QEMU, so the VM carries 6.1's stream on from 7.2"""
    c = contract.from_profile(load("6.1.0-50-arm64"), "psci")
    pins = plan(c, load("7.2.13+deb14-arm64"), carried=True)
    by = {p.id: p for p in pins}
    assert by[CLIDR].value == 0x2000023 and by[0x6020000000110002].value == 0x70FFE07A
    assert by[PSCI].value == c.body.values[PSCI] == 0x10001
    hidden = sorted(p.id for p in pins if p.how == "hide")
    assert hidden == [0x6020000000110000 + i for i in range(3, 14)] + [
        0x603000000013DF01, 0x603000000013DF11, 0x603000000013DF12, BMAP2]
    assert enforce.env_value(pins).endswith(",hide=0x6030000000160003")


def _host_value(prof: profile.Profile, rid: int) -> int:
    return int(prof.doc["kvm"]["aarch64"]["configs"]["psci"]["registers"][f"{rid:#x}"], 16)


@pytest.mark.parametrize("pins, fragment", [
    ({PSCI: 0x10003}, "its KVM refuses PSCI 1.3 (EINVAL)"),
    ({PSCI: 0x10002}, "its KVM refuses PSCI 1.2"),
    ({BMAP: 0x4}, "destination knows 0x3: its KVM does not know bit 2 (EINVAL)"),
    ({WA1: 0x1}, "a mitigation level is a host property"),
    ({BMAP2: 0x0}, "this host's KVM does not list it"),
    ({MIDR: 0x0}, "lacks KVM_CAP_ARM_WRITABLE_IMP_ID_REGS"),
    ({CLIDR: 1 << 50}, "set_clidr refuses RES0 bits"),
    ({0x603000000013D000: 0x0}, "not enforceable"),                     # CSSELR_EL1
    ({0x6030000000100000: 0}, "not enforceable"),
    ({PSCI: 1 << 64}, "not a 64-bit register value"),
])
def test_check_pins_refusals_on_6_12(pins, fragment):
    problems = check_pins(pins, load("6.12.117+deb13-arm64"), "psci")
    assert len(problems) == 1 and fragment in problems[0], problems


def test_id_register_pins_inside_the_mask_and_safe_only():
    prof = load("7.2.13+deb14-arm64")
    mask = int(prof.doc["kvm"]["aarch64"]["writable_masks"]["ID_AA64ISAR0_EL1"], 16)
    host = _host_value(prof, ID_AA64ISAR0)
    # AES (bits 7:4, lower safe, inside the mask): lowering it is what KVM takes
    assert mask & 0xF0 == 0xF0 and host & 0xF0
    lower = host & ~0xF0
    assert check_pins({ID_AA64ISAR0: lower}, prof, "psci") == []
    # raising a field above the host's: not safe
    higher = (host & ~(0xF << 4)) | (0xF << 4) if (host >> 4) & 0xF != 0xF else None
    if higher is not None:
        p = check_pins({ID_AA64ISAR0: higher}, prof, "psci")
        assert len(p) == 1 and "field AES" in p[0] and "accepts only a lower safe value" in p[0]
    # a bit outside the writable mask: value outside mask
    outside = next(b for b in range(64) if not mask >> b & 1)
    p = check_pins({ID_AA64ISAR0: host ^ (1 << outside)}, prof, "psci")
    assert any("cannot change this field" in x or "outside known fields" in x for x in p), p


def test_id_register_pin_needs_writable_id_registers():
    prof = load("6.1.0-50-arm64")
    assert prof.doc["kvm"]["aarch64"].get("writable_masks") is None
    host = _host_value(prof, ID_AA64ISAR0)
    assert check_pins({ID_AA64ISAR0: host}, prof, "psci") == []
    p = check_pins({ID_AA64ISAR0: host & ~0xF0}, prof, "psci")
    assert len(p) == 1 and "no writable ID registers (before Linux 6.7)" in p[0]


def test_native_properties_are_preferred_never_both():
    prof = load("7.2.13+deb14-arm64")
    host = _host_value(prof, ID_AA64ISAR0)
    doc = contract.from_profile(prof, "psci").to_json()
    doc["aarch64"]["values"][f"{ID_AA64ISAR0:#x}"] = f"{host & ~0xF0:#x}"
    c = contract.seal_json(doc)
    pins = plan(c, prof)
    isar = [p for p in pins if p.id == ID_AA64ISAR0]
    assert isar and isar[0].how == "preload"
    edited = copy.deepcopy(prof.doc)
    edited["stack"] = {"qemu": {"host_cpu_expansion": {"model": "host", "props": {"SYSREG_ID_AA64ISAR0_AES": 2}}}}
    edited["digest"] = profile.digest_of(edited)
    pins = plan(c, profile.Profile.from_json(edited, "edited"))
    isar = next(p for p in pins if p.id == ID_AA64ISAR0)
    assert isar.how == "cpu-property" and isar.props == {"SYSREG_ID_AA64ISAR0_AES": 0}
    assert f"{ID_AA64ISAR0:#018x}" not in enforce.env_value(pins)
    assert enforce.cpu_properties(pins) == {"SYSREG_ID_AA64ISAR0_AES": 0}


def test_commandline_xml():
    c = contract.from_profile(load("6.12.117+deb13-arm64"), "psci")
    pins = plan(c, load("7.2.13+deb14-arm64"), explicit=True)
    text = enforce.commandline_xml(pins)
    el = ET.fromstring(text)
    assert el.tag == f"{{{QEMU_NS}}}commandline"
    env = {e.get("name"): e.get("value") for e in el}
    assert env == {"LD_PRELOAD": preload.LIBRARY_PATH, "ABIGUARD_PINS": enforce.env_value(pins)}
    assert enforce.commandline_xml([]) == ""                # off unless a contract asks for it
    assert enforce.describe(pins)[0].startswith("PSCI_VERSION (0x6030000000140000) = 0x10001 via LD_PRELOAD")


def test_rendered_config_is_accepted_by_the_library(lib):
    c = contract.from_profile(load("6.12.117+deb13-arm64"), "psci")
    r = run_with(lib, enforce.env_value(plan(c, load("7.2.13+deb14-arm64"), explicit=True)))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # 6.1's on 7.2: the cache description, CTR_EL0 with its stream value, hide= items
    env = enforce.env_value(plan(contract.from_profile(load("6.1.0-50-arm64"), "psci"), load("7.2.13+deb14-arm64")))
    assert "0x603000000013d801=0x8444c004/0x9444c004" in env and "hide=" in env
    r = run_with(lib, env)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# -- the record the started hook reads ------------------------------------------------------

def run_at_home(lib: str, pins: str, home: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", preload.ENV_PINS, "HOME")}
    env.update({"LD_PRELOAD": lib, preload.ENV_PINS: pins})
    if home is not None:
        env["HOME"] = home
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_library_records_what_it_loaded_in_home(lib, tmp_path):
    """libvirt starts QEMU with HOME = the domain's private directory: the record goes there."""
    pins = f"{PSCI:#x}=0x10001,{BMAP2:#x}=0x0"
    r = run_at_home(lib, pins, str(tmp_path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = (tmp_path / preload.RECORD_NAME).read_text().splitlines()
    pid = lines[0].split()[3]
    assert lines == [f"abiguard-pin 1 pid {pid} loaded 2: {pins}"]     # no vCPU init on this host
    assert (tmp_path / preload.RECORD_NAME).stat().st_mode & 0o777 == 0o600


def test_no_home_no_record_and_an_unwritable_home_is_said(lib, tmp_path):
    assert run_at_home(lib, f"{PSCI:#x}=0x10001", None).stderr == ""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    r = run_at_home(lib, f"{PSCI:#x}=0x10001", str(locked / "missing"))
    assert r.returncode == 0 and "abiguard-pin: cannot write" in r.stderr and "started" in r.stderr, r.stderr
