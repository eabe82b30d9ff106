"""Two lab hosts that run abiguard from its Debian package, the way an operator installs it.

Both hosts of the two-host lab (twohost.sh) run chrooted into an overlay of one cached Debian
12 root filesystem with what an abiguard host has besides abiguard (libvirt-daemon-system,
qemu-system-x86, python3-libvirt, python3-lxml: the .deb's dependencies and the daemon it
hooks into). Before a host's libvirtd starts (TWOHOST_PRESTART, which runs inside the
chroot), the package is installed with one ``apt-get install -y ./abiguard_*.deb``: from then
on everything abiguard does in that host -- the hooks libvirt runs, ``abiguard pin``, the
profile the postinst and the daemon hook write -- is the installed package, not this checkout
(which is not visible inside the chroot at all).

    rootfs = ensure_rootfs()                 # built once (40-95 s), then cached
    with packaged_lab(deb, rootfs) as lab:   # a TwoHost, both hosts with the package
        host(lab, "a", "/usr/bin/abiguard", "pin", "vm1")

The root filesystem is built by rootfs.sh (debootstrap minbase + apt-get inside a private
mount namespace; the machine's apt configuration is never used) into its own cache directory,
/var/cache/abiguard-lab/packaging-e2e/rootfs-bookworm, so it does not collide with the fleet
lab's. A build holds an exclusive lock (rootfs-bookworm.lock next to it); a lab using it as
an overlay lower layer holds a shared one, so a rebuild never pulls it from under a running
host. The cached tree itself is never written while it is in use (the overlay's upper layer
lives in the lab's state directory and goes away with ``down``).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

try:
    from .conftest_twohost import _LIVE, _sigterm_to_keyboardinterrupt
    from .twohost import LabError, TwoHost
except ImportError:  # pragma: no cover - imported as a top-level module
    from conftest_twohost import _LIVE, _sigterm_to_keyboardinterrupt  # type: ignore[no-redef]
    from twohost import LabError, TwoHost  # type: ignore[no-redef]

LAB_DIR = Path(__file__).resolve().parent
REPO = LAB_DIR.parents[1]
ROOTFS_SH = LAB_DIR / "rootfs.sh"
BUILD_DEB = REPO / "packaging" / "build-deb"
SUITE = "bookworm"
CACHE = Path("/var/cache/abiguard-lab/packaging-e2e")
ROOTFS = CACHE / f"rootfs-{SUITE}"
LOCK = CACHE / f"rootfs-{SUITE}.lock"
#: what a Debian 12 abiguard host has before abiguard (rootfs.sh adds libvirt-daemon,
#: libvirt-daemon-driver-qemu, libvirt-clients, python3, iproute2, ca-certificates)
PACKAGES = ("libvirt-daemon-system", "qemu-system-x86", "python3-libvirt", "python3-lxml")
#: bumped when the post-processing below changes (kept next to the rootfs, not in it)
RECIPE = f"{SUITE} {' '.join(PACKAGES)} postfix-1"
#: the directory holding the .deb, bound read-only at this path into every chrooted host
DEB_DIR_IN_HOST = "/srv/abiguard-deb"
#: a host command's environment: the distribution's tools only, nothing of the caller's
#: (no virtualenv, PYTHONPATH, ...: the installed /usr/bin/abiguard has no -I)
SYSTEM_ENV = ("env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
              "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")


def log(msg: str) -> None:
    sys.stderr.write(f"[debhosts {time.strftime('%T')}] {msg}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- the .deb
def build_deb(out: str | os.PathLike) -> Path:
    """packaging/build-deb OUT (installs its own build dependencies as root); the .deb."""
    t0 = time.monotonic()
    cp = subprocess.run([str(BUILD_DEB), str(out)], capture_output=True, text=True, timeout=1200, check=False)
    if cp.returncode != 0:
        raise LabError(f"packaging/build-deb failed ({cp.returncode}):\n{cp.stderr[-6000:]}")
    deb = Path(cp.stdout.strip().splitlines()[-1])
    if not deb.is_file():
        raise LabError(f"packaging/build-deb printed {deb}, which is not a file")
    log(f"packaging/build-deb: {deb.name} in {time.monotonic() - t0:.1f} s")
    return deb


# --------------------------------------------------------------------------- the rootfs
def problems() -> list[str]:
    """What this machine lacks for building the root filesystem (beyond the lab's needs)."""
    out = []
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for tool in ("debootstrap", "chroot", "flock"):
        if not shutil.which(tool, path=path):
            out.append(f"missing {tool} (apt-get install debootstrap)" if tool == "debootstrap" else f"missing {tool}")
    if not os.path.exists("/usr/share/keyrings/debian-archive-keyring.gpg"):
        out.append("missing /usr/share/keyrings/debian-archive-keyring.gpg (debian-archive-keyring)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        out.append("no overlayfs")
    return out


def installed_packages(root: str | os.PathLike) -> set[str]:
    """Packages dpkg records as installed in *root* (read from its status file)."""
    try:
        text = (Path(root) / "var/lib/dpkg/status").read_text(errors="replace")
    except FileNotFoundError:
        return set()
    found = set()
    for para in text.split("\n\n"):
        name = re.search(r"(?m)^Package: (\S+)", para)
        status = re.search(r"(?m)^Status: (.*)$", para)
        if name and status and status.group(1).strip() == "install ok installed":
            found.add(name.group(1))
    return found


def _ready(root: Path) -> bool:
    marker = CACHE / f"rootfs-{SUITE}.recipe"
    try:
        return (root / ".abiguard-rootfs").is_file() and marker.read_text().strip() == RECIPE
    except FileNotFoundError:
        return False


def _postfix(root: Path) -> None:
    """Make rootfs.sh's tree what a clean Debian 12 machine has: rootfs.sh pre-creates
    /usr/share/abiguard/vendor for the fleet lab's bind mount (here it would be a directory
    no package owns, in the package's own path), and mktemp left the root directory 0700."""
    for d in ("usr/share/abiguard/vendor", "usr/share/abiguard"):
        with contextlib.suppress(FileNotFoundError):
            (root / d).rmdir()  # only if empty: anything else is a surprise worth keeping
    os.chmod(root, 0o755)


@contextlib.contextmanager
def rootfs_lock(exclusive: bool) -> Iterator[int]:
    CACHE.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


def ensure_rootfs(timeout: float = 1800) -> str:
    """The cached bookworm root filesystem, built with rootfs.sh when missing or built from
    another recipe (cold: ~95 s with a good mirror)."""
    with rootfs_lock(exclusive=True):
        if _ready(ROOTFS):
            return str(ROOTFS)
        t0 = time.monotonic()
        have = installed_packages(ROOTFS)
        env = dict(os.environ, ROOTFS_CACHE=str(CACHE), ROOTFS_EXTRA_PKGS=" ".join(PACKAGES))
        if (ROOTFS / ".abiguard-rootfs").is_file() and not set(PACKAGES) <= have:
            env["ROOTFS_REBUILD"] = "1"
        if not (ROOTFS / ".abiguard-rootfs").is_file() or env.get("ROOTFS_REBUILD"):
            log(f"building {ROOTFS} with rootfs.sh (once; cached)")
            cp = subprocess.run([str(ROOTFS_SH), "build", SUITE], env=env, capture_output=True, text=True,
                                timeout=timeout, check=False)
            if cp.returncode != 0:
                raise LabError(f"rootfs.sh build {SUITE} failed ({cp.returncode}):\n{cp.stderr[-4000:]}")
        missing = set(PACKAGES) - installed_packages(ROOTFS)
        if missing:
            raise LabError(f"{ROOTFS}: {' '.join(sorted(missing))} not installed after the build")
        _postfix(ROOTFS)
        (CACHE / f"rootfs-{SUITE}.recipe").write_text(RECIPE + "\n")
        log(f"{ROOTFS} ready in {time.monotonic() - t0:.1f} s")
        return str(ROOTFS)


# -------------------------------------------------------------------------------- hosts
def prestart_install(deb_name: str) -> str:
    """TWOHOST_PRESTART: install the package inside the host's chroot with one apt-get
    command. Refuses to run anywhere but in a chrooted host (never on the real machine)."""
    if not re.fullmatch(r"[A-Za-z0-9_.+~-]+\.deb", deb_name):
        raise ValueError(f"bad .deb name {deb_name!r}")
    return (f'[ -n "${{TWOHOST_ROOTFS:-}}" ] || {{ echo "host $TWOHOST_HOST is not chrooted: '
            f'refusing to install a package on this machine"; exit 1; }}\n'
            f'cd {DEB_DIR_IN_HOST} && exec {" ".join(SYSTEM_ENV)} apt-get install -y ./{deb_name}')


@contextlib.contextmanager
def packaged_lab(deb: str | os.PathLike, rootfs: str, prefix: str = "abgpk",
                 timeout: float = 120) -> Iterator[TwoHost]:
    """A TwoHost whose hosts a and b both run chrooted in (an overlay of) *rootfs*, each
    with *deb* installed by apt-get before its libvirtd starts. Always torn down: the lab
    (daemons, QEMU, netns, cgroups, mounts, overlays: the state directory) and the copy of
    the .deb, on success, failure, Ctrl-C or SIGTERM (and from conftest_twohost's atexit)."""
    deb = Path(deb)
    debdir = Path(tempfile.mkdtemp(prefix="abiguard-pkge2e-deb.", dir="/var/tmp"))
    lab = TwoHost(prefix=prefix, rootfs={"a": rootfs, "b": rootfs},
                  chroot_binds=[f"{debdir}:{DEB_DIR_IN_HOST}"], timeout=timeout)
    old_term = None
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        old_term = signal.signal(signal.SIGTERM, _sigterm_to_keyboardinterrupt)
    _LIVE.append(lab)
    try:
        debdir.chmod(0o755)
        shutil.copyfile(deb, debdir / deb.name)
        (debdir / deb.name).chmod(0o644)
        with rootfs_lock(exclusive=False):  # nobody rebuilds the lower layer under us
            lab.up(prestart=prestart_install(deb.name), timeout=600)
            try:
                yield lab
            finally:
                lab.down()
    finally:
        try:
            lab.down()  # idempotent: after a failed up, or if the inner down raised
        finally:
            if lab in _LIVE:
                _LIVE.remove(lab)
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            shutil.rmtree(debdir, ignore_errors=True)
            if lab.timings:
                log(f"twohost[{prefix}] timings:\n{lab.format_timings()}")


def host(lab: TwoHost, name: str, *cmd: str, check: bool = True, timeout: float = 180,
         input: str | None = None) -> subprocess.CompletedProcess:
    """Run *cmd* inside host *name* (its namespaces and chroot) with the system environment."""
    cp = lab.exec(name, *SYSTEM_ENV, *cmd, check=False, timeout=timeout, input=input)
    if check and cp.returncode != 0:
        raise LabError(f"host {name}: {' '.join(cmd)} failed ({cp.returncode}):\n"
                       f"{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
    return cp


def starter_log(lab: TwoHost, name: str) -> str:
    """What the host's start printed (the prestart's apt-get output among it)."""
    return (lab.host_state(name) / "starter.log").read_text(errors="replace")


def wait_for_log(path: Path, needle: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text(errors="replace")
            if needle in text:
                return text
        time.sleep(0.2)
    raise AssertionError(f"{path}: no {needle!r} within {timeout:.0f} s:\n{text[-3000:] or '(no log)'}")
