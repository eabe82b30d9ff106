"""Host profiles: versioned JSON with a content digest, and their validation.

A profile is what :mod:`abiguard.probe` read on one host. Layout (version 1)::

    format      "abiguard-host-profile"
    version     1
    digest      "sha256:<hex>" over every member but digest and meta
    meta        when, how long, by which abiguard (not part of the digest)
    host        kernel_release, kernel_version, machine
    kvm         api_version, caps, and one of aarch64 / x86_64
    stack       QEMU and libvirt versions, machine types, CPU model expansion
    unavailable what could not be read: what, errno, error, detail

Register ids and values are hex strings ("0x6030000000140000"): readable, and exact in
every JSON reader.
"""
from __future__ import annotations

import os

from .errors import ProfileError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = "abiguard-host-profile"
VERSION = 1
#: a profile bigger than this is not one of ours
MAX_BYTES = 8 * 1024 * 1024
_UNDIGESTED = ("digest", "meta")


def _canonical(doc: dict[str, Any]) -> bytes:
    import json

    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def digest_of(doc: dict[str, Any]) -> str:
    import hashlib

    body = {k: v for k, v in doc.items() if k not in _UNDIGESTED}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def finalize(doc: dict[str, Any], probe_seconds: float, hostname: str) -> dict[str, Any]:
    import time

    from . import __version__

    doc = dict(doc, format=FORMAT, version=VERSION)
    doc["meta"] = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "probe_seconds": round(probe_seconds, 3), "hostname": hostname,
                   "abiguard_version": __version__}
    doc["digest"] = digest_of(doc)
    return doc


def render(doc: dict[str, Any]) -> str:
    """Deterministic text: sorted keys, one-space indent, trailing newline."""
    import json

    return json.dumps(doc, sort_keys=True, indent=1) + "\n"


def atomic_write(path: str, text: str | bytes, mode: int = 0o644) -> None:
    """Write a file so that a reader sees the old content or the new one, never a torn one."""
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".abiguard-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


HOOKVIEW_SUFFIX = ".hookview"


def _stat_key(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def save(doc: dict[str, Any], path: str) -> None:
    """The JSON profile, then its hook view: the same dict in marshal form, which the hook
    loads in well under a millisecond (json would pull in re, and the digest check a
    canonical re-encoding). The view records the inode, size and mtime of the JSON it
    was made from (every save replaces the JSON, so the inode changes); the hook uses it
    only while they still match, and otherwise reads and validates the JSON."""
    import marshal

    atomic_write(path, render(doc))
    atomic_write(path + HOOKVIEW_SUFFIX, marshal.dumps((_stat_key(path), doc)))


def load_for_hook(path: str) -> dict[str, Any]:
    """The profile at ``path``, from its hook view when that is current, else validated JSON."""
    import marshal

    try:
        with open(path + HOOKVIEW_SUFFIX, "rb") as f:
            key, doc = marshal.loads(f.read(MAX_BYTES + 1))
        if (tuple(key) == _stat_key(path) and isinstance(doc, dict)
                and doc.get("format") == FORMAT and doc.get("version") == VERSION):
            return doc
    except (OSError, EOFError, ValueError, TypeError):
        pass
    return load(path)


def _require(cond: bool, source: str, detail: str) -> None:
    if not cond:
        raise ProfileError(source, detail)


def validate(doc: Any, source: str, verified: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Check the members every consumer relies on; name the member that is wrong."""
    _require(isinstance(doc, dict), source, "a host profile must be a JSON object")
    _require(doc.get("format") == FORMAT, source,
             f"member 'format' must be {FORMAT!r}: is this a file written by 'abiguard probe'?")
    _require(doc.get("version") == VERSION, source,
             f"member 'version' is {doc.get('version')!r}; this abiguard reads version {VERSION}: "
             "probe the host again with this abiguard")
    _require(isinstance(doc.get("host"), dict) and isinstance(doc["host"].get("machine"), str), source,
             "member 'host' must be an object with a string 'machine'")
    _require(doc["host"]["machine"] in ("aarch64", "x86_64"), source,
             f"architecture {doc['host']['machine']!r}: abiguard knows aarch64 and x86_64")
    _require(doc.get("kvm") is None or isinstance(doc["kvm"], dict), source,
             "member 'kvm' must be a JSON object or null")
    _require(isinstance(doc.get("unavailable"), list), source, "member 'unavailable' must be a JSON array")
    digest = doc.get("digest")
    _require(isinstance(digest, str), source, "member 'digest' must be a string")
    if verified is not None:
        # a fleet has few kinds of host: content equal to a profile already verified under
        # this digest needs no second canonical encoding
        twin = verified.get(digest)
        if twin is not None and all(twin.get(k) == doc.get(k) for k in set(twin) | set(doc)
                                    if k not in _UNDIGESTED):
            return doc
    actual = digest_of(doc)
    _require(digest == actual, source,
             f"content does not match its digest ({digest} recorded, {actual} computed): "
             "the file was edited or damaged; probe the host again")
    if verified is not None:
        verified[digest] = doc
    return doc


def loads(text: str | bytes, source: str, verified: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    import json

    _require(len(text) <= MAX_BYTES, source, f"larger than {MAX_BYTES} bytes: not a host profile")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ProfileError(source, f"not valid JSON ({e})") from e
    return validate(doc, source, verified)


def load_labelled(paths: list[str], verified: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Profiles named by their paths (``_label``, shown in reports); ``verified`` as in :func:`validate`."""
    return [dict(load(path, verified), _label=path) for path in paths]


def load(path: str, verified: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ProfileError(path, f"cannot read: {e.strerror}") from e
    return loads(text, path, verified)
