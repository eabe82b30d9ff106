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
#: a pinned VM's record (issue 22): one line, ``sha256:<64 hex> <ISO time>``; a larger file
#: is not one abiguard wrote
MAX_PINNED_RECORD = 128


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


def is_uuid(uuid: str) -> bool:
    return 32 <= len(uuid) <= 36 and all(c in "0123456789abcdefABCDEF-" for c in uuid)


def _file_name(uuid: str) -> str:
    """``uuid`` as a file name under abiguard's state: validated, never a path of its own."""
    if not is_uuid(uuid):
        raise Refusal(f"abiguard: domain UUID {uuid!r} is not a UUID")
    return uuid.lower()


def _marker(uuid: str) -> str:
    return os.path.join(INCOMING, _file_name(uuid))


def pinned_path(uuid: str, base: str | None = None) -> str:
    """Where the record of a pinned VM lives: below this host's state directory, or below
    ``base`` (the fleet directory)."""
    return os.path.join(base or STATE, "pinned", _file_name(uuid))


def _record_digest(data: bytes) -> str | None:
    """The contract digest a pinned record holds, or None when it is not one abiguard wrote."""
    if len(data) > MAX_PINNED_RECORD or not data.endswith(b"\n") or data.count(b"\n") != 1:
        return None
    words = data[:-1].split(b" ")
    if len(words) != 2 or len(words[1]) != 20 or not words[1].endswith(b"Z"):
        return None
    digest = words[0]
    if len(digest) != 71 or not digest.startswith(b"sha256:") \
            or not all(c in b"0123456789abcdef" for c in digest[7:]):
        return None
    return digest.decode("ascii")


def read_pinned(uuid: str | None, base: str | None = None) -> tuple[bool, str | None, str]:
    """Whether this VM was pinned here: (record present, the contract digest it names or None
    when the record is malformed, its path). One bounded read; a VM without a valid UUID
    was never recorded."""
    if not uuid or not is_uuid(uuid):
        return False, None, ""
    path = pinned_path(uuid, base)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False, None, path
    except OSError:
        return True, None, path     # there, and unreadable: present-and-unknown
    try:
        data = os.read(fd, MAX_PINNED_RECORD + 1)
    except OSError:
        data = b""
    finally:
        os.close(fd)
    return True, _record_digest(data), path


def record_pinned(uuid: str, digest: str, base: str | None = None) -> None:
    """Remember that the VM ``uuid`` was judged and allowed under the contract ``digest``
    (written atomically; left alone when it already says so). Raises OSError/Refusal: the
    caller logs it and allows anyway."""
    path = pinned_path(uuid, base)
    present, have, _ = read_pinned(uuid, base)
    if present and have == digest:
        return
    line = f"{digest} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode("ascii", "replace")
    if _record_digest(line) is None:
        raise Refusal(f"abiguard: contract digest {digest[:80]!r} cannot be recorded")
    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
    tmp = f"{path}.{os.uname().nodename[:64]}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def release_pinned(uuid: str, base: str | None = None) -> tuple[str, str | None] | None:
    """Forget the VM ``uuid``'s record: (its path, the digest it named or None when malformed),
    or None when there was none."""
    present, digest, path = read_pinned(uuid, base)
    if not present:
        return None
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    return path, digest


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
