"""The few file-system calls the hook's path makes, straight on the ``posix`` module.

``os`` is not loaded by a bare ``python3 -IS``; importing it (with posixpath, stat and
_collections_abc) costs a judged hook run ~1.3 ms of its budget. The rest of abiguard uses
``os`` as usual. Paths here are plain strings joined with "/", as in every hook path.
"""
from __future__ import annotations

import posix

O_RDONLY, O_WRONLY, O_CREAT, O_CLOEXEC, O_NOFOLLOW = (posix.O_RDONLY, posix.O_WRONLY, posix.O_CREAT,
                                                      posix.O_CLOEXEC, posix.O_NOFOLLOW)
stat = posix.stat
fstat = posix.fstat
read = posix.read
pwrite = posix.pwrite
ftruncate = posix.ftruncate
close = posix.close
unlink = posix.unlink
replace = posix.replace
urandom = posix.urandom
uname = posix.uname
listdir = posix.listdir


def read_capped(path: str, cap: int) -> bytes | None:
    """The whole file, or None when it is larger than ``cap`` bytes. Sized by fstat and read
    in one call: ``f.read(cap + 1)`` would allocate the whole cap first (~50 us for 16 MiB)."""
    fd = posix.open(path, O_RDONLY | O_CLOEXEC)
    try:
        size = posix.fstat(fd).st_size
        if size > cap:
            return None
        chunks = []
        while True:                 # a file that grew since fstat: read to its end, capped
            chunk = posix.read(fd, max(size + 1, 4096))
            if not chunk:
                break
            chunks.append(chunk)
            size = sum(map(len, chunks))
            if size > cap:
                return None
        return b"".join(chunks)
    finally:
        posix.close(fd)


def open_fd(path: str, flags: int, mode: int = 0o666) -> int:
    return posix.open(path, flags, mode)


def env(name: str, default: str) -> str:
    value = posix.environ.get(name.encode())
    return default if value is None else value.decode("utf-8", "surrogateescape")


def join(*parts: str) -> str:
    """``os.path.join`` for a root and relative parts (no part but the first is absolute)."""
    out = parts[0]
    for p in parts[1:]:
        out = (out if out.endswith("/") else out + "/") + p.lstrip("/")
    return out


def exists(path: str) -> bool:
    try:
        posix.stat(path)
        return True
    except OSError:
        return False


def getsize(path: str) -> int:
    return posix.stat(path).st_size


def makedirs(path: str, mode: int = 0o777) -> None:
    """``os.makedirs(path, mode, exist_ok=True)``."""
    try:
        posix.mkdir(path, mode)
        return
    except FileExistsError:
        return
    except FileNotFoundError:
        pass
    parent = path.rstrip("/").rpartition("/")[0]
    if parent and parent != path:
        makedirs(parent, mode)
    try:
        posix.mkdir(path, mode)
    except FileExistsError:
        pass
