"""Serving the qemu hook's modules from ``/var/lib/abiguard/hook.bundle``, so a judged hook
run does not pay the import system's per-module cost (finding, opening, reading and
unmarshalling ~40 files, ~40 % of its imports).

The bundle (:mod:`abiguard.bundle` writes it at install, upgrade and daemon-hook time)::

    MAGIC | bytecode magic (4) | loader size (u32 LE) | loader | index size (u32 LE) | index | code blobs

The *loader* is this module, compiled: the shim (:func:`abiguard.install.render`) checks
MAGIC and the bytecode magic of the interpreter running it, executes the loader and
hands over to :func:`start` -- so not even this module is looked up on ``sys.path``, and
the shim itself, which Python compiles from source on every run, stays a few lines. The *index*
maps each module of the hook's import closure to its source path, the place of its code
and the size and mtime of the source it was compiled from. A finder serves a module from
the bundle only after one ``stat`` shows its source is still the one compiled; otherwise
(an upgrade or an edit since) that module is imported from its file as usual. A bundle
cut short or appended to (its size is in the index), made by another interpreter, or
damaged in its index is not used at all. Tracebacks name the source files and lines.

Standard library only, nothing imported but what the interpreter has loaded before any
script runs (``marshal``, ``sys``, ``posix``, ``_frozen_importlib``) and the builtin ``gc``.
"""
# no "from __future__ import annotations": annotations naming typing-only types are
# strings instead, so the loader imports nothing
import marshal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"abiguard-hook-bundle-3\n"
#: the bundle's path below the host root
RELPATH = "var/lib/abiguard/hook.bundle"
#: an index or loader larger than this is not one abiguard.bundle wrote
MAX_PART = 1 << 20


def bytecode_magic() -> bytes:
    """The running interpreter's bytecode magic (a bundle is only for the one that wrote it)."""
    magic: bytes = sys.modules["_frozen_importlib_external"].MAGIC_NUMBER
    return magic


def header() -> bytes:
    """What a bundle starts with, for this interpreter."""
    return MAGIC + bytecode_magic()


class _Finder:
    """A meta-path finder and loader for the bundled modules (PEP 451)."""

    def __init__(self, fd: int, index: "dict[str, tuple[str, bool, int, int, int, int]]") -> None:
        self.fd = fd
        self.index = index
        self._spec = sys.modules["_frozen_importlib"].ModuleSpec

    def find_spec(self, name: str, path: "Any" = None, target: "Any" = None) -> "Any":
        entry = self.index.get(name)
        if entry is None:
            return None
        origin, is_package, _offset, _length, size, mtime = entry
        try:
            st = sys.modules["posix"].stat(origin)
        except OSError:
            return None
        if st.st_size != size or st.st_mtime_ns != mtime:
            return None            # changed since the bundle was written: the file is the truth
        spec = self._spec(name, self, origin=origin, is_package=is_package)
        if is_package:
            spec.submodule_search_locations = [origin.rpartition("/")[0]]
        return spec

    def create_module(self, spec: "Any") -> None:
        return None

    def exec_module(self, module: "Any") -> None:
        origin, _is_package, offset, length, _size, _mtime = self.index[module.__name__]
        module.__file__ = origin
        try:
            code = marshal.loads(sys.modules["posix"].pread(self.fd, length, offset))
        except (ValueError, EOFError, TypeError, OSError):
            # a damaged blob: the source is current (find_spec checked), compile it
            with open(origin, "rb") as f:
                code = compile(f.read(), origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)


def _part(fd: int, at: int) -> "tuple[bytes, int]":
    """The length-prefixed part of the bundle at offset ``at``, and the offset after it."""
    posix = sys.modules["posix"]
    size = int.from_bytes(posix.pread(fd, 4, at), "little")
    if size > MAX_PART:
        raise ValueError("not a bundle abiguard wrote")
    raw = posix.pread(fd, size, at + 4)
    if len(raw) != size:
        raise ValueError("the bundle is cut short")
    return raw, at + 4 + size


def open_index(path: str) -> "tuple[int, dict[str, tuple[str, bool, int, int, int, int]]] | None":
    """The bundle's descriptor and index if the bundle is whole and this interpreter's."""
    posix = sys.modules["posix"]
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        head = header()
        if posix.pread(fd, len(head), 0) != head:
            raise ValueError("another interpreter's bundle, or not a bundle")
        _loader, at = _part(fd, len(head))
        raw, _at = _part(fd, at)
        total, index = marshal.loads(raw)
        # its code blobs are trusted like .pyc files once the index is whole and the file
        # is the size it was written
        if type(index) is not dict or posix.fstat(fd).st_size != total:
            raise ValueError("the bundle was cut short or appended to")
        return fd, index
    except BaseException:
        posix.close(fd)
        return None


def load(path: str) -> bool:
    """Serve the package from the bundle at ``path`` where it is current; never raises."""
    try:
        opened = open_index(path)
    except Exception:
        return False
    if opened is None:
        return False
    sys.meta_path.insert(0, _Finder(*opened))
    return True


def start(bundle: str | None) -> None:
    """The qemu hook's run after the shim: serve the modules from ``bundle`` (None: no
    usable bundle, they come from their files), judge, leave. What abiguard judges fails
    closed: a package that cannot be loaded refuses with one line."""
    import gc

    gc.disable()      # a short-lived process: the cyclic collector would only cost time (~1 ms)
    if bundle is not None:
        load(bundle)
    try:
        from abiguard.hook.protocol import main
    except BaseException as e:  # missing or half-installed
        sys.stderr.write(f"abiguard: cannot load abiguard ({type(e).__name__}); refusing {sys.argv[2]}: "
                         "reinstall abiguard\n")
        sys.stderr.flush()
        sys.modules["posix"]._exit(1)
    rc = main(sys.argv)
    # what libvirt reads is written: leave without the interpreter's teardown (~1.5 ms)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.modules["posix"]._exit(rc)
