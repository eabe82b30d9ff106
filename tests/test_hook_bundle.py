"""The hook's precompiled bundle (abiguard.bundle writes it, abiguard._hookpath reads it):
the real shim with and without it gives the same answers; a stale, damaged or foreign
bundle is never used; an edited module is read from its file."""
from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from abiguard import _hookpath, bundle, install
from abiguard.builtin import builtin_profiles
from abiguard.model import contract, profile
from abiguard.xml.contract import to_xml_text
from abiguard.xml.edit import boot_stamp

PLUGIN = Path(__file__).resolve().parents[1] / "plugin"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _arm(name: str) -> str:
    return next(p for p in builtin_profiles() if p.endswith(f"/{KERNELS[name]}.json"))


def _domain(sealed: contract.Contract | None) -> bytes:
    meta = "" if sealed is None else (to_xml_text(sealed)
                                      + boot_stamp(sealed, nonce="00" * 8, at="2026-01-01T00:00:00Z").decode())
    return (f"<domain type='kvm'><name>b</name><uuid>6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10</uuid>"
            f"<metadata>{meta}</metadata><os><type arch='aarch64' machine='virt-7.2'>hvm</type></os>"
            "<devices><emulator>/usr/bin/qemu-system-aarch64</emulator></devices></domain>").encode()


class Host:
    """A fake root with the real shim, a bundled profile and (optionally) a bundle."""

    def __init__(self, tmp: Path, package_parent: Path, prof: str) -> None:
        self.root = tmp / "root"
        (self.root / "var/lib/abiguard").mkdir(parents=True)
        (self.root / "usr/lib/abiguard").mkdir(parents=True)
        (self.root / "usr/lib/abiguard/abiguard_pin.so").write_bytes(b"")
        self.shim = tmp / "qemu-hook"
        self.shim.write_text(install.render("qemu", PYTHON, str(package_parent)))
        self.shim.chmod(0o755)
        self.package_dir = package_parent / "abiguard"
        doc = profile.load(prof).doc
        profile.save(doc, str(self.root / "var/lib/abiguard/host-profile.json"))
        self.bundle = self.root / _hookpath.RELPATH

    def write_bundle(self) -> None:
        bundle.write(str(self.bundle), str(self.package_dir))

    def run(self, op: str, xml: bytes, *probes: str) -> subprocess.CompletedProcess[bytes]:
        """The shim as libvirt runs it; ``probes``: expressions printed to stderr, one per
        line, as the hook process exits (the shim leaves through posix._exit)."""
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "ABIGUARD_ROOT": str(self.root)}
        argv = [str(self.shim), "b", op, "begin", "-"]
        if not probes:
            return subprocess.run([PYTHON, "-IS", *argv], input=xml, capture_output=True, env=env, timeout=60)
        code = ("import sys, posix\n"
                "real_exit = posix._exit\n"
                "def probed_exit(rc):\n"
                + "".join(f"    print({p}, file=sys.stderr)\n" for p in probes)
                + "    sys.stderr.flush()\n"
                "    real_exit(rc)\n"
                "posix._exit = probed_exit\n"
                "sys.argv = sys.argv[1:]\n"
                "exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'), {'__name__': '__main__'})\n")
        return subprocess.run([PYTHON, "-IS", "-c", code, *argv], input=xml, capture_output=True, env=env,
                              timeout=60)


def _normal(out: bytes) -> bytes:
    """The output with the hop's own nonce and time blanked (they differ per run)."""
    import re

    return re.sub(rb'(nonce|at|host)="[^"]*"', rb'\1="-"', out)


@pytest.fixture
def copied(tmp_path: Path) -> Path:
    """A private copy of the package, so a test may edit its sources."""
    parent = tmp_path / "pkg"
    shutil.copytree(PLUGIN / "abiguard", parent / "abiguard", ignore=shutil.ignore_patterns("__pycache__"))
    return parent


CASES = {
    "same host": ("7.2", "7.2"),
    "cross-kernel allow": ("6.1", "7.2"),
    "refusal": ("7.2", "6.12"),
}
KERNELS = {"6.1": "6.1.0-50-arm64", "6.12": "6.12.117+deb13-arm64", "7.2": "7.2.13+deb14-arm64"
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("op", ["migrate", "restore", "prepare"])
def test_the_shim_answers_the_same_with_and_without_the_bundle(tmp_path: Path, copied: Path, case: str,
                                                              op: str) -> None:
    pinned_on, arriving = CASES[case]
    sealed = contract.from_profile(profile.load(_arm(pinned_on)))
    xml = _domain(sealed)
    plain = Host(tmp_path / "plain", copied, _arm(arriving))
    fast = Host(tmp_path / "fast", copied, _arm(arriving))
    fast.write_bundle()
    a, b = plain.run(op, xml), fast.run(op, xml)
    assert (a.returncode, _normal(a.stdout), a.stderr) == (b.returncode, _normal(b.stdout), b.stderr)
    assert a.returncode in (0, 1) and b"Traceback" not in a.stderr


def _loaded_from_bundle(host: Host, xml: bytes) -> tuple[int, set[str], set[str]]:
    cp = host.run("migrate", xml, "sorted(n for n, m in sys.modules.items() if n.startswith('abiguard') and "
                                  "type(getattr(m, '__loader__', None)).__name__ == '_Finder')",
                  "sorted(n for n in sys.modules if n.startswith('abiguard'))")
    lines = cp.stderr.decode().strip().splitlines()
    served, every = eval(lines[-2]), eval(lines[-1])   # noqa: S307 - our own repr of two lists
    return cp.returncode, set(served), set(every)


def test_a_judged_run_loads_every_module_from_the_bundle(tmp_path: Path, copied: Path) -> None:
    sealed = contract.from_profile(profile.load(_arm("6.1")))
    host = Host(tmp_path, copied, _arm("7.2"))
    host.write_bundle()
    rc, served, every = _loaded_from_bundle(host, _domain(sealed))
    assert rc == 0
    assert every == served, every - served       # the package itself too: nothing looked up on sys.path
    assert len(served) > 25


def test_an_edited_module_is_read_from_its_file(tmp_path: Path, copied: Path) -> None:
    sealed = contract.from_profile(profile.load(_arm("7.2")))
    host = Host(tmp_path, copied, _arm("7.2"))
    host.write_bundle()
    assert bundle.current(str(host.bundle), str(host.package_dir))
    edited = copied / "abiguard/hook/checks.py"
    edited.write_text(edited.read_text() + "\nEDITED_SINCE_THE_BUNDLE = True\n")
    assert not bundle.current(str(host.bundle), str(host.package_dir))
    rc, served, every = _loaded_from_bundle(host, _domain(sealed))
    assert rc == 0
    assert "abiguard.hook.checks" in every and "abiguard.hook.checks" not in served
    assert "abiguard.hook.protocol" in served       # the others still come from the bundle
    cp = host.run("migrate", _domain(sealed), "sys.modules['abiguard.hook.checks'].EDITED_SINCE_THE_BUNDLE")
    assert cp.stderr.decode().strip().splitlines()[-1] == "True"


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    head = len(_hookpath.MAGIC)
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "wrong magic":
        path.write_bytes(b"abiguard-hook-bundle-1\n" + data[head:])
    elif how == "other interpreter":
        path.write_bytes(data[:head] + b"\x00\x00\r\n" + data[head + 4:])
    elif how == "huge loader":
        path.write_bytes(data[:head + 4] + (1 << 31).to_bytes(4, "little") + data[head + 8:])
    elif how == "garbage loader":
        path.write_bytes(data[:head + 8] + b"\xff" * 64 + data[head + 72:])
    elif how == "garbage index":
        loader = int.from_bytes(data[head + 4:head + 8], "little")
        at = head + 8 + loader + 4
        path.write_bytes(data[:at] + b"\xff" * 64 + data[at + 64:])
    elif how == "appended":
        path.write_bytes(data + b"\x00")
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "wrong magic", "other interpreter", "huge loader", "garbage loader",
                                 "garbage index", "appended", "empty"])
def test_a_damaged_or_foreign_bundle_is_not_used(tmp_path: Path, copied: Path, how: str) -> None:
    sealed = contract.from_profile(profile.load(_arm("7.2")))
    host = Host(tmp_path, copied, _arm("7.2"))
    host.write_bundle()
    _damage(host.bundle, how)
    assert not bundle.current(str(host.bundle), str(host.package_dir))
    rc, served, _every = _loaded_from_bundle(host, _domain(sealed))
    assert (rc, served) == (0, set())


def test_damaged_code_in_a_whole_index_is_compiled_from_its_source(tmp_path: Path, copied: Path) -> None:
    """Code blobs have no checksum of their own (like .pyc files): the index says where they
    are, the stat of each source says they are current. A blob that does not unmarshal is
    compiled from its (current) source instead."""
    sealed = contract.from_profile(profile.load(_arm("7.2")))
    host = Host(tmp_path, copied, _arm("7.2"))
    host.write_bundle()
    plain = host.run("migrate", _domain(sealed))
    data = host.bundle.read_bytes()
    host.bundle.write_bytes(data[:-4096] + b"\x00" * 4096)      # the last blobs: zeros
    cp = host.run("migrate", _domain(sealed))
    assert (cp.returncode, _normal(cp.stdout), cp.stderr) == (plain.returncode, _normal(plain.stdout), plain.stderr)


def test_the_lean_code_defines_what_the_source_defines() -> None:
    """Docstrings, annotations and type-checking blocks aside, every bundled module binds
    the same module-level names as its source."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = bundle.write(os.path.join(d, "hook.bundle"))
        opened = _hookpath.open_index(path)
        assert opened is not None
        fd, index = opened
        try:
            for name, (origin, _pkg, offset, length, _size, _mtime) in index.items():
                lean = marshal.loads(os.pread(fd, length, offset))
                full = compile(Path(origin).read_text(), origin, "exec")
                dropped = {"__doc__", "__annotations__", "TYPE_CHECKING"}
                lost = (set(full.co_names) - dropped) - (set(lean.co_names) - dropped)
                assert lost <= _only_under_type_checking(origin), name
        finally:
            os.close(fd)


def _only_under_type_checking(origin: str) -> set[str]:
    """Names a module uses only inside ``if TYPE_CHECKING:`` or in annotations."""
    import ast

    tree = ast.parse(Path(origin).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            for n in ast.walk(node):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    out |= {part for a in n.names for part in [a.asname or "", *a.name.split(".")] if part}
                    out |= set(getattr(n, "module", None) and [n.module, *n.module.split(".")] or [])
            out |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
        if isinstance(node, ast.AnnAssign):
            out |= {n.id for n in ast.walk(node.annotation) if isinstance(n, ast.Name)}
            out |= {n.attr for n in ast.walk(node.annotation) if isinstance(n, ast.Attribute)}
    return out | {"annotations", "__future__"}


def test_a_module_that_reads_annotations_is_kept_out(tmp_path: Path, copied: Path) -> None:
    (copied / "abiguard/hook/checks.py").write_text(
        (copied / "abiguard/hook/checks.py").read_text() + "\nfrom dataclasses import dataclass\n")
    with pytest.raises(RuntimeError, match="read annotations"):
        bundle.write(str(tmp_path / "b"), str(copied / "abiguard"))
