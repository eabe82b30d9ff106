"""The outer machine: qemu-system-aarch64 (this x86 box's QEMU, TCG) with EL2, so the arm64
kernel inside runs KVM and has a working /dev/kvm."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from .common import CHILDREN, OUTER_QEMU, LabError, log

# -cpu max,lpa2=off: with LPA2 the 7.x kernel offers a 52-bit IPA, and the inner QEMU's
# scratch VMs (created at every start to probe the host CPU) then take ~30 s each to tear
# down under TCG (tests/lab/nested/README.md); 48 bits costs nothing.
# pauth-impdef=on: pointer authentication with QEMU's own cheap hash instead of QARMA5, whose
# emulation is most of -cpu max's cost under TCG -- Debian's arm64 kernels and (from trixie)
# userspace sign and check return addresses in nearly every function. Measured on this
# machine class (2 cores, outer QEMU 7.2.22): the sid kernel boots to its initrd in 14.0 s
# instead of 21.8 s. The guest still has pointer authentication (ID_AA64ISAR1_EL1 API/GPI
# instead of APA/GPA), the same on every host, so nothing the lab compares between hosts
# changes; the ground truth records the CPU as part of its provenance.
DEFAULT_CPU = os.environ.get("ARMFLEET_CPU", "max,lpa2=off,pauth-impdef=on")
DEFAULT_MEM = int(os.environ.get("ARMFLEET_MEM", "2048"))


def qemu_cmd(*, kernel: Path, initrd: Path, drive: str, append: str, console: Path, cpu: str = DEFAULT_CPU,
             mem: int = DEFAULT_MEM, net: list[str] | None = None, qmp: Path | None = None) -> list[str]:
    cmd = [OUTER_QEMU, "-M", "virt,virtualization=on,gic-version=3", "-cpu", cpu, "-m", str(mem), "-smp", "1",
           "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
           "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
           "-drive", drive, "-device", "virtio-blk-pci,drive=d0"]
    if qmp is not None:
        cmd += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    return cmd + (net or ["-nic", "none"])


def outer_qemu_version() -> str:
    out = subprocess.run([OUTER_QEMU, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def wait_console(path: Path, pattern: str, *, timeout: float, pid: int | None = None,
                 fail: str = r"Kernel panic|AFH-FAILED") -> tuple[re.Match, float]:
    """Poll the console file for *pattern*; returns the match and the seconds waited.
    Fails early on *fail* or when process *pid* is gone."""
    t0 = time.monotonic()
    rx, frx = re.compile(pattern), re.compile(fail)
    pos = 0
    buf = ""
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            buf += chunk.decode("utf-8", "replace")
            m = rx.search(buf)
            if m:
                return m, time.monotonic() - t0
            fm = frx.search(buf)
            if fm:
                raise LabError(f"{path}: {fm.group(0)!r} on the console:\n{tail(path)}")
            buf = buf[-8192:]
        if pid is not None and not _alive(pid):
            raise LabError(f"QEMU (pid {pid}) exited before {pattern!r}:\n{tail(path)}")
        if time.monotonic() - t0 > timeout:
            raise LabError(f"timeout ({timeout:.0f} s) waiting for {pattern!r} in {path}:\n{tail(path)}")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_bytes().decode("utf-8", "replace").replace("\r", "").splitlines()
    except OSError:
        return "(no console)"
    return "\n".join(lines[-n:])


def run_to_poweroff(cmd: list[str], console: Path, *, timeout: float, done: str) -> float:
    """Boot a machine that powers itself off (the base image's first boot); returns seconds.
    The QEMU is our child; on any error it is killed before we return."""
    log(f"boot (until power-off): console {console}")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    CHILDREN.add(p)
    try:
        _, err = p.communicate(timeout=timeout)
    except BaseException:
        p.kill()
        p.wait()
        raise
    finally:
        CHILDREN.discard(p)
    if p.returncode != 0:
        raise LabError(f"QEMU exited {p.returncode}: {err.decode()[-500:]}\n{tail(console)}")
    if not re.search(done, console.read_text(errors="replace")):
        raise LabError(f"no {done!r} on the console {console}:\n{tail(console)}")
    return time.monotonic() - t0
