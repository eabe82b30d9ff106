"""abiguard_pin.so's paths for arm64 across CPU models (issue 16), on any machine: the
implementation registers, the capability enabled before vCPU 0, the SMCCC filter, and the
answers to the guest's errata discovery inside KVM_RUN.

The kernel below the library is tests/helpers/fake_kvm.c, preloaded after it, so the
library's dlsym(RTLD_NEXT, "ioctl") reaches the fake: every ioctl the library issues is
logged, and KVM_RUN plays a script of exits. The same paths on real arm64 KVM, under
libvirt: tests/test_armfleet_crosscpu.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from abiguard import preload
from abiguard.model import pins as enforce
from abiguard.model.pins import Pin
from helpers.realparts import need

HERE = Path(__file__).resolve().parent
MIDR, REVIDR, AIDR = 0x603000000013C000, 0x603000000013C006, 0x603000000013C807
BMAP2, PSCI = 0x6030000000160003, 0x6030000000140000
A72, A57 = 0x410FD083, 0x411FD070
CPUS = f"cpu={A72:#x}/0x0/0x0,cpu={A57:#x}/0x5/0x7"
VER, IMPL = 0xC6000040, 0xC6000041
X = [0x6030000000100000 + 2 * i for i in range(4)]


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> tuple[str, str]:
    cc = os.environ.get("CC", "cc")
    need(shutil.which(cc) is not None, f"a C compiler ({cc}) to build {preload.LIBRARY_NAME}")
    d = tmp_path_factory.mktemp("pinx")
    lib = preload.build_library(str(d / preload.LIBRARY_NAME), cc)
    fake = str(d / "fake_kvm.so")
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", fake,
                    str(HERE / "helpers/fake_kvm.c"), "-ldl"], check=True)
    return lib, fake


# a stand-in for QEMU: vCPU 0 created on a "VM fd", initialised as a guest vCPU (PSCI 0.2),
# then run once; prints what KVM_RUN returned and the exit reason QEMU would see
QEMU = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
vm = os.open("/dev/null", os.O_RDONLY)
vcpu = os.memfd_create("kvm_run")
os.ftruncate(vcpu, 4096)
os.environ["FAKE_KVM_VM"], os.environ["FAKE_KVM_VCPU"] = str(vm), str(vcpu)
fd = libc.ioctl(vm, ctypes.c_ulong(0xAE41), ctypes.c_ulong(0))
init = ctypes.create_string_buffer(32)
init[4] = 4                                 # features[0] = 1 << KVM_ARM_VCPU_PSCI_0_2
print("init", libc.ioctl(fd, ctypes.c_ulong(0x4020AEAE), init))
if os.environ.get("RUN"):
    ret = libc.ioctl(fd, ctypes.c_ulong(0xAE80), ctypes.c_ulong(0))
    print("run", ret, int.from_bytes(os.pread(vcpu, 4, 8), "little"))
"""


def qemu(libs: tuple[str, str], pins: str | None, home: Path, run: bool = False, **fake: str
         ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", preload.ENV_PINS)}
    env.update({"LD_PRELOAD": f"{libs[0]} {libs[1]}", "HOME": str(home), **fake})
    if pins is not None:
        env[preload.ENV_PINS] = pins
    if run:
        env["RUN"] = "1"
    return subprocess.run([sys.executable, "-c", QEMU], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def sets(stderr: str) -> list[tuple[int, int]]:
    return [(int(a, 16), int(b, 16)) for a, b in re.findall(r"fake: set (0x[0-9a-f]+) = (0x[0-9a-f]+)", stderr)]


def test_midr_pin_enables_the_capability_before_vcpu_0(libs, tmp_path) -> None:
    r = qemu(libs, f"{MIDR:#x}={A72:#x},{REVIDR:#x}=0x0", tmp_path)
    assert r.returncode == 0 and r.stdout == "init 0\n", r.stderr
    calls = [ln for ln in r.stderr.splitlines() if ln.startswith("fake: ")]
    # the capability is asked for and enabled on the VM fd, then vCPU 0 exists, then the pins
    assert calls[:4] == ["fake: check_extension 239", "fake: enable_cap 239", "fake: create_vcpu 0",
                         "fake: vcpu_init"], calls
    assert sets(r.stderr) == [(MIDR, A72), (REVIDR, 0)]
    assert not any("smccc_filter" in ln for ln in calls)        # no cpu= items: no filter


def test_no_capability_stops_qemu_with_one_line(libs, tmp_path) -> None:
    r = qemu(libs, f"{MIDR:#x}={A72:#x}", tmp_path, FAKE_KVM_NO_CAP="1")
    assert r.returncode == 1 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("fake: ")]
    assert len(lines) == 1 and lines[0].startswith("abiguard-pin: ") and "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS" in lines[0]
    assert "create_vcpu" not in r.stderr                         # refused before any vCPU exists


def test_other_pins_leave_vcpu_creation_alone(libs, tmp_path) -> None:
    r = qemu(libs, f"{PSCI:#x}=0x10001", tmp_path)
    assert r.returncode == 0
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("fake: ")][:2] == ["fake: create_vcpu 0",
                                                                                 "fake: vcpu_init"]


def test_discovery_is_answered_inside_kvm_run(libs, tmp_path) -> None:
    """the guest asks VER, then CPUS 0, 1 and 2 (past the list), then does something QEMU
    handles: KVM_RUN returns once, with that last exit, and x0..x3 held each answer"""
    script = ",".join(hex(f) for f in (VER, IMPL, IMPL, IMPL)) + ",io"
    r = qemu(libs, f"{MIDR:#x}={A72:#x},{BMAP2:#x}=0x3,{CPUS}", tmp_path, run=True, FAKE_KVM_EXITS=script,
             FAKE_KVM_X1_3="1", FAKE_KVM_X1_4="2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["init 0", "run 0 2"], r.stdout      # QEMU sees only the io exit
    assert re.search(rf"fake: smccc_filter group 0 attr 0 base {VER:#x} n 2 action 2", r.stderr), r.stderr
    answers = [v for rid, v in sets(r.stderr) if rid in X]
    assert answers == [0, 0x10000, 2, 0,                      # VER: SUCCESS, v1.0, 2 CPUs
                       0, A72, 0, 0,                          # CPUS(0)
                       0, A57, 5, 7,                          # CPUS(1): MIDR, REVIDR, AIDR
                       (1 << 64) - 3], answers                 # CPUS(2): INVALID_PARAMETER
    record = (tmp_path / preload.RECORD_NAME).read_text().splitlines()
    assert record[-1].endswith("answered discover_impl 2 cpus"), record


def test_a_hypercall_not_ours_goes_to_qemu(libs, tmp_path) -> None:
    r = qemu(libs, f"{BMAP2:#x}=0x3,{CPUS}", tmp_path, run=True, FAKE_KVM_EXITS="0x84000000")
    assert r.returncode == 0 and r.stdout.splitlines() == ["init 0", "run 0 3"], (r.stdout, r.stderr)
    assert not [v for rid, v in sets(r.stderr) if rid in X]
    assert "check_extension" not in r.stderr                    # no implementation register pinned


@pytest.mark.parametrize("pins, message", [
    (f"{BMAP2:#x}=0x3", "no cpu= items"),
    (f"{BMAP2:#x}=0x1,{CPUS}", "only one of DISCOVER_IMPL_VER/_CPUS"),
    (f"{PSCI:#x}=0x10001,{CPUS}", "need VENDOR_HYP_BMAP_2"),
    (f"{CPUS},{PSCI:#x}=0x10001", "registers come before the cpu= items"),
    (f"{BMAP2:#x}=0x3,cpu={A72:#x}/0x0", "expected cpu=0xMIDR/0xREVIDR/0xAIDR"),
    (f"{BMAP2:#x}=0x3,cpu={A72:#x}/0x0/0x0/0x0", "expected cpu=0xMIDR/0xREVIDR/0xAIDR"),
    (f"{BMAP2:#x}=0x3,cpu={A72}/0x0/0x0", "expected cpu=0xMIDR/0xREVIDR/0xAIDR"),       # decimal
    (f"{BMAP2:#x}=0x3,cpu={A72:#x}/0x0/0x0,cpu={A72:#x}/0x0/0x0", "given twice"),
    (f"{BMAP2:#x}=0x3," + ",".join(f"cpu={A72 + i:#x}/0x0/0x0" for i in range(17)), "more than 16 cpu="),
    (f"{BMAP2:#x}=0x3,cpu=0x1/0x2/0x3;", "expected cpu=0xMIDR/0xREVIDR/0xAIDR"),
])
def test_bad_cpu_items_exit_before_anything_runs(libs, tmp_path, pins, message) -> None:
    r = qemu(libs, pins, tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("abiguard-pin: ") and message in lines[0], r.stderr


def test_nothing_happens_without_the_variable(libs, tmp_path) -> None:
    r = qemu(libs, None, tmp_path, run=True, FAKE_KVM_EXITS=hex(VER))
    assert r.returncode == 0 and r.stdout.splitlines() == ["init 0", "run 0 3"]
    assert "check_extension" not in r.stderr and "smccc_filter" not in r.stderr and not sets(r.stderr)
    assert not (tmp_path / preload.RECORD_NAME).exists()


def test_rendered_cpu_items_are_what_the_library_reads(libs, tmp_path) -> None:
    pins = [Pin(BMAP2, "VENDOR_HYP_BMAP_2", 3), Pin(MIDR, "MIDR_EL1", A72),
            Pin(-2, "implementation CPU 1", A57, "impl-cpu", props={"midr": A57, "revidr": 5, "aidr": 7}),
            Pin(-1, "implementation CPU 0", A72, "impl-cpu", props={"midr": A72, "revidr": 0, "aidr": 0})]
    text = enforce.env_value(pins)
    assert text == f"{MIDR:#018x}={A72:#x},{BMAP2:#018x}=0x3,{CPUS}"
    assert enforce.parse_env(text) == {MIDR: A72, BMAP2: 3}
    assert enforce.parse_env_cpus(text) == [(A72, 0, 0), (A57, 5, 7)]
    r = qemu(libs, text, tmp_path)
    assert r.returncode == 0, r.stderr
    # nothing but cpu= items is never rendered: without a register pin the library is not loaded
    assert enforce.env_value([pins[2]]) == ""


def test_the_python_side_knows_the_library_limits() -> None:
    from abiguard.arch.arm64 import regs

    src = Path(preload.SOURCE_PATH).read_text()
    assert re.search(rf"#define MAX_CPUS\s+{regs.MAX_IMPL_CPUS}\b", src)
    assert re.search(rf"#define DISCOVER_BITS\s+{regs.DISCOVER_IMPL_BITS:#x}ULL", src)
    for rid in regs.IMPLEMENTATION_IDS + (regs.VENDOR_HYP_BMAP_2_ID,):
        assert f"{rid:#018x}ULL".lower() in src.lower(), hex(rid)
