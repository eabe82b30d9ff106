"""/etc/abiguard/abiguard.toml, as the hook reads it; a missing file means the defaults.

The file is read whole: a setting past any cut-off would silently stop counting (a
"refuse" policy at the end of a long file read as "warn"), so a file larger than
:data:`MAX_BYTES` is refused, never truncated. Parsing needs tomllib, which imports re:
the result is cached in marshal form, keyed by the file's size, mtime and inode and
checksummed, so a damaged cache is never believed and never reaches marshal.
"""
from __future__ import annotations

from .. import _fs as os  # posix calls: the hook's path never imports os
from . import state

#: no abiguard configuration is this big; a bigger file is refused, not truncated
MAX_BYTES = 1024 * 1024
_CACHE_MAGIC = b"abiguard-config-1\n"


class Config:
    UNPINNED = ("allow", "warn", "refuse")

    __slots__ = ("unpinned", "allow_widening")

    def __init__(self, unpinned: str = "warn", allow_widening: bool = False) -> None:
        self.unpinned = unpinned
        self.allow_widening = allow_widening

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
        cache = os.join(state.STATE, "config.cache")
        cached = _read_cache(cache, key)
        if cached is not None:
            return cls(*cached)
        config = cls.parse(path)
        try:
            import marshal

            from .._sha import sha256
            from ..model.profile import atomic_write

            payload = marshal.dumps((key, config.unpinned, config.allow_widening))
            os.makedirs(state.STATE, 0o755)
            atomic_write(cache, _CACHE_MAGIC + sha256(payload) + payload, 0o600)
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
        policy = doc.get("policy", {})
        if not isinstance(policy, dict):
            raise InputError(path, "[policy] must be a table: fix the file")
        unknown = sorted(set(policy) - {"unpinned", "allow_widening"}) + sorted(set(doc) - {"policy"})
        if unknown:
            raise InputError(path, f"unknown setting(s) {printable(unknown, 120)}: "
                             "abiguard knows [policy] unpinned and allow_widening")
        unpinned = policy.get("unpinned", "warn")
        widening = policy.get("allow_widening", False)
        if unpinned not in cls.UNPINNED or not isinstance(widening, bool):
            raise InputError(path, "[policy] unpinned must be allow, warn or refuse; "
                             "allow_widening must be true or false")
        return cls(unpinned, widening)


def _read_cache(path: str, key: tuple[int, int, int]) -> tuple[str, bool] | None:
    import marshal

    from .._sha import sha256

    try:
        with open(path, "rb") as f:
            data = f.read(4096)
        head = len(_CACHE_MAGIC)
        payload = data[head + 32:]
        if data[:head] != _CACHE_MAGIC or sha256(payload) != data[head:head + 32]:
            return None
        cached_key, unpinned, widening = marshal.loads(payload)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if tuple(cached_key) != key or unpinned not in Config.UNPINNED or not isinstance(widening, bool):
        return None
    return unpinned, widening
