"""Base images of the armfleet hosts: one per Debian suite, built from that suite's arm64
packages without running arm64 code on this machine, then booted once to finish.

    python3 -m lab.armfleet.rootfs build [bookworm trixie sid]     (from tests/)

Steps per suite (suites run in parallel):
  1. apt, private state per suite (tests/lab/apt-private.sh: own sources, lists, archives,
     empty dpkg status, APT::Architecture=arm64), lists seeded read-only from the armlab's
     cache when it has them: resolve the closure of PACKAGES (+ Essential/required, as
     debootstrap's minbase) with ``apt-get -s install``, download it with ``apt-get -d``
     (the armlab's kernel debs are hard-linked in first, so they are not fetched twice).
  2. dpkgdb.install: dpkg-deb/tar each package into a tree and write the dpkg database.
  3. configure(): the maintainer-script effects the lab needs, row by row (see HAND).
  4. mkfs.ext4 -d: a raw ext4 image (base.img), plus the kernel Image and a small initrd.
  5. first boot of base.img, read-write (files/armfleet-boot, mode prime): ldconfig, depmod,
     pam-auth-update, AppArmor policy cache, libvirt's QEMU capabilities cache,
     dpkg --audit / apt-get check; then power-off. Later boots run on qcow2 overlays.
Result: $ARMFLEET_CACHE/hosts/SUITE-KEY/{base.img,Image,initrd.gz,manifest.json}. KEY hashes
this recipe, the package selection and the suite's InRelease, so a warm build is a lookup.
Two runs at once: one builds under an exclusive flock per suite, the other waits and reuses;
results appear by atomic rename; running labs hold a shared lock on the base they use.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import dpkgdb, machine
from .common import (
    ARMLAB_CACHE,
    CACHE,
    FILES,
    LAB,
    RUNS,
    LabError,
    exit_on_sigterm,
    flocked,
    log,
    run,
    write_json,
)

#: what every host has (the brief's list); apt adds the dependency closure
PACKAGES = ["libvirt-daemon-system", "libvirt-daemon-system-sysv", "sysvinit-core", "qemu-system-arm",
            "apparmor", "python3", "python3-libvirt", "python3-lxml", "dpkg", "apt", "iproute2", "procps",
            "kmod", "openssh-server", "linux-image-arm64"]
#: trixie/sid's polkitd (libvirt-daemon-system) needs "default-logind | logind"; without
#: systemd only elogind provides it and apt's resolver will not pick it from an empty status
EXTRA = {"bookworm": [], "trixie": ["elogind", "libpam-elogind"], "sid": ["elogind", "libpam-elogind"]}
SUITES = tuple(EXTRA)
#: for the initrd only (not installed in the root)
INITRD_DEBS = ["busybox-static"]
INITRD_MODULES = ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic", "virtio_net"]
ALTERNATIVES = {"awk", "which", "pager", "iptables", "ip6tables", "arptables", "ebtables", "rmt", "mt"}
KEEP_VERSIONS = ("libvirt-daemon", "libvirt-daemon-system", "libvirt-clients", "qemu-system-arm", "apparmor",
                 "libapparmor1", "python3-libvirt", "openssh-server", "libc6", "dpkg", "apt", "sysvinit-core")
#: bump when rootfs.py/dpkgdb.py change what lands in an image (the key also covers files/,
#: the package selection and the suite's InRelease); editing comments then costs no rebuild
BUILD_VERSION = 1
RECIPE = sorted(FILES.rglob("*"))
BUILD_ROOT = RUNS / "armfleet-build"
IMAGE_SLACK_MB = 2048

#: Hand-made maintainer-script effects (what configure() does), for the README.
HAND = [
    ("base-files postinst", "/var/run -> /run, /var/lock -> /run/lock, /etc/profile, /root/.profile, "
     "/root/.bashrc, /etc/motd from /usr/share/base-files, /etc/dpkg/origins/default, mnt srv opt media dirs"),
    ("tzdata postinst (debconf default)", "/etc/localtime -> /usr/share/zoneinfo/Etc/UTC, /etc/timezone"),
    ("openssh-server postinst (ucf)", "/etc/ssh/sshd_config from /usr/share/openssh/sshd_config"),
    ("apparmor postinst", "/etc/apparmor.d/tunables/{home.d,xdg-user-dirs.d}"),
    ("base-passwd postinst", "/etc/passwd, /etc/group from /usr/share/base-passwd/*.master"),
    ("sysusers.d (dh_installsysusers)", "users/groups of /usr/lib/sysusers.d/*.conf (trixie/sid: sshd, "
     "polkitd, messagebus, kvm, ...)"),
    ("adduser/addgroup in postinsts", "libvirt, kvm, libvirt-qemu (uid/gid 64055, group kvm), _apt, sshd, "
     "polkitd, messagebus, _ssh, crontab, rdma, dnsmasq where no sysusers.d file made them"),
    ("passwd postinst (shadowconfig on)", "/etc/shadow, /etc/gshadow (root:shadow 0640), root's password '*' "
     "(no password, key login only)"),
    ("libvirt postinst add_statoverrides", "/var/lib/libvirt/qemu(/channel/target) libvirt-qemu 0750; "
     "/var/lib/libvirt/{images,boot}, /var/cache/libvirt(/qemu) root 0711; /etc/libvirt/qemu.conf 0600"),
    ("libvirt postinst", "touch /var/log/libvirt/{qemu,lxc}/.placeholder"),
    ("dh_apparmor / libvirt postinst", "empty /etc/apparmor.d/local/* for every `#include <local/...>` a "
     "profile needs (bookworm's libvirt-qemu abstraction includes local/abstractions/libvirt-qemu)"),
    ("update-alternatives (mawk, debianutils, util-linux, tar, cpio, iptables)",
     "awk/nawk, which, pager, rmt, mt, iptables*: highest priority, admin files in /var/lib/dpkg/alternatives"),
    ("lab: dpkg-divert --local --rename", "/usr/bin/qemu-system-arm -> /usr/bin/qemu-system-arm.armfleet-off "
     "(libvirtd re-probes the 32-bit QEMU at every start, ~40 s under TCG)"),
    ("openssh-server postinst", "host key (ed25519, made here with ssh-keygen), sshd_config.d/armfleet.conf"),
    ("sysvinit-core postinst", "/etc/inittab (the lab's: sysinit = /usr/local/sbin/armfleet-boot)"),
    ("apt", "sources.list.d/debian.sources (the suite, no lists: apt install ./x.deb works offline); "
     "extended_states marks dependencies auto-installed"),
    ("libc-bin / kmod / libpam-runtime postinsts", "first boot runs ldconfig, depmod -a, pam-auth-update --package"),
    ("apparmor init script", "first boot compiles libvirtd + virt-aa-helper profiles into /var/cache/apparmor"),
    ("libvirt (first start)", "first boot fills /var/cache/libvirt/qemu/capabilities (aarch64 QEMU probe)"),
]
#: accounts that postinsts make with adduser/addgroup (name, kind, uid/gid, primary group,
#: home, extra groups); kept only where sysusers.d or base-passwd did not make the name
ADDUSER = [
    ("kvm", "group", None, None, None, ()),
    ("libvirt", "group", None, None, None, ()),
    ("libvirt-qemu", "user", 64055, "kvm", "/var/lib/libvirt", ()),
    ("libvirt-qemu", "group", 64055, None, None, ("libvirt-qemu",)),
    ("_apt", "user", None, "nogroup", "/nonexistent", ()),
    ("sshd", "user", None, "nogroup", "/run/sshd", ()),
    ("_ssh", "group", None, None, None, ()),
    ("polkitd", "user", None, "polkitd", "/var/lib/polkit-1", ()),
    ("messagebus", "user", None, "messagebus", "/nonexistent", ()),
    ("crontab", "group", None, None, None, ()),
    ("rdma", "group", None, None, None, ()),
    ("dnsmasq", "user", None, "nogroup", "/var/lib/misc", ()),
]


@dataclass
class Base:
    """A finished base image (what a host boots)."""
    suite: str
    dir: Path
    manifest: dict

    @property
    def image(self) -> Path:
        return self.dir / "base.img"

    @property
    def kernel(self) -> Path:
        return self.dir / "Image"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.gz"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"


# ---------------------------------------------------------------------------------- apt
def _bash_lines(script: str, *args: str) -> list[str]:
    out = subprocess.run(["bash", "-c", script, "bash", *args], capture_output=True, text=True, check=True).stdout
    return [x for x in out.split("\0") if x]


class Apt:
    """The private arm64 apt state of one suite under $ARMFLEET_CACHE/apt/SUITE."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.dir = CACHE / "apt" / suite
        self.archives = self.dir / "archives"
        # the project's one private arm64 apt option set (tests/lab/apt-private.sh)
        self.opts = _bash_lines(f'. "{LAB}/apt-private.sh"; private_apt_options "$1"; printf "%s\\0" "${{APTO[@]}}"',
                                str(self.dir))
        self.opts += ["-o", f"Dir::State={self.dir}/state", "-o", f"Dir::Log={self.dir}/log",
                      "-o", "APT::Install-Recommends=false", "-o", "APT::Install-Suggests=false",
                      "-o", "Acquire::Retries=3"]

    def setup(self) -> None:
        for d in ("etc", "lists/partial", "archives/partial", "cache", "state", "log"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        if not (self.dir / "status").exists():
            (self.dir / "status").touch()
        mirror = _bash_lines(f'. "{LAB}/debian-mirror.sh"; printf "%s\\0" "$(debian_mirror "$1")"',
                             os.environ.get("ARMFLEET_MIRROR", ""))[0]
        self.mirror = mirror
        (self.dir / "etc/sources.list").write_text(
            f"deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {self.suite} main\n")
        if not self.lists():
            self.seed_lists()
        if not self.lists():
            self.update()

    def lists(self) -> list[Path]:
        return sorted((self.dir / "lists").glob(f"*_dists_{self.suite}_main_binary-arm64_Packages*"))

    def inrelease(self) -> bytes:
        files = sorted((self.dir / "lists").glob(f"*_dists_{self.suite}_InRelease"))
        return files[0].read_bytes() if files else b""

    def seed_lists(self) -> None:
        """Copy the armlab's lists of this suite (read only there): same mirror, no download."""
        src = ARMLAB_CACHE / "apt" / "lists"
        got = sorted(src.glob(f"*_dists_{self.suite}_InRelease")) + sorted(
            src.glob(f"*_dists_{self.suite}_main_binary-arm64_Packages*"))
        if len(got) >= 2:
            log(f"{self.suite}: apt lists seeded from {src}")
            for f in got:
                shutil.copy2(f, self.dir / "lists" / f.name)

    def update(self) -> None:
        log(f"{self.suite}: apt-get update (private lists in {self.dir})")
        run(["apt-get", *self.opts, "-q", "update"], timeout=600)

    def essential(self) -> list[str]:
        """debootstrap --variant=minbase's set: Essential: yes and Priority: required"""
        out = run(["apt-cache", *self.opts, "dumpavail"], timeout=300, quiet=True).stdout
        names = set()
        for stanza in out.split("\n\n"):
            f = dpkgdb.parse_stanza(stanza)
            if f.get("Essential") == "yes" or f.get("Priority") == "required":
                names.add(f["Package"])
        return sorted(names)

    def resolve(self, names: list[str]) -> list[tuple[str, str, str]]:
        """(name, version, arch) of everything ``apt-get install`` would install"""
        out = run(["apt-get", *self.opts, "-s", "-y", "install", *names], timeout=300, quiet=True).stdout
        rx = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[(\S+)\]\)", re.M)
        got = rx.findall(out)
        if not got:
            raise LabError(f"{self.suite}: apt resolved nothing:\n{out[-2000:]}")
        return got

    def download(self, names: list[str]) -> None:
        self.link_armlab_debs()
        try:
            run(["apt-get", *self.opts, "-q", "-y", "-d", "install", *names], timeout=900)
        except LabError:
            self.update()     # lists older than the mirror: 404 on superseded versions
            run(["apt-get", *self.opts, "-q", "-y", "-d", "install", *names], timeout=900)

    def fetch(self, names: list[str]) -> list[Path]:
        """``apt-get download`` into our archives (for debs that are not installed)"""
        have = [p for n in names for p in self.archives.glob(f"{n}_*.deb")]
        if len(have) < len(names):
            run(["apt-get", *self.opts, "-q", "download", *names], cwd=self.archives, timeout=300)
        return sorted(p for n in names for p in self.archives.glob(f"{n}_*.deb"))

    def link_armlab_debs(self) -> None:
        """the kernels the armlab already downloaded (same mirror): hard links, no second fetch"""
        for deb in (ARMLAB_CACHE / "debs").glob("kernel-*/*.deb"):
            dest = self.archives / deb.name
            if not dest.exists():
                try:
                    os.link(deb, dest)
                except OSError:
                    shutil.copy2(deb, dest)

    def deb_of(self, name: str, version: str, arch: str) -> Path:
        p = self.archives / f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
        if not p.exists():
            raise LabError(f"{self.suite}: {p.name} not downloaded")
        return p


# ---------------------------------------------------------------------- hand configuration
def _read_table(path: Path) -> list[list[str]]:
    return [line.split(":") for line in path.read_text().splitlines() if line and not line.startswith("#")]


def _sysusers(root: Path) -> list[tuple[str, str, str, str, str]]:
    """(type, name, id, gecos, home) of every u/g/m line of /usr/lib/sysusers.d/*.conf"""
    rows = []
    for conf in sorted((root / "usr/lib/sysusers.d").glob("*.conf")):
        for line in conf.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = re.findall(r'"[^"]*"|\S+', line)
            parts = [p.strip('"') for p in parts] + ["-"] * 5
            if parts[0] in ("u", "g", "m"):
                rows.append((parts[0], parts[1], parts[2], parts[3], parts[4]))
    return rows


def make_accounts(root: Path) -> dict[str, list[str]]:
    """passwd/group/shadow/gshadow as base-passwd, sysusers.d and the postinsts' adduser make them"""
    passwd = _read_table(root / "usr/share/base-passwd/passwd.master")
    group = _read_table(root / "usr/share/base-passwd/group.master")
    made: dict[str, list[str]] = {"sysusers": [], "adduser": []}

    def gid_of(name: str) -> str | None:
        return next((g[2] for g in group if g[0] == name), None)

    def free_id(table: list[list[str]], idx: int) -> int:
        used = {int(r[idx]) for r in table}
        return next(i for i in range(100, 1000) if i not in used)     # adduser --system range

    def add_group(name: str, gid: int | None = None, members: tuple[str, ...] = ()) -> None:
        if gid_of(name) is None:
            group.append([name, "x", str(gid if gid is not None else free_id(group, 2)), ",".join(members)])
        elif members:
            g = next(g for g in group if g[0] == name)
            g[3] = ",".join(sorted(set(filter(None, g[3].split(","))) | set(members)))

    def add_user(name: str, uid: int | None, pgroup: str | None, home: str, gecos: str = "") -> None:
        if any(p[0] == name for p in passwd):
            return
        if pgroup is None or pgroup == name:
            add_group(name, uid if uid is not None and gid_of(name) is None else None)
            pgroup = name
        add_group(pgroup)
        used_uids = {int(p[2]) for p in passwd}
        u = uid if uid is not None and uid not in used_uids else free_id(passwd, 2)
        passwd.append([name, "x", str(u), gid_of(pgroup) or "65534", gecos, home, "/usr/sbin/nologin"])

    for typ, name, ident, gecos, home in _sysusers(root):
        if typ == "g":
            add_group(name, int(ident) if ident.isdigit() else None)
        elif typ == "u":
            uid, _, gid = ident.partition(":")
            add_user(name, int(uid) if uid.isdigit() else None, None if not gid else
                     (gid if not gid.isdigit() else next((g[0] for g in group if g[2] == gid), None)),
                     home if home != "-" else "/", gecos if gecos != "-" else "")
        elif typ == "m":
            add_group(ident, None, (name,))
        made["sysusers"].append(f"{typ}:{name}")
    for name, kind, ident, pgroup, home, members in ADDUSER:
        if kind == "group":
            before = gid_of(name)
            add_group(name, ident, members)
            if before is None:
                made["adduser"].append(f"group:{name}")
        elif not any(p[0] == name for p in passwd):
            add_user(name, ident, pgroup, home or "/nonexistent")
            made["adduser"].append(f"user:{name}")
    etc = root / "etc"
    (etc / "passwd").write_text("".join(":".join(p) + "\n" for p in passwd))
    (etc / "group").write_text("".join(":".join(g) + "\n" for g in group))
    days = int(time.time() // 86400)
    shadow = [f"{p[0]}:{'*' if p[0] == 'root' else '!*'}:{days}::::::" for p in passwd]
    (etc / "shadow").write_text("".join(s + "\n" for s in shadow))
    (etc / "gshadow").write_text("".join(f"{g[0]}:*::{g[3]}\n" for g in group))
    shadow_gid = int(gid_of("shadow") or 42)
    for f in ("shadow", "gshadow"):
        os.chown(etc / f, 0, shadow_gid)
        os.chmod(etc / f, 0o640)
    return made


def _ids(root: Path, user: str, group: str) -> tuple[int, int]:
    uid = next(int(p[2]) for p in _read_table(root / "etc/passwd") if p[0] == user)
    gid = next(int(g[2]) for g in _read_table(root / "etc/group") if g[0] == group)
    return uid, gid


def local_apparmor_includes(root: Path) -> list[str]:
    """dh_apparmor's postinst creates an empty local/PROFILE for every profile; libvirt's
    makes local/abstractions/libvirt-qemu. Create each ``#include <local/...>`` that a profile
    needs and that is not there (``include if exists`` needs nothing)."""
    made = []
    aa = root / "etc/apparmor.d"
    for prof in list(aa.glob("*")) + list(aa.glob("abstractions/*")) + list(aa.glob("libvirt/*")):
        if not prof.is_file():
            continue
        for m in re.finditer(r"^\s*#?include\s+<(local/[^>]+)>", prof.read_text(errors="replace"), re.M):
            dest = aa / m.group(1)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text("# Site-specific additions and overrides. See local/README for details.\n")
                made.append(m.group(1))
    return sorted(set(made))


def base_files(root: Path) -> None:
    """base-files' postinst (first configure): directories, /var/run and /var/lock as links
    into /run, the default shell profiles, the dpkg origin"""
    for d in ("mnt", "srv", "opt", "etc/opt", "var/opt", "media", "run/lock"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for old, new in (("var/run", "/run"), ("var/lock", "/run/lock")):
        p = root / old
        if not p.is_symlink():
            dpkgdb.remove_tree(p)
            p.symlink_to(new)
    share = root / "usr/share/base-files"
    for src, dest in (("dot.profile", "root/.profile"), ("dot.bashrc", "root/.bashrc"),
                      ("profile", "etc/profile"), ("motd", "etc/motd")):
        if (share / src).exists() and not (root / dest).exists():
            (root / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(share / src, root / dest)
    origin = root / "etc/dpkg/origins/default"
    if not origin.exists() and (root / "etc/dpkg/origins/debian").exists():
        origin.symlink_to("debian")
    mail = root / "var/mail"
    mail.mkdir(parents=True, exist_ok=True)
    os.chown(mail, 0, 8)            # group mail (base-passwd: gid 8)
    os.chmod(mail, 0o2775)


def configure(root: Path, suite: str, pkgs: list[dpkgdb.Package], manual: set[str], mirror: str) -> dict:
    """Everything of HAND that can be done on this machine."""
    base_files(root)
    done: dict = {"accounts": make_accounts(root)}
    localtime = root / "etc/localtime"
    localtime.unlink(missing_ok=True)
    localtime.symlink_to("/usr/share/zoneinfo/Etc/UTC")
    (root / "etc/timezone").write_text("Etc/UTC\n")
    for d in ("tunables/home.d", "tunables/xdg-user-dirs.d"):
        (root / "etc/apparmor.d" / d).mkdir(parents=True, exist_ok=True)
    qemu_uid, qemu_gid = _ids(root, "libvirt-qemu", "libvirt-qemu")
    for d, owner, mode in (("var/lib/libvirt/qemu", (qemu_uid, qemu_gid), 0o750),
                           ("var/lib/libvirt/qemu/channel", (qemu_uid, qemu_gid), 0o750),
                           ("var/lib/libvirt/qemu/channel/target", (qemu_uid, qemu_gid), 0o750),
                           ("var/lib/libvirt/images", (0, 0), 0o711), ("var/lib/libvirt/boot", (0, 0), 0o711),
                           ("var/cache/libvirt", (0, 0), 0o711), ("var/cache/libvirt/qemu", (0, 0), 0o711),
                           ("var/lib/libvirt/sanlock", (0, 0), 0o700), ("etc/libvirt/qemu.conf", (0, 0), 0o600)):
        p = root / d
        if p.exists():
            os.chown(p, *owner)
            os.chmod(p, mode)
    for d in ("qemu", "lxc"):
        if (root / "var/log/libvirt" / d).is_dir():
            (root / "var/log/libvirt" / d / ".placeholder").touch()
    done["apparmor_local_includes"] = local_apparmor_includes(root)
    done["alternatives"] = dpkgdb.install_alternatives(root, pkgs, ALTERNATIVES)
    dpkgdb.add_diversion(root, "/usr/bin/qemu-system-arm", "/usr/bin/qemu-system-arm.armfleet-off")
    done["diversions"] = ["/usr/bin/qemu-system-arm -> /usr/bin/qemu-system-arm.armfleet-off (local)"]
    # openssh-server: host key + the lab's drop-in; no rsa/ecdsa keys (sshd skips missing ones)
    ssh = root / "etc/ssh"
    if not (ssh / "sshd_config").exists():
        shutil.copy2(root / "usr/share/openssh/sshd_config", ssh / "sshd_config")
    key = ssh / "ssh_host_ed25519_key"
    for f in (key, key.with_suffix(".pub")):
        f.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@armfleet-{suite}", "-f", str(key)])
    done["ssh_host_key"] = key.with_suffix(".pub").read_text().split()[:2]
    (ssh / "sshd_config.d").mkdir(exist_ok=True)
    shutil.copy2(FILES / "sshd-armfleet.conf", ssh / "sshd_config.d/armfleet.conf")
    # sysvinit-core: the lab's inittab, boot and stop scripts
    shutil.copy2(FILES / "inittab", root / "etc/inittab")
    for f in ("armfleet-boot", "armfleet-stop"):
        dest = root / "usr/local/sbin" / f
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(FILES / f, dest)
        dest.chmod(0o755)
    # apt: where the packages came from (no lists: nothing to fetch offline), and what was asked for
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/apt/extended_states").write_text("".join(
        f"Package: {p.name}\nArchitecture: {p.fields['Architecture']}\nAuto-Installed: 1\n\n"
        for p in sorted(pkgs, key=lambda p: p.name) if p.name not in manual))
    (root / "etc/hostname").write_text("armfleet\n")
    (root / "etc/fstab").write_text("# root is mounted by the initrd; API file systems by armfleet-boot\n")
    (root / "etc/armfleet-suite").write_text(suite + "\n")
    # no dnsmasq/network: libvirt's default network must not autostart (it is not defined here
    # because its postinst did not run, but keep it that way if a package ships the link)
    for link in (root / "etc/libvirt/qemu/networks/autostart").glob("*.xml"):
        link.unlink()
    return done


# -------------------------------------------------------------------- kernel, initrd, image
def kernel_release(root: Path) -> str:
    mods = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if (p / "kernel").is_dir())
    if len(mods) != 1:
        raise LabError(f"expected one kernel's modules in {root}/usr/lib/modules, found {mods}")
    return mods[0]


def extract_kernel(root: Path, kver: str, out: Path) -> None:
    for cand in (root / "boot" / f"vmlinuz-{kver}", root / "usr/lib/modules" / kver / "vmlinuz"):
        if cand.is_file():
            data = cand.read_bytes()
            out.write_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
            if out.read_bytes()[0x38:0x3C] != b"ARM\x64":
                raise LabError(f"{cand}: not an arm64 Image (EFI zboot?)")
            return
    raise LabError(f"no vmlinuz for {kver} in {root}")


def _modinfo_depends(data: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []


def _ko_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(raw)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return raw


def module_order(moddir: Path, names: list[str]) -> list[tuple[str, bytes]]:
    """(file name, decompressed .ko) in load order, dependencies first, from each module's
    .modinfo depends= (this machine has no kmod/depmod; builtin modules are skipped)"""
    index = {re.sub(r"\.ko(\.xz|\.zst)?$", "", p.name).replace("-", "_"): p
             for p in moddir.rglob("*.ko*")}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name not in index:
            return
        seen.add(name)
        data = _ko_bytes(index[name])
        for dep in _modinfo_depends(data):
            visit(dep)
        order.append((name + ".ko", data))

    for n in names:
        visit(n)
    return order


def build_initrd(root: Path, kver: str, busybox_deb: Path, out: Path, work: Path) -> list[str]:
    """busybox-static + the modules to mount an ext4 root on virtio-blk (and virtio_net for the
    lab network); /init mounts /dev/vda and execs /sbin/init (sysvinit) there."""
    ird = work / "initrd"
    dpkgdb.remove_tree(ird)
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (ird / d).mkdir(parents=True)
    bb = work / "busybox"
    dpkgdb.remove_tree(bb)
    run(["dpkg-deb", "-x", str(busybox_deb), str(bb)], quiet=True)
    shutil.copy2(next(p for p in (bb / "bin/busybox", bb / "usr/bin/busybox") if p.exists()), ird / "bin/busybox")
    mods = module_order(root / "usr/lib/modules" / kver, INITRD_MODULES)
    for name, data in mods:
        (ird / "lib/modules" / name).write_bytes(data)
    (ird / "lib/modules/order").write_text("".join(n + "\n" for n, _ in mods))
    init = ird / "init"
    shutil.copy2(FILES / "initrd-init", init)
    init.chmod(0o755)
    env = dict(os.environ, ARMLAB_INITRD_COMPRESS="gzip")
    run([sys.executable, str(LAB / "mkcpio.py"), str(ird), str(out)], env=env, quiet=True)
    return [n for n, _ in mods]


def make_image(root: Path, out: Path) -> int:
    used_mb = int(run(["du", "-sm", str(root)], quiet=True).stdout.split()[0])
    size = used_mb + max(IMAGE_SLACK_MB, used_mb // 2)
    run(["mkfs.ext4", "-q", "-F", "-L", "armfleet", "-d", str(root), str(out), f"{size}M"], timeout=600)
    return size


# --------------------------------------------------------------------------------- build
def recipe_key(suite: str, apt: Apt) -> str:
    h = hashlib.sha256()
    for f in RECIPE:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    # the CPU the first boot runs on: libvirt's QEMU capabilities cache is filled there
    h.update(json.dumps([BUILD_VERSION, suite, PACKAGES, EXTRA[suite], INITRD_DEBS, INITRD_MODULES, HAND,
                         ADDUSER, sorted(ALTERNATIVES), machine.DEFAULT_CPU]).encode())
    h.update(apt.inrelease())
    return h.hexdigest()[:16]


def find(suite: str) -> Base | None:
    """The finished base of *suite* for the current recipe and lists, if built."""
    apt = Apt(suite)
    if not apt.inrelease():
        return None
    d = CACHE / "hosts" / f"{suite}-{recipe_key(suite, apt)}"
    if os.environ.get("ARMFLEET_ANY_BASE") == "1":
        # development only: reuse the newest finished base even if the recipe changed since
        done = sorted((p.parent for p in (CACHE / "hosts").glob(f"{suite}-*/manifest.json")),
                      key=lambda p: p.stat().st_mtime)
        d = done[-1] if done else d
    if (d / "manifest.json").exists():
        return Base(suite, d, json.loads((d / "manifest.json").read_text()))
    return None


def ensure(suite: str) -> Base:
    """The base of *suite*: from the cache, or built now (one builder at a time per suite)."""
    with flocked(CACHE / "hosts" / f".{suite}.build.lock"):
        # we are this suite's only builder now: any partial build of it is a dead one's
        for stale in list((CACHE / "hosts").glob(f".{suite}-*.part-*")) + list(BUILD_ROOT.glob(f"{suite}-*")):
            log(f"{suite}: removing stale partial build {stale}")
            dpkgdb.remove_tree(stale)
        apt = Apt(suite)
        apt.setup()
        base = find(suite)
        if base is not None:
            log(f"{suite}: base image cached: {base.dir}")
            return base
        base = build(suite, apt)
        collect_garbage(suite, keep=base.dir)
        return base


def build(suite: str, apt: Apt) -> Base:
    t: dict[str, float] = {}
    t0 = time.monotonic()
    key = recipe_key(suite, apt)
    final = CACHE / "hosts" / f"{suite}-{key}"
    part = final.with_name(f".{final.name}.part-{os.getpid()}")
    work = BUILD_ROOT / f"{suite}-{os.getpid()}"
    dpkgdb.remove_tree(part)
    dpkgdb.remove_tree(work)
    part.mkdir(parents=True)
    work.mkdir(parents=True)
    try:
        log(f"{suite}: building base image {final.name}")
        manual = set(PACKAGES + EXTRA[suite])
        names = sorted(set(apt.essential()) | manual)
        closure = apt.resolve(names)
        t["resolve"] = time.monotonic() - t0
        apt.download(names)
        initrd_debs = apt.fetch(INITRD_DEBS)
        t["download"] = time.monotonic() - t0 - sum(t.values())
        debs = [apt.deb_of(*c) for c in closure]
        root = work / "root"
        pkgs = dpkgdb.install(debs, root)
        t["extract"] = time.monotonic() - t0 - sum(t.values())
        hand = configure(root, suite, pkgs, manual, apt.mirror)
        kver = kernel_release(root)
        extract_kernel(root, kver, part / "Image")
        mods = build_initrd(root, kver, initrd_debs[0], part / "initrd.gz", work)
        t["configure"] = time.monotonic() - t0 - sum(t.values())
        size = make_image(root, part / "base.img")
        t["mkfs"] = time.monotonic() - t0 - sum(t.values())
        versions = {p.name: p.fields["Version"] for p in pkgs}
        kernel_pkgs = {n: v for n, v in versions.items() if n.startswith("linux-")}
        dpkgdb.remove_tree(work)
        console = part / "prime-console.log"
        cmd = machine.qemu_cmd(kernel=part / "Image", initrd=part / "initrd.gz",
                               drive=f"file={part / 'base.img'},if=none,id=d0,format=raw,cache=unsafe",
                               append="console=ttyAMA0 root=/dev/vda rw panic=-1 armfleet.mode=prime",
                               console=console)
        prime_s = machine.run_to_poweroff(cmd, console, timeout=float(os.environ.get("ARMFLEET_PRIME_TIMEOUT", 1200)),
                                          done=r"AFH-PRIMED ok")
        t["first_boot"] = prime_s
        prime = parse_prime(console.read_text(errors="replace"))
        manifest = {
            "suite": suite, "key": key, "kernel_release": kver, "kernel_packages": kernel_pkgs,
            "versions": {n: versions[n] for n in KEEP_VERSIONS if n in versions},
            "packages": versions, "package_count": len(versions), "image_mb": size,
            "initrd_modules": mods, "hand_configured": hand, "first_boot": prime,
            "outer_qemu": machine.outer_qemu_version(), "mirror": apt.mirror,
            "build_seconds": {k: round(v, 1) for k, v in t.items()},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        manifest["build_seconds"]["total"] = round(time.monotonic() - t0, 1)
        write_json(part / "manifest.json", manifest)
        (part / "lock").touch()
        os.replace(part, final)
        log(f"{suite}: base image ready in {manifest['build_seconds']['total']} s: {final}")
        return Base(suite, final, manifest)
    except BaseException:
        dpkgdb.remove_tree(part)
        dpkgdb.remove_tree(work)
        raise


def parse_prime(console: str) -> dict:
    """The first boot's report: AFH-INFO key=value lines and step times."""
    info: dict[str, str] = {}
    for m in re.finditer(r"AFH-INFO (\S+)=(.*)", console.replace("\r", "")):
        info[m.group(1)] = m.group(2).strip()
    return info


def collect_garbage(suite: str, keep: Path) -> None:
    """Remove older bases of *suite* that no running lab holds (shared lock on their lock)."""
    for d in (CACHE / "hosts").glob(f"{suite}-*"):
        if d == keep or not d.is_dir():
            continue
        try:
            with flocked(d / "lock", blocking=False):
                log(f"{suite}: removing old base {d.name}")
                dpkgdb.remove_tree(d)
        except BlockingIOError:
            log(f"{suite}: old base {d.name} in use, kept")


def ensure_all(suites: list[str]) -> dict[str, Base]:
    with ThreadPoolExecutor(len(suites)) as ex:
        return dict(zip(suites, ex.map(ensure, suites)))


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "build":
        print(__doc__)
        return 2
    suites = argv[1:] or list(SUITES)
    exit_on_sigterm()
    t0 = time.monotonic()
    bases = ensure_all(suites)
    for s, b in bases.items():
        print(f"{s}: {b.dir} ({b.manifest['build_seconds']})")
    print(f"all: {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
