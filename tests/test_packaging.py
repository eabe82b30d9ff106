"""The Debian and RPM packages, built from this checkout and installed into a clean chroot.

- ``packaging/build-deb`` builds the .deb; lintian reports no error; the hooks, the conffile,
  the command, the manual page and the bundled qemu.qmp are where libvirt and abiguard
  look for them, with the right modes and the content abiguard itself renders.
- ``packaging/build-deb --arch arm64`` cross-builds the arm64 .deb: its abiguard_pin.so is
  an aarch64 ELF, its Depends are an arm64 Debian system's (libc6 as dpkg-shlibdeps computes
  it there, no *-cross package), it has the amd64 .deb's files; lintian reports no error
  or warning for either .deb.
- Both .debs ship the AppArmor snippet for libvirt's QEMU profile
  (/etc/apparmor.d/abstractions/libvirt-qemu.d/abiguard), a conffile, and nothing in the
  administrator's /etc/apparmor.d/local; Debian's apparmor_parser compiles libvirt's
  per-VM profile with it, as Debian 12's libvirt 9.0 has it (snippet unused, the
  library allowed by abstractions/base) and as libvirt >= 9.6 includes it.
- ``packaging/build-rpm`` builds the .rpm with Debian's rpm; it has the same
  layout; rpmlint (with packaging/rpm/abiguard.rpmlintrc) reports no error.
- A clean Debian 12 chroot (debootstrap, cached in /var/cache/abiguard-lab, copied for
  every run) goes from the .deb to a working hook in one ``apt install ./abiguard_*.deb``:
  postinst probes the host (real x86 KVM through the bind-mounted /dev, QEMU over the
  bundled qemu.qmp), the hook answers as libvirt would run it; ``apt remove`` disables
  the hooks, a reinstall enables them (a probe that fails does not fail it), ``apt purge``
  leaves nothing of the package behind and keeps the hook files that are not abiguard's.
- No Fedora here: the .rpm's payload and its %post, unpacked into the same kind of chroot,
  work from their private directory.

Every chroot command runs in its own private mount namespace (``unshare --mount``) in
which /proc and /dev are mounted: the mounts end with the command, whatever happens to
this process; the ``finally`` blocks still check that nothing is mounted below the copy
before removing it (and never cross into another file system).

Real parts: root (apt, dpkg-buildpackage, chroot), debootstrap and Debian's archive for
the first chroot build (~1-2 min, then cached), /dev/kvm for the probe; Debian's archive
for the arm64 build's libc6 (once, then cached by build-deb) and for apparmor_parser
(apt-get download, not installed).
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time

import pytest

from helpers.realparts import need

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGING = os.path.join(REPO, "packaging")
CACHE = "/var/cache/abiguard-lab"
CHROOT_CACHE = os.path.join(CACHE, "chroot-bookworm")
MIRROR = os.environ.get("ABIGUARD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

DEB_BUILD_PKGS = ["dpkg-dev", "make", "debhelper", "dh-python", "pybuild-plugin-pyproject",
                  "python3-all", "python3-setuptools", "python3-pip"]
#: what build-deb --arch arm64 needs besides (on an amd64 machine)
DEB_CROSS_PKGS = ["gcc-aarch64-linux-gnu", "binutils-aarch64-linux-gnu", "libc6-dev-arm64-cross"]
RPM_BUILD_PKGS = ["rpm", "python3-pip", "python3-setuptools", "python3-wheel"]

HOOKS = {"qemu": "etc/libvirt/hooks/qemu.d/abiguard", "daemon": "etc/libvirt/hooks/daemon.d/abiguard"}
CONFIG = "etc/abiguard/abiguard.toml"
#: what both packages must ship, path -> mode ("d" directory); the man page as installed
LAYOUT = {
    HOOKS["qemu"]: 0o755,
    HOOKS["daemon"]: 0o755,
    CONFIG: 0o644,
    "usr/bin/abiguard": 0o755,
    "usr/share/man/man8/abiguard.8.gz": 0o644,
    "usr/share/abiguard/vendor/qemu/qmp/legacy.py": 0o644,
    "usr/share/abiguard/vendor/qemu/qmp/__init__.py": 0o644,
    "var/lib/abiguard": "d",
    "var/log/abiguard": "d",
}

LIBRARY = "usr/lib/abiguard/abiguard_pin.so"
APPARMOR_SNIPPET = "etc/apparmor.d/abstractions/libvirt-qemu.d/abiguard"
APPARMOR_SOURCE = os.path.join(PACKAGING, "debian", "apparmor", "libvirt-qemu.d", "abiguard")
#: what the .deb ships besides LAYOUT (the .rpm: /usr/lib/abiguard/abiguard_pin.so 0755, no AppArmor)
DEB_LAYOUT = {
    LIBRARY: 0o644,
    APPARMOR_SNIPPET: 0o644,
}
DEB_CONFFILES = (CONFIG, *HOOKS.values(), APPARMOR_SNIPPET)

UNPINNED_XML = """<domain type='kvm'>
  <name>web1</name>
  <uuid>6f1c1a52-2b7e-4d0e-9d43-8a51f1e0c0de</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
</domain>
"""


# ----------------------------------------------------------------------------- helpers

def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(cmd, check=False, timeout=timeout, **kw)


def is_root() -> bool:
    return os.geteuid() == 0


def installed(pkg: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    r = run(["dpkg-query", "-W", "-f=${Status}", pkg], 30)
    return r.returncode == 0 and r.stdout.strip() == "install ok installed"


def ensure_packages(*pkgs: str) -> None:
    """Debian packages the test needs: installed with apt when missing (as root)."""
    need(shutil.which("dpkg-query") is not None, "a Debian system (dpkg, apt)")
    missing = [p for p in pkgs if not installed(p)]
    if not missing:
        return
    need(is_root(), f"Debian packages {' '.join(missing)} (run as root to have them installed)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=SYSTEM_PATH)
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    r = run(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *missing], 900, env=env)
    if r.returncode != 0:
        run(["apt-get", *lock, "update", "-q"], 600, env=env)
        r = run(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *missing], 900, env=env)
    assert r.returncode == 0, f"apt-get install {' '.join(missing)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def build(script: str, out: str, *args: str) -> str:
    started = time.monotonic()
    r = run([os.path.join(PACKAGING, script), *args, out], 1200)
    assert r.returncode == 0, f"packaging/{' '.join((script, *args))} failed ({r.returncode}):\n{r.stderr[-6000:]}"
    path = r.stdout.strip().splitlines()[-1]
    assert os.path.isfile(path), path
    print(f"packaging/{' '.join((script, *args))}: {time.monotonic() - started:.1f} s -> {path}")
    return path


def plugin_install():
    from abiguard import install  # tests/conftest.py puts plugin/ on sys.path
    return install


def pyproject_version() -> str:
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        return re.search(r'(?m)^version\s*=\s*"([^"]+)"', f.read()).group(1)


def deb_listing(deb: str) -> dict[str, tuple[int | str, str]]:
    """path -> (mode, owner) of every entry of the .deb's data."""
    r = run(["dpkg-deb", "-c", deb], 60)
    assert r.returncode == 0, r.stderr
    listing = {}
    for line in r.stdout.splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0].removeprefix("./").rstrip("/")
        listing[path] = (mode_of(fields[0]), fields[1])
    return listing


def deb_file(deb: str, path: str) -> bytes:
    tar = run(["dpkg-deb", "--fsys-tarfile", deb], 60, text=False).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return t.extractfile("./" + path).read()


def deb_depends(deb: str) -> dict[str, str]:
    """Depends of a .deb: package name (with any :qualifier) -> version restriction."""
    field = run(["dpkg-deb", "-f", deb, "Depends"], 60).stdout.strip()
    deps = {}
    for dep in filter(None, (d.strip() for d in field.split(","))):
        m = re.fullmatch(r"(\S+)(?:\s*\(([^)]*)\))?", dep)
        assert m, f"unexpected dependency {dep!r} (alternatives?) in {field!r}"
        deps[m.group(1)] = (m.group(2) or "").replace(" ", "")
    return deps


def elf_header(path: str) -> dict[str, str]:
    r = run(["readelf", "-h", path], 60)
    assert r.returncode == 0, r.stderr
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in r.stdout.splitlines()[1:] if ":" in line)}


def glibc_needed(path: str) -> list[tuple[int, ...]]:
    """The GLIBC_x.y version nodes the library needs (readelf -V)."""
    r = run(["readelf", "-V", "-W", path], 60)
    assert r.returncode == 0, r.stderr
    return sorted({tuple(int(p) for p in v.split(".")) for v in re.findall(r"Name: GLIBC_([0-9.]+)", r.stdout)})


def lintian(deb: str) -> None:
    """No error and no warning; what --pedantic and --display-info add is printed."""
    ensure_packages("lintian")
    r = run(["lintian", "--fail-on", "error,warning", "--display-info", "--pedantic", deb], 600)
    bad = [line for line in r.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert not bad and r.returncode == 0, f"lintian {os.path.basename(deb)} ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    print(f"lintian --pedantic {os.path.basename(deb)}:\n" + (r.stdout.strip() or "(clean)"))


def mode_of(perms: str) -> int | str:
    """'-rwxr-xr-x' -> 0o755; directories -> 'd'."""
    if perms[0] == "d":
        return "d"
    bits = 0
    for i, c in enumerate(perms[1:10]):
        if c != "-":
            bits |= 1 << (8 - i)
    return bits


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("packages"))


@pytest.fixture(scope="module")
def deb(out_dir) -> str:
    ensure_packages(*DEB_BUILD_PKGS)
    return build("build-deb", out_dir)


@pytest.fixture(scope="module")
def deb_arm64(out_dir) -> str:
    """The arm64 .deb, cross-built on an amd64 machine (natively built on an arm64 one)."""
    native = run(["dpkg", "--print-architecture"], 30).stdout.strip() == "arm64"
    ensure_packages(*DEB_BUILD_PKGS, *([] if native else DEB_CROSS_PKGS), "binutils")  # binutils: readelf
    return build("build-deb", out_dir, "--arch", "arm64")


@pytest.fixture(scope="module")
def rpm(out_dir) -> str:
    ensure_packages(*RPM_BUILD_PKGS)
    return build("build-rpm", out_dir)


# ------------------------------------------------------------------------ pure checks

def test_versions_agree():
    """pyproject, debian/changelog and the spec name the same version."""
    version = pyproject_version()
    with open(os.path.join(PACKAGING, "debian", "changelog")) as f:
        deb_version = re.match(r"abiguard \(([^)]+)\)", f.readline()).group(1)
    with open(os.path.join(PACKAGING, "rpm", "abiguard.spec")) as f:
        rpm_version = re.search(r"(?m)^Version:\s*(\S+)", f.read()).group(1)
    assert deb_version == version, f"debian/changelog says {deb_version}, pyproject {version}"
    assert rpm_version == version, f"abiguard.spec says {rpm_version}, pyproject {version}"


def test_repo_hooks_are_the_rendered_ones():
    """hooks/ in the repo is what the Debian package ships (render for /usr/bin/python3 and
    dist-packages): the package renders them itself at build time, so a stale hooks/ would
    mean the checkout and the package disagree."""
    install = plugin_install()
    for kind in HOOKS:
        with open(os.path.join(REPO, "hooks", kind)) as f:
            assert f.read() == install.render(kind, "/usr/bin/python3", "/usr/lib/python3/dist-packages")


def test_apparmor_snippet_allows_the_library():
    """The AppArmor snippet lets QEMU map and read the preload library at the path the
    domain XML preloads it from (abiguard.preload.LIBRARY_PATH), and has rules only (it is
    included into libvirt's profile)."""
    from abiguard import preload
    with open(APPARMOR_SOURCE) as f:
        rules = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    assert f"{preload.LIBRARY_PATH} mr," in rules, rules
    assert preload.LIBRARY_PATH == "/" + LIBRARY
    for rule in rules:
        assert rule.endswith(",") and not re.match(r"(profile|include|#include|abi)\b", rule), rule


# --------------------------------------------------------------------------- the .deb

@pytest.mark.lab
def test_deb_lintian_has_no_errors(deb):
    lintian(deb)


@pytest.mark.lab
def test_deb_layout(deb):
    r = run(["dpkg-deb", "-c", deb], 60)
    assert r.returncode == 0, r.stderr
    listing = {}
    for line in r.stdout.splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0].removeprefix("./").rstrip("/")
        listing[path] = mode_of(fields[0])
    for path, mode in {**LAYOUT, **DEB_LAYOUT}.items():
        assert path in listing, f"{path} is not in the .deb"
        assert listing[path] == mode, f"{path}: mode {listing[path]!r}, expected {mode!r}"
    assert "usr/lib/python3/dist-packages/abiguard/hook/protocol.py" in listing
    assert any(p.startswith("usr/lib/python3/dist-packages/abiguard/data/arm64/") and p.endswith(".json")
               for p in listing), "the bundled arm64 profiles are missing"
    # the preload library under the name QEMU preloads it by (not renamed as a Python extension)
    assert [p for p in listing if p.startswith("usr/lib/abiguard/")] == [LIBRARY], listing.keys()

    conffiles = run(["dpkg-deb", "-I", deb, "conffiles"], 60).stdout.split()
    assert "/" + CONFIG in conffiles, conffiles
    # the hooks are conffiles too (every file in /etc of a .deb is); prerm takes their
    # execute bit on removal so that libvirt skips them until purge or reinstall
    assert sorted(conffiles) == sorted("/" + p for p in DEB_CONFFILES), conffiles

    control = run(["dpkg-deb", "-f", deb, "Depends"], 60).stdout
    for dep in ("python3-libvirt", "python3-lxml"):
        assert dep in control, control

    # the content: what abiguard renders for this layout
    install = plugin_install()
    tar = run(["dpkg-deb", "--fsys-tarfile", deb], 60, text=False).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        def content(path: str) -> str:
            return t.extractfile("./" + path).read().decode()

        for kind, path in HOOKS.items():
            assert content(path) == install.render(kind, "/usr/bin/python3", "/usr/lib/python3/dist-packages")
        assert content(CONFIG) == install.DEFAULT_CONFIG
        copyright_text = content("usr/share/doc/abiguard/copyright")
    assert "qemu.qmp" in copyright_text and "LGPL-2+" in copyright_text and "GPL-2+" in copyright_text


@pytest.mark.lab
def test_debs_ship_the_apparmor_snippet(deb, deb_arm64):
    """Both .debs ship the snippet libvirt >= 9.6 includes into every QEMU's profile, as a
    conffile, and nothing in /etc/apparmor.d/local (the administrator's: on Debian 12
    libvirt's postinst creates local/abstractions/libvirt-qemu, empty, for the site)."""
    with open(APPARMOR_SOURCE, "rb") as f:
        source = f.read()
    for pkg in (deb, deb_arm64):
        name = os.path.basename(pkg)
        listing = deb_listing(pkg)
        assert listing.get(APPARMOR_SNIPPET) == (0o644, "root/root"), f"{name}: {listing.get(APPARMOR_SNIPPET)}"
        assert deb_file(pkg, APPARMOR_SNIPPET) == source, f"{name}: the snippet differs from {APPARMOR_SOURCE}"
        assert not [p for p in listing if p.startswith("etc/apparmor.d/local")], f"{name} ships into apparmor.d/local"
        assert [p for p in listing if p.startswith("etc/apparmor.d/") and listing[p][0] != "d"] == [APPARMOR_SNIPPET]
        conffiles = run(["dpkg-deb", "-I", pkg, "conffiles"], 60).stdout.split()
        assert "/" + APPARMOR_SNIPPET in conffiles, f"{name}: {conffiles}"


@pytest.mark.lab
def test_deb_arm64_library_is_aarch64(deb_arm64, tmp_path):
    lib = tmp_path / "abiguard_pin.so"
    lib.write_bytes(deb_file(deb_arm64, LIBRARY))
    header = elf_header(str(lib))
    assert header["Machine"] == "AArch64", header
    assert header["Class"] == "ELF64" and header["Type"].startswith("DYN"), header
    # stripped (by the cross binutils: the build machine's strip does not know aarch64)
    sections = run(["readelf", "-S", "-W", str(lib)], 60).stdout
    assert ".symtab" not in sections and ".debug_info" not in sections, sections
    r = run(["dpkg-deb", "-f", deb_arm64, "Architecture"], 60)
    assert r.stdout.strip() == "arm64", r.stdout


@pytest.mark.lab
def test_deb_arm64_depends(deb, deb_arm64, tmp_path):
    """An arm64 Debian system's dependencies: libc6 (>= X), X the newest GLIBC version node
    the library needs (the libc6 symbols file maps GLIBC_x.y to x.y; dpkg-shlibdeps computes
    it from Debian's libc6:arm64 symbols, as it would on arm64), no cross-toolchain package
    and no architecture qualifier but python3's :any; otherwise what the amd64 .deb has."""
    deps = {}
    for arch, pkg in (("amd64", deb), ("arm64", deb_arm64)):
        lib = tmp_path / f"{arch}.so"
        lib.write_bytes(deb_file(pkg, LIBRARY))
        newest = ".".join(map(str, glibc_needed(str(lib))[-1]))
        deps[arch] = deb_depends(pkg)
        assert deps[arch].get("libc6") == f">={newest}", f"{arch}: {deps[arch]}, the library needs GLIBC_{newest}"
    arm64 = deps["arm64"]
    print(f"arm64 Depends: {arm64}")
    assert not [d for d in arm64 if "cross" in d or (":" in d and d != "python3:any")], arm64
    for dep in ("python3-libvirt", "python3-lxml", "python3:any"):
        assert dep in arm64, arm64
    assert {k: v for k, v in arm64.items() if k != "libc6"} == {k: v for k, v in deps["amd64"].items() if k != "libc6"}


@pytest.mark.lab
def test_deb_arm64_lintian_is_clean(deb_arm64):
    lintian(deb_arm64)


@pytest.mark.lab
def test_deb_arm64_has_the_amd64_files(deb, deb_arm64):
    """The same paths, modes and owners, the same conffiles and control fields but for the
    architecture (and the size); the same content for every file but the library."""
    amd64, arm64 = deb_listing(deb), deb_listing(deb_arm64)
    assert sorted(set(amd64) ^ set(arm64)) == [], sorted(set(amd64) ^ set(arm64))
    assert {p: m for p, m in amd64.items() if amd64[p] != arm64[p]} == {}
    conffiles = [run(["dpkg-deb", "-I", p, "conffiles"], 60).stdout for p in (deb, deb_arm64)]
    assert conffiles[0] == conffiles[1], conffiles
    fields = ["Package", "Version", "Maintainer", "Suggests", "Enhances", "Section", "Priority", "Description"]
    for field in fields:
        a, b = (run(["dpkg-deb", "-f", p, field], 60).stdout for p in (deb, deb_arm64))
        assert a == b, f"{field}: {a!r} != {b!r}"
    md5 = {}
    for arch, pkg in (("amd64", deb), ("arm64", deb_arm64)):
        md5[arch] = dict(reversed(line.split(None, 1)) for line in
                         run(["dpkg-deb", "-I", pkg, "md5sums"], 60).stdout.splitlines())
    differ = sorted(p for p in md5["amd64"] if md5["amd64"][p] != md5["arm64"].get(p))
    assert differ == [LIBRARY], differ
    # the maintainer scripts differ only in dh_python3's package:arch
    for script in ("postinst", "prerm", "postrm"):
        a, b = (run(["dpkg-deb", "-I", p, script], 60).stdout for p in (deb, deb_arm64))
        assert a.replace("abiguard:amd64", "abiguard:arm64") == b, script


#: the per-VM profile's name is libvirt-<the domain's UUID>
UUID = "6f1c1a52-2b7e-4d0e-9d43-8a51f1e0c0de"
#: how libvirt >= 9.6's abstractions/libvirt-qemu reads the snippet directory
INCLUDE_D = "include if exists <abstractions/libvirt-qemu.d>"


def apparmor_tree(root: str) -> tuple[str, str]:
    """Debian's apparmor (abstractions, tunables, apparmor_parser), downloaded with apt and
    unpacked, not installed; with this host's libvirt abstraction and per-VM template, an
    empty local/abstractions/libvirt-qemu (as libvirt's postinst creates it) and abiguard's
    snippet. Returns (apparmor.d, apparmor_parser)."""
    for f in ("/etc/apparmor.d/abstractions/libvirt-qemu", "/etc/apparmor.d/libvirt/TEMPLATE.qemu"):
        need(os.path.exists(f), f"{f} (libvirt-daemon-system)")
    need(shutil.which("apt-get") is not None, "apt-get")
    env = dict(os.environ, PATH=SYSTEM_PATH)
    r = run(["apt-get", "download", "-q", "apparmor"], 300, cwd=root, env=env)
    if r.returncode != 0 and is_root():
        run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"], 600, env=env)
        r = run(["apt-get", "download", "-q", "apparmor"], 300, cwd=root, env=env)
    need(r.returncode == 0, f"apt-get download apparmor (Debian's archive): {r.stderr.strip()[-300:]}")
    pkg = [f for f in os.listdir(root) if f.startswith("apparmor_") and f.endswith(".deb")][0]
    unpacked = os.path.join(root, "apparmor")
    r = run(["dpkg-deb", "-x", os.path.join(root, pkg), unpacked], 120)
    assert r.returncode == 0, r.stderr
    tree = os.path.join(unpacked, "etc/apparmor.d")
    os.makedirs(os.path.join(tree, "abstractions/libvirt-qemu.d"), exist_ok=True)
    os.makedirs(os.path.join(tree, "local/abstractions"), exist_ok=True)
    os.makedirs(os.path.join(tree, "libvirt"), exist_ok=True)
    shutil.copy("/etc/apparmor.d/abstractions/libvirt-qemu", os.path.join(tree, "abstractions/libvirt-qemu"))
    open(os.path.join(tree, "local/abstractions/libvirt-qemu"), "w").close()
    shutil.copy(APPARMOR_SOURCE, os.path.join(tree, "abstractions/libvirt-qemu.d/abiguard"))
    with open("/etc/apparmor.d/libvirt/TEMPLATE.qemu") as f:
        template = f.read()
    with open(os.path.join(tree, "libvirt/libvirt-" + UUID), "w") as f:
        f.write(template.replace("LIBVIRT_TEMPLATE", "libvirt-" + UUID))
    parser = next(p for p in (os.path.join(unpacked, "sbin/apparmor_parser"),
                              os.path.join(unpacked, "usr/sbin/apparmor_parser")) if os.path.exists(p))
    print(f"apparmor_parser from {pkg}")
    return tree, parser


@pytest.mark.lab
def test_apparmor_profile_compiles_with_the_snippet(tmp_path):
    """libvirt's per-VM QEMU profile (TEMPLATE.qemu, as virt-aa-helper names it) compiles
    with Debian's apparmor_parser (no kernel needed: -Q -K); abstractions/base lets QEMU map
    /usr/lib/**.so (the library, wherever the snippet is not read), and the snippet's rule is
    in the profile once libvirt-qemu includes libvirt-qemu.d: libvirt >= 9.6, or Debian 12's
    9.0 with that line in the administrator's local/abstractions/libvirt-qemu."""
    tree, parser = apparmor_tree(str(tmp_path))
    profile = os.path.join(tree, "libvirt", "libvirt-" + UUID)
    args = [parser, "--config-file=/dev/null", "-I", tree, "-b", tree]

    def expanded() -> str:
        r = run([*args, "-Q", "-K", profile], 120)
        assert r.returncode == 0, f"apparmor_parser cannot compile libvirt's profile:\n{r.stderr}"
        r = run([*args, "-p", profile], 120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    with open(os.path.join(tree, "abstractions/libvirt-qemu")) as f:
        reads_dir = re.search(r"(?m)^\s*#?include( if exists)? <abstractions/libvirt-qemu\.d/?>", f.read()) is not None
    text = expanded()
    assert re.search(r"(?m)^\s*/\{usr/,\}lib\{,32,64\}/\*\*\.so\*\s+mr,", text), \
        "abstractions/base no longer allows mapping /usr/lib/**.so: the snippet is needed on Debian 12 too"
    assert ("/" + LIBRARY + " mr," in text) == reads_dir, f"libvirt-qemu includes libvirt-qemu.d: {reads_dir}"
    print(f"this host's libvirt-qemu includes libvirt-qemu.d: {reads_dir}")

    # the administrator's opt-in on Debian 12 (and what libvirt >= 9.6 does itself)
    with open(os.path.join(tree, "local/abstractions/libvirt-qemu"), "w") as f:
        f.write(INCLUDE_D + "\n")
    assert "/" + LIBRARY + " mr," in expanded()


# --------------------------------------------------------------------------- the .rpm

@pytest.mark.lab
def test_rpm_has_the_same_layout(rpm):
    r = run(["rpm", "-qlpv", rpm], 60)
    assert r.returncode == 0, r.stderr
    listing = {}
    for line in r.stdout.splitlines():
        fields = line.split()
        path = fields[-1] if "->" not in fields else fields[fields.index("->") - 1]
        listing[path.lstrip("/")] = mode_of(fields[0])
    for path, mode in LAYOUT.items():
        assert path in listing, f"{path} is not in the .rpm"
        assert listing[path] == mode, f"{path}: mode {listing[path]!r}, expected {mode!r}"
    assert "usr/share/abiguard/abiguard/hook/protocol.py" in listing

    config = run(["rpm", "-qpc", rpm], 60).stdout.split()
    assert config == ["/" + CONFIG], config  # the hooks are code: replaced and removed with the package
    requires = run(["rpm", "-qpR", rpm], 60).stdout
    for dep in ("python3-libvirt", "python3-lxml", "python3 >= 3.11"):
        assert dep in requires, requires

    # the hooks as abiguard renders them for the RPM's private directory
    install = plugin_install()
    cpio = run(["sh", "-c", f"rpm2cpio '{rpm}'"], 60, text=False).stdout
    for kind, path in HOOKS.items():
        r = run(["cpio", "-i", "--quiet", "--to-stdout", "./" + path], 60, input=cpio, text=False)
        assert r.stdout.decode() == install.render(kind, "/usr/bin/python3", "/usr/share/abiguard")


@pytest.mark.lab
def test_rpmlint_has_no_errors(rpm):
    if shutil.which("rpmlint") is None and is_root():
        ensure_packages("rpmlint")
    need(shutil.which("rpmlint") is not None,
         "rpmlint (apt-get install rpmlint): the .rpm was built but NOT linted")
    r = run(["rpmlint", "-r", os.path.join(PACKAGING, "rpm", "abiguard.rpmlintrc"), rpm], 300)
    errors = [line for line in r.stdout.splitlines() if ": E: " in line]
    assert not errors, f"rpmlint ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    print("rpmlint:\n" + r.stdout.strip())


# ------------------------------------------------------------------ the clean chroot

def chroot_recipe() -> str:
    arch = run(["dpkg", "--print-architecture"], 30).stdout.strip()
    qemu = {"amd64": "qemu-system-x86", "arm64": "qemu-system-arm"}.get(arch, "qemu-system-x86")
    return f"bookworm {arch} minbase python3-libvirt python3-lxml libvirt-clients {qemu} v1"


def chroot_env() -> dict[str, str]:
    return {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}


def in_chroot(root: str, script: str, timeout: float, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) inside ``root`` with /proc and /dev (bind) mounted, in a private
    mount namespace of its own: the mounts disappear with the command."""
    wrapper = ('set -e\nmount -t proc proc "$1/proc"\nmount --bind /dev "$1/dev"\n'
               'exec chroot "$1" /bin/sh -c "$2"')
    return run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", wrapper, "sh", root, script],
               timeout, input=stdin, env=chroot_env())


def mounts_below(root: str) -> list[str]:
    root = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return found


def remove_tree(root: str) -> None:
    """Remove a chroot copy: unmount what is (unexpectedly) mounted below it first, and
    never cross into another file system (a still bind-mounted /dev must survive)."""
    if not os.path.exists(root):
        return
    for point in sorted(mounts_below(root), reverse=True):
        if run(["umount", point], 60).returncode != 0:
            run(["umount", "-l", point], 60)
    left = mounts_below(root)
    assert not left, f"still mounted below {root}: {left}; not removing it"
    run(["rm", "-rf", "--one-file-system", root], 600)


def build_chroot_cache() -> None:
    """debootstrap bookworm once into CHROOT_CACHE (under a lock; rebuilt when the recipe
    changes), with what an abiguard host has besides abiguard."""
    recipe = chroot_recipe()
    marker = os.path.join(CHROOT_CACHE, ".abiguard-chroot-recipe")
    os.makedirs(CACHE, exist_ok=True)
    with open(CHROOT_CACHE + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(marker) as f:
                if f.read().strip() == recipe:
                    return
        except FileNotFoundError:
            pass
        started = time.monotonic()
        new = f"{CHROOT_CACHE}.new.{os.getpid()}"
        remove_tree(new)
        try:
            # debootstrap mounts /proc and /sys in the target: a private namespace ends them
            r = run(["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase",
                     "bookworm", new, MIRROR], 900, env=chroot_env())
            assert r.returncode == 0, f"debootstrap failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            print(f"debootstrap: {time.monotonic() - started:.1f} s")
            with open(os.path.join(new, "usr/sbin/policy-rc.d"), "w") as f:
                f.write("#!/bin/sh\n# no service starts in this chroot\nexit 101\n")
            os.chmod(os.path.join(new, "usr/sbin/policy-rc.d"), 0o755)
            with open(os.path.join(new, "etc/apt/sources.list"), "w") as f:
                f.write(f"deb {MIRROR} bookworm main\n")
            shutil.copy("/etc/resolv.conf", os.path.join(new, "etc/resolv.conf"))
            pkgs = recipe.split()[3:-1]
            r = in_chroot(new, "apt-get update -q && apt-get install -y -q --no-install-recommends "
                          + " ".join(pkgs) + " && apt-get clean", 1200)
            assert r.returncode == 0, f"apt-get install in the chroot failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            with open(os.path.join(new, ".abiguard-chroot-recipe"), "w") as f:
                f.write(recipe + "\n")
            old = f"{CHROOT_CACHE}.old.{os.getpid()}"
            if os.path.exists(CHROOT_CACHE):
                os.rename(CHROOT_CACHE, old)
            os.rename(new, CHROOT_CACHE)
            remove_tree(old)
            print(f"chroot cache {CHROOT_CACHE}: built in {time.monotonic() - started:.1f} s")
        finally:
            remove_tree(new)


def snapshot(root: str) -> set[str]:
    """Every path in the chroot an installation could leave behind (not apt's and dpkg's
    own bookkeeping, caches, logs, /tmp, /proc, /dev)."""
    skip = {"proc", "dev", "sys", "run", "tmp", "var/cache", "var/lib/apt", "var/lib/dpkg", "var/log/apt",
            "var/log/dpkg.log", "var/log/alternatives.log", "var/tmp"}
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        dirnames[:] = [d for d in dirnames if os.path.join(rel, d) not in skip]
        for name in dirnames + filenames:
            path = os.path.join(rel, name)
            if path not in skip:
                found.add(path)
    return found


def need_chroot() -> None:
    need(is_root(), "root (debootstrap, chroot, apt inside the chroot)")
    if shutil.which("debootstrap") is None:
        ensure_packages("debootstrap")
    need(shutil.which("debootstrap") is not None, "debootstrap (apt-get install debootstrap)")
    need(shutil.which("unshare") is not None, "unshare (util-linux)")
    need(os.path.exists("/dev/kvm"), "/dev/kvm (the installation probes the host's KVM)")
    build_chroot_cache()


def copy_chroot(root: str) -> None:
    """A fresh copy of the cached chroot: the cache itself stays clean."""
    started = time.monotonic()
    r = run(["cp", "-a", "--reflink=auto", CHROOT_CACHE, root], 600)
    assert r.returncode == 0, r.stderr
    print(f"chroot copy: {time.monotonic() - started:.1f} s")


@pytest.mark.lab
def test_deb_in_a_clean_chroot(deb, tmp_path):
    need_chroot()
    root = str(tmp_path / "root")
    started = time.monotonic()
    try:
        copy_chroot(root)

        # hook files that are not abiguard's: they must survive install and purge
        others = {"etc/libvirt/hooks/qemu.d/00-site-hook": "#!/bin/sh\nexit 0\n",
                  "etc/libvirt/hooks/network": "#!/bin/sh\n# the admin's own\nexit 0\n"}
        for rel, text in others.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
            os.chmod(os.path.join(root, rel), 0o755)
        before = snapshot(root)
        shutil.copy(deb, os.path.join(root, "tmp"))
        pkg = "/tmp/" + os.path.basename(deb)

        # one command from the .deb to a working hook
        r = in_chroot(root, f"apt install -y {pkg}", 300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"apt install failed:\n{out[-5000:]}"
        assert "abiguard: probed this host: /var/lib/abiguard/host-profile.json" in out, out[-3000:]
        assert re.search(r"abiguard: (\S+ is running: restart it|libvirtd/virtqemud is not running)", out), out[-3000:]
        print("postinst said:\n" + "\n".join(line for line in out.splitlines() if "abiguard" in line))

        r = in_chroot(root, "abiguard --help", 60)
        assert r.returncode == 0 and "probe" in r.stdout, r.stdout + r.stderr
        r = in_chroot(root, "man -w abiguard 2>/dev/null || ls /usr/share/man/man8/abiguard.8.gz", 60)
        assert r.returncode == 0, r.stdout + r.stderr

        for rel in HOOKS.values():
            st = os.stat(os.path.join(root, rel))
            assert st.st_mode & 0o777 == 0o755, f"{rel}: {oct(st.st_mode)}"
        hook = "/" + HOOKS["qemu"]
        r = in_chroot(root, f"{hook} vm start begin -", 60, stdin="<domain/>")
        assert r.returncode == 0, r.stdout + r.stderr
        r = in_chroot(root, f"{hook} web1 migrate begin -", 60, stdin=UNPINNED_XML)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "abiguard: warning: VM 'web1' has no guest ABI contract" in r.stderr, r.stderr
        r = in_chroot(root, f"/{HOOKS['daemon']} - shutdown - shutdown", 60)
        assert r.returncode == 0, r.stdout + r.stderr

        # postinst's probe: real KVM, QEMU over the bundled qemu.qmp
        with open(os.path.join(root, "var/lib/abiguard/host-profile.json")) as f:
            profile = json.load(f)
        assert profile["host"]["machine"] == os.uname().machine
        assert os.path.exists(os.path.join(root, "var/lib/abiguard/host-profile.json.hookview"))
        qemu = (profile.get("stack") or {}).get("qemu") or {}
        assert qemu.get("version"), f"QEMU not probed (bundled qemu.qmp?): {profile['unavailable']}"
        r = in_chroot(root, "abiguard check --from /var/lib/abiguard/host-profile.json "
                      "--to /var/lib/abiguard/host-profile.json && abiguard matrix >/dev/null", 120)
        assert r.returncode == 0, r.stdout + r.stderr

        # remove: the hooks stay (conffiles) but libvirt skips them; reinstall enables them
        r = in_chroot(root, "apt remove -y abiguard", 300)
        assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
        assert not os.path.exists(os.path.join(root, "usr/lib/python3/dist-packages/abiguard"))
        for rel in HOOKS.values():
            assert os.stat(os.path.join(root, rel)).st_mode & 0o111 == 0, f"{rel} still executable after remove"
        # ... and a probe that fails does not fail the installation: it says so
        state = os.path.join(root, "var/lib/abiguard")
        for name in ("host-profile.json", "host-profile.json.hookview"):
            os.unlink(os.path.join(state, name))
        os.mkdir(os.path.join(state, "host-profile.json"))  # the profile cannot be written
        r = in_chroot(root, f"apt install -y {pkg}", 300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-5000:]
        assert "abiguard: WARNING: probing this host failed (the installation goes on)" in out, out[-3000:]
        os.rmdir(os.path.join(state, "host-profile.json"))
        for rel in HOOKS.values():
            assert os.stat(os.path.join(root, rel)).st_mode & 0o777 == 0o755, f"{rel} not re-enabled"
        r = in_chroot(root, f"{hook} web1 migrate begin -", 60, stdin=UNPINNED_XML)
        assert r.returncode == 0, r.stdout + r.stderr

        # purge: nothing of the package is left, the admin's hooks are
        r = in_chroot(root, "apt purge -y abiguard", 300)
        assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
        for rel in (*HOOKS.values(), "etc/abiguard", "var/lib/abiguard", "var/log/abiguard",
                    "usr/share/abiguard", "usr/bin/abiguard", "etc/libvirt/hooks/daemon.d"):
            assert not os.path.lexists(os.path.join(root, rel)), f"{rel} left after purge"
        for rel, text in others.items():
            with open(os.path.join(root, rel)) as f:
                assert f.read() == text, f"{rel} changed"
        left = sorted(snapshot(root) - before)
        assert not left, f"left behind after purge: {left}"
        print(f"chroot scenario: {time.monotonic() - started:.1f} s")
    finally:
        remove_tree(root)


@pytest.mark.lab
def test_rpm_payload_works_in_the_chroot(rpm, tmp_path):
    """No Fedora here: the .rpm's files and its %post, unpacked into the clean Debian chroot
    (python3 3.11, python3-libvirt, python3-lxml, QEMU, as a Fedora host has them), work
    from their private directory: the command, the hook, the probe over the bundled qemu.qmp."""
    need_chroot()
    need(shutil.which("rpm2cpio") is not None and shutil.which("cpio") is not None, "rpm2cpio and cpio")
    root = str(tmp_path / "root")
    try:
        copy_chroot(root)
        payload = run(["rpm2cpio", rpm], 60, text=False).stdout
        r = run(["cpio", "-idm", "--quiet"], 60, input=payload, text=False, cwd=root)
        assert r.returncode == 0, r.stderr
        post = run(["rpm", "-qp", "--qf", "%{POSTIN}", rpm], 60).stdout
        with open(os.path.join(root, "tmp/post.sh"), "w") as f:
            f.write(post)
        r = in_chroot(root, "sh /tmp/post.sh 1", 180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "abiguard: probed this host: /var/lib/abiguard/host-profile.json" in r.stdout, r.stdout + r.stderr
        with open(os.path.join(root, "var/lib/abiguard/host-profile.json")) as f:
            profile = json.load(f)
        qemu = (profile.get("stack") or {}).get("qemu") or {}
        assert qemu.get("version"), f"QEMU not probed (bundled qemu.qmp?): {profile['unavailable']}"

        r = in_chroot(root, "abiguard --help", 60)
        assert r.returncode == 0 and "probe" in r.stdout, r.stdout + r.stderr
        hook = "/" + HOOKS["qemu"]
        r = in_chroot(root, f"{hook} web1 migrate begin -", 60, stdin=UNPINNED_XML)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "abiguard: warning: VM 'web1' has no guest ABI contract" in r.stderr, r.stderr
    finally:
        remove_tree(root)
