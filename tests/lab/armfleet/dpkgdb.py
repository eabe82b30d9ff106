"""Install Debian arm64 packages into a root tree without running any arm64 code, and leave
a dpkg database that says exactly what was installed.

What dpkg itself would write, done here:
  - the files of each package: ``dpkg-deb --fsys-tarfile | tar -x`` (numeric owners, the
    merged-/usr symlinks /bin /sbin /lib -> usr/... created first and kept);
  - /var/lib/dpkg/status: each package's control stanza with ``Status: install ok installed``
    and its ``Conffiles`` (md5 of the file as shipped);
  - /var/lib/dpkg/info/PKG[:arm64].{list,md5sums,conffiles,preinst,postinst,prerm,postrm,
    triggers,...}: the file list as tar extracted it, and the control members, so a later
    ``dpkg -i``/``apt install`` finds the file owners, can upgrade or remove a package and
    runs its prerm/postrm;
  - /var/lib/dpkg/triggers/{File,<name>}: the trigger interests packages declare;
  - /var/lib/dpkg/{available,diversions,statoverride} (empty unless diversions are added).
Maintainer scripts are NOT run; what the lab needs of them is done by hand in rootfs.py.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .common import LabError

CONTROL_MEMBERS = ("preinst", "postinst", "prerm", "postrm", "conffiles", "md5sums", "triggers",
                   "shlibs", "symbols", "templates", "config")
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib"}


@dataclass
class Package:
    deb: Path
    control: str = ""                      # the control stanza, as shipped
    fields: dict[str, str] = field(default_factory=dict)
    members: dict[str, bytes] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.fields["Package"]

    @property
    def dbname(self) -> str:
        """info/ file stem: dpkg qualifies Multi-Arch: same packages with the architecture"""
        if self.fields.get("Multi-Arch") == "same":
            return f"{self.name}:{self.fields['Architecture']}"
        return self.name


def parse_stanza(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and key:
            fields[key] += "\n" + line
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def _tar_name(raw: str) -> str:
    """tar's member name ('./usr/bin/', './etc/x') as dpkg lists it ('/usr/bin', '/etc/x')"""
    name = raw.rstrip("/")
    if name in (".", ""):
        return "/."
    return name[1:] if name.startswith("./") else "/" + name


def unpack(deb: Path, root: Path) -> Package:
    """Extract one .deb's data into *root* and read its control members."""
    pkg = Package(deb)
    with tempfile.TemporaryDirectory(prefix="ctl.") as ctl:
        subprocess.run(["dpkg-deb", "-e", str(deb), ctl], check=True)
        for m in ("control",) + CONTROL_MEMBERS:
            p = Path(ctl, m)
            if p.exists():
                pkg.members[m] = p.read_bytes()
    pkg.control = pkg.members.pop("control").decode()
    pkg.fields = parse_stanza(pkg.control)
    feed = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-v", "--numeric-owner", "--keep-directory-symlink",
                          "-C", str(root), "-f", "-"], stdin=feed.stdout, capture_output=True, text=True)
    assert feed.stdout is not None
    feed.stdout.close()
    if feed.wait() != 0 or tar.returncode != 0:
        raise LabError(f"extracting {deb.name} failed: {tar.stderr[-1500:]}")
    pkg.files = [_tar_name(n) for n in tar.stdout.splitlines() if n]
    return pkg


def install(debs: list[Path], root: Path, jobs: int = 4) -> list[Package]:
    """Unpack every deb into *root* (in parallel: packages own disjoint files) and write the
    dpkg database. Returns the packages in the order given."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "usr").mkdir(exist_ok=True)
    for link, target in MERGED_USR.items():     # what debootstrap does for merged /usr
        (root / target).mkdir(parents=True, exist_ok=True)
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)
    with ThreadPoolExecutor(jobs) as ex:
        pkgs = list(ex.map(lambda d: unpack(d, root), debs))
    write_database(pkgs, root)
    return pkgs


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_database(pkgs: list[Package], root: Path) -> None:
    db = root / "var/lib/dpkg"
    info = db / "info"
    info.mkdir(parents=True, exist_ok=True)
    (db / "updates").mkdir(exist_ok=True)
    (db / "triggers").mkdir(exist_ok=True)
    (db / "alternatives").mkdir(exist_ok=True)
    stanzas = []
    interests: dict[str, list[str]] = {}
    for pkg in sorted(pkgs, key=lambda p: p.name):
        lines = pkg.control.rstrip("\n").splitlines()
        out = [lines[0], "Status: install ok installed", *lines[1:]]
        conffiles = [c.strip() for c in pkg.members.get("conffiles", b"").decode().splitlines() if c.strip()]
        if conffiles:
            out.append("Conffiles:")
            for c in conffiles:
                path = c.split()[-1] if c.startswith("remove-on-upgrade") else c
                f = root / path.lstrip("/")
                out.append(f" {path} {_md5(f) if f.is_file() else 'newconffile'}")
        stanzas.append("\n".join(out))
        (info / f"{pkg.dbname}.list").write_text("\n".join(pkg.files) + "\n")
        for m, data in pkg.members.items():
            dest = info / f"{pkg.dbname}.{m}"
            dest.write_bytes(data)
            dest.chmod(0o755 if m in ("preinst", "postinst", "prerm", "postrm", "config") else 0o644)
        for t in pkg.members.get("triggers", b"").decode().splitlines():
            parts = t.split("#", 1)[0].split()
            if len(parts) == 2 and parts[0].startswith("interest"):
                suffix = "/noawait" if parts[0] == "interest-noawait" else ""
                interests.setdefault(parts[1], []).append(pkg.name + suffix)
    (db / "status").write_text("\n\n".join(stanzas) + "\n")
    (info / "format").write_text("1\n")
    for name in ("available", "diversions", "statoverride"):
        (db / name).touch()
    file_triggers = []
    for trig, who in sorted(interests.items()):
        if trig.startswith("/"):
            file_triggers += [f"{trig} {w}" for w in who]
        else:
            (db / "triggers" / trig).write_text("\n".join(who) + "\n")
    (db / "triggers" / "File").write_text("".join(f + "\n" for f in file_triggers))
    (db / "triggers" / "Unincorp").touch()


def add_diversion(root: Path, path: str, divert_to: str) -> None:
    """``dpkg-divert --local --rename --divert DIVERT_TO --add PATH``"""
    src, dst = root / path.lstrip("/"), root / divert_to.lstrip("/")
    if src.exists() or src.is_symlink():
        os.replace(src, dst)
    with open(root / "var/lib/dpkg/diversions", "a") as f:
        f.write(f"{path}\n{divert_to}\n:\n")


_ALT_RE = re.compile(r"update-alternatives\s+(?:--quiet\s+)?--install\s+(.*)")


def install_alternatives(root: Path, pkgs: list[Package], wanted: set[str]) -> list[str]:
    """``update-alternatives --install`` as the postinsts of *pkgs* call it, for the names in
    *wanted* only (calls with shell variables or for other systems are not interpreted):
    the highest priority wins, like update-alternatives in auto mode. Returns the names done."""
    found: dict[str, tuple[int, str, str, list[tuple[str, str, str]]]] = {}
    for pkg in pkgs:
        script = pkg.members.get("postinst", b"").decode(errors="replace").replace("\\\n", " ")
        for m in _ALT_RE.finditer(script):
            words = m.group(1).split()
            if len(words) < 4 or any(c in " ".join(words[:4]) for c in "$`"):
                continue
            link, name, path, prio = words[:4]
            if name not in wanted or not prio.isdigit():
                continue
            slaves, rest = [], words[4:]
            while len(rest) >= 4 and rest[0] == "--slave":
                slaves.append((rest[1], rest[2], rest[3]))
                rest = rest[4:]
            if name not in found or int(prio) > found[name][0]:
                found[name] = (int(prio), link, path, slaves)
    for name, (prio, link, path, slaves) in sorted(found.items()):
        alt = root / "etc/alternatives"
        alt.mkdir(parents=True, exist_ok=True)
        slaves = sorted(slaves, key=lambda s: s[1])
        for lnk, nm, target in [(link, name, path)] + slaves:
            if nm != name and not (root / target.lstrip("/")).exists():
                continue        # update-alternatives makes no link for a missing slave target
            a = alt / nm
            if a.is_symlink() or a.exists():
                a.unlink()
            a.symlink_to(target)
            dest = root / lnk.lstrip("/")
            if not dest.exists() or dest.is_symlink():
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.is_symlink():
                    dest.unlink()
                dest.symlink_to(f"/etc/alternatives/{nm}")
        admin = ["auto", link] + [x for s in slaves for x in (s[1], s[0])] + ["", path, str(prio)]
        admin += [s[2] for s in slaves] + ["", ""]
        (root / "var/lib/dpkg/alternatives" / name).write_text("\n".join(admin))
    return sorted(found)


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
