"""Where abiguard keeps things on a host (its configuration, the host profile, state), the
hook's log, and the markers that tell an incoming start from a plain one. Below everything
that reads them: the hook, the configuration (:mod:`abiguard.model.config`), the fleet's
publishing and the commands.

ABIGUARD_ROOT moves every path below a directory, for tests and benchmarks; libvirt runs
hooks with a cleared environment (vircommand.c virCommandAddEnvPassCommon), so it never
reaches a hook that libvirt started.
"""
from __future__ import annotations

import os
import time

from .errors import Refusal

ROOT = os.environ.get("ABIGUARD_ROOT", "/")
ETC = os.path.join(ROOT, "etc/abiguard")
STATE = os.path.join(ROOT, "var/lib/abiguard")
LOGDIR = os.path.join(ROOT, "var/log/abiguard")
CONFIG = os.path.join(ETC, "abiguard.toml")
PROFILE = os.path.join(STATE, "host-profile.json")
INCOMING = os.path.join(STATE, "incoming")
LOG = os.path.join(LOGDIR, "hook.log")
LOG_MAX = 1024 * 1024
#: a migrate/restore marker older than this does not make a later start "incoming"
MARKER_TTL = 600.0


def rooted(path: str) -> str:
    """An absolute host path below ABIGUARD_ROOT."""
    return os.path.join(ROOT, path.lstrip("/"))


def log(line: str) -> None:
    try:
        os.makedirs(LOGDIR, 0o750, exist_ok=True)
        if os.path.exists(LOG) and os.path.getsize(LOG) > LOG_MAX:
            os.replace(LOG, LOG + ".1")
        with open(LOG, "ab") as f:   # bytes: a text file would look up the locale's codec
            f.write((time.strftime("%Y-%m-%dT%H:%M:%S ") + line.rstrip("\n") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass  # logging must never turn an answer into a failure


def _marker(uuid: str) -> str:
    if not (32 <= len(uuid) <= 36 and all(c in "0123456789abcdefABCDEF-" for c in uuid)):
        raise Refusal(f"abiguard: domain UUID {uuid!r} is not a UUID")
    return os.path.join(INCOMING, uuid.lower())


def mark_incoming(uuid: str | None, nonce: str) -> None:
    """Left by migrate/restore begin: the start that follows is this incoming one.

    Written in place, never truncated: a nonce always has the same length, and truncating
    a file costs a block discard (~0.3 ms) on filesystems mounted with ``discard``."""
    if not uuid:
        raise Refusal("abiguard: domain XML has no <uuid>")
    os.makedirs(INCOMING, 0o700, exist_ok=True)
    fd = os.open(_marker(uuid), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        data = nonce.encode()
        os.pwrite(fd, data, 0)
        if os.fstat(fd).st_size != len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def was_incoming(uuid: str | None, nonce: str | None) -> bool:
    """prepare runs for plain starts too: only a fresh marker from migrate/restore begin
    with the same nonce as the stamp makes this start an incoming one (used up here)."""
    if not uuid or nonce is None:
        return False
    path = _marker(uuid)
    try:
        with open(path, "rb") as f:
            mark = f.read(64).decode("ascii", "replace")
        fresh = time.time() - os.stat(path).st_mtime < MARKER_TTL
        os.unlink(path)
    except FileNotFoundError:
        return False
    return fresh and mark == nonce
