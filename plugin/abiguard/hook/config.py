"""/etc/abiguard/abiguard.toml, as the hook reads it; a missing file means the defaults."""
from __future__ import annotations

import os

from . import state


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
        import marshal

        path = path or state.CONFIG
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return cls()
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cache = os.path.join(state.STATE, "config.cache")
        try:
            with open(cache, "rb") as f:
                cached_key, unpinned, widening = marshal.loads(f.read(4096))
            if tuple(cached_key) == key:
                return cls(unpinned, widening)
        except (OSError, EOFError, ValueError, TypeError):
            pass
        config = cls.parse(path)
        try:
            from ..model.profile import atomic_write
            os.makedirs(state.STATE, mode=0o755, exist_ok=True)
            atomic_write(cache, marshal.dumps((key, config.unpinned, config.allow_widening)), 0o600)
        except OSError:
            pass  # a read-only state directory only costs speed
        return config

    @classmethod
    def parse(cls, path: str) -> Config:
        with open(path, "rb") as f:
            raw = f.read(65536)
        import tomllib

        from ..errors import InputError

        try:
            doc = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InputError(path, f"not valid TOML ({e}): fix or remove the file") from None
        policy = doc.get("policy", {})
        unknown = set(policy) - {"unpinned", "allow_widening"}
        if unknown or set(doc) - {"policy"}:
            raise InputError(path, f"unknown setting(s) {sorted(unknown | (set(doc) - {'policy'}))}: "
                             "abiguard knows [policy] unpinned and allow_widening")
        unpinned = policy.get("unpinned", "warn")
        widening = policy.get("allow_widening", False)
        if unpinned not in cls.UNPINNED or not isinstance(widening, bool):
            raise InputError(path, "[policy] unpinned must be allow, warn or refuse; "
                             "allow_widening must be true or false")
        return cls(unpinned, widening)
