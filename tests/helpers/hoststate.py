"""What the test suite must leave as it found it (issue 27): the host's own abiguard state
and the temporary directory. Taken once when the run starts (tests/conftest.py) and
compared by tests/test_host_untouched.py, the last test of every run.

The host's state is compared entry by entry (kind, mode, size, mtime, and the bytes'
sha256 for files up to 16 MiB), so a log line appended to /var/log/abiguard/hook.log, a
profile rewritten in place or a directory created where there was none all show. The
temporary directory: the run gets one of its own (``tempfile.tempdir`` points into it for
the test process), so what a test leaves there is the suite's alone -- not another
program's files in the machine's /tmp -- and must be gone by the end, pytest's own
``tmp_path`` directories (pytest-of-USER, kept for inspection) excepted.
"""
from __future__ import annotations

import hashlib
import os
import stat

import pytest

#: the snapshot taken when the run starts, and the run's own temporary directory
BEFORE = pytest.StashKey[dict]()
RUN_TMP = pytest.StashKey[str]()
#: what the run changed, found after the session's own fixtures were torn down
CHANGED = pytest.StashKey[list]()
#: where a host keeps abiguard's configuration, state and logs (abiguard.state)
HOST_STATE = ("/etc/abiguard", "/var/lib/abiguard", "/var/log/abiguard")
#: entries a snapshot reads before it stops: the real directories hold a few dozen
MAX_ENTRIES = 100_000
MAX_HASHED = 16 * 1024 * 1024


def _entry(path: str) -> tuple[object, ...]:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    digest = None
    if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_HASHED:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        digest = os.readlink(path)
    return kind, stat.S_IMODE(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode) else None, \
        st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None, digest


def snapshot(tops: tuple[str, ...] = HOST_STATE) -> dict[str, tuple[object, ...]]:
    """path -> (kind, mode, size, mtime, sha256 or link target) for every entry below ``tops``."""
    seen: dict[str, tuple[object, ...]] = {}
    for top in tops:
        if not os.path.lexists(top):
            continue
        seen[top] = _entry(top)
        for where, dirs, files in os.walk(top):
            for name in sorted(dirs + files):
                if len(seen) >= MAX_ENTRIES:
                    return seen
                path = os.path.join(where, name)
                try:
                    seen[path] = _entry(path)
                except OSError as e:           # gone while read: it changed
                    seen[path] = ("unreadable", e.errno)
    return seen


def differences(before: dict[str, tuple[object, ...]], after: dict[str, tuple[object, ...]]) -> list[str]:
    """One line per entry added, removed or changed."""
    out = [f"added {p}" for p in sorted(after.keys() - before.keys())]
    out += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    names = ("kind", "mode", "size", "mtime", "content")
    for p in sorted(before.keys() & after.keys()):
        if before[p] != after[p]:
            what = [n for n, a, b in zip(names, before[p], after[p]) if a != b] or ["entry"]
            out.append(f"changed {p} ({', '.join(what)})")
    return out


def leftovers(tmp: str) -> list[str]:
    """What is left in the run's own temporary directory, pytest's tmp_path roots excepted."""
    try:
        names = sorted(os.listdir(tmp))
    except FileNotFoundError:
        return []
    return [os.path.join(tmp, n) for n in names if not n.startswith("pytest-of-")]
