"""/etc/abiguard/abiguard.toml, as the hook (and the fleet, for its ``[fleet]`` table) reads
it; a missing file means the defaults.

The file is read whole: a setting past any cut-off would silently stop counting (a
"refuse" policy at the end of a long file read as "warn"), so a file larger than
:data:`MAX_BYTES` is refused, never truncated. Parsing needs tomllib, which imports re:
the result is cached in marshal form, keyed by the file's size, mtime and inode and
checksummed, so a damaged cache is never believed and never reaches marshal.

The ``[fleet]`` table says where this host publishes its profile (:mod:`abiguard.fleet`,
which the hook itself never imports): ``dir`` (the shared fleet directory), ``host`` (the
name this host publishes as; default its node name) and ``uri`` (the libvirt URI operators
reach it by). Every table and key is known or the file is refused: a misspelt ``unpinned``
would otherwise silently leave the policy at its default.
"""
from __future__ import annotations

import os

from .. import state

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import TypeAlias

    #: what the cache holds after its key: unpinned, allow_widening, the [fleet] settings
    Cached: TypeAlias = tuple[str, bool, str | None, str | None, str | None]

#: no abiguard configuration is this big; a bigger file is refused, not truncated
MAX_BYTES = 1024 * 1024
_CACHE_MAGIC = b"abiguard-config-2\n"
#: table -> the keys it may hold
KNOWN = {"policy": ("unpinned", "allow_widening"), "fleet": ("dir", "host", "uri")}


class Config:
    UNPINNED = ("allow", "warn", "refuse")

    __slots__ = ("unpinned", "allow_widening", "fleet_dir", "fleet_host", "fleet_uri")

    def __init__(self, unpinned: str = "warn", allow_widening: bool = False, fleet_dir: str | None = None,
                 fleet_host: str | None = None, fleet_uri: str | None = None) -> None:
        self.unpinned = unpinned
        self.allow_widening = allow_widening
        #: the fleet directory this host publishes its profile to (None: it does not)
        self.fleet_dir = fleet_dir
        self.fleet_host = fleet_host
        self.fleet_uri = fleet_uri

    @classmethod
    def load(cls, path: str | None = None) -> Config:
        """Parsed with tomllib when the file changed; a marshal cache keyed by the file's
        size and mtime spares every other hook run tomllib's import of re."""
        path = path or state.CONFIG
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return cls()
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cache = os.path.join(state.STATE, "config.cache")
        cached = _read_cache(cache, key)
        if cached is not None:
            return cls(*cached)
        config = cls.parse(path)
        try:
            import hashlib
            import marshal

            from .profile import atomic_write

            payload = marshal.dumps((key, config.unpinned, config.allow_widening, config.fleet_dir,
                                     config.fleet_host, config.fleet_uri))
            os.makedirs(state.STATE, 0o755, exist_ok=True)
            atomic_write(cache, _CACHE_MAGIC + hashlib.sha256(payload).digest() + payload, 0o600)
        except OSError:
            pass  # a read-only state directory only costs speed
        return config

    @classmethod
    def parse(cls, path: str) -> Config:
        from ..errors import InputError, printable

        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise InputError(path, f"larger than {MAX_BYTES} bytes: not an abiguard configuration; fix it")
        import tomllib

        try:
            doc = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise InputError(path, f"not valid TOML ({printable(e, 200)}): fix or remove the file") from None
        for table, value in doc.items():
            if table not in KNOWN:
                raise InputError(path, f"unknown table or setting {printable(table, 60)!r}: abiguard knows "
                                 + "; ".join(f"[{t}] {', '.join(keys)}" for t, keys in KNOWN.items()))
            if not isinstance(value, dict):
                raise InputError(path, f"[{table}] must be a table: fix the file")
            for key in value:
                if key not in KNOWN[table]:
                    raise InputError(path, f"unknown setting {printable(table + '.' + key, 80)!r}: [{table}] "
                                     f"takes {', '.join(KNOWN[table])}: fix the file")
        policy = doc.get("policy", {})
        unpinned = policy.get("unpinned", "warn")
        widening = policy.get("allow_widening", False)
        if unpinned not in cls.UNPINNED or not isinstance(widening, bool):
            raise InputError(path, "[policy] unpinned must be allow, warn or refuse; "
                             "allow_widening must be true or false")
        fleet = doc.get("fleet", {})
        from . import address

        fleet_dir, host, uri = fleet.get("dir"), fleet.get("host"), fleet.get("uri")
        if fleet_dir is not None and not address.is_path(fleet_dir):
            raise InputError(path, "[fleet] dir must be an absolute path of letters, digits and /._+- "
                             f"(not {printable(repr(fleet_dir), 60)}): fix the file")
        for key, value, problem in (("host", host, address.host_problem), ("uri", uri, address.uri_problem)):
            why = None if value is None else problem(value)
            if why is not None:
                raise InputError(path, f"[fleet] {key} {printable(repr(value), 80)} {why}: fix the file")
        return cls(unpinned, widening, fleet_dir, host, uri)


def _read_cache(path: str, key: tuple[int, int, int]) -> Cached | None:
    import hashlib
    import marshal

    try:
        with open(path, "rb") as f:
            data = f.read(16384)
        head = len(_CACHE_MAGIC)
        payload = data[head + 32:]
        if data[:head] != _CACHE_MAGIC or hashlib.sha256(payload).digest() != data[head:head + 32]:
            return None
        cached_key, unpinned, widening, fleet_dir, host, uri = marshal.loads(payload)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if (tuple(cached_key) != key or unpinned not in Config.UNPINNED or not isinstance(widening, bool)
            or not all(v is None or type(v) is str for v in (fleet_dir, host, uri))):
        return None
    return unpinned, widening, fleet_dir, host, uri
