"""sha256 without OpenSSL: hashlib would load libcrypto first, which costs the hook
milliseconds; CPython's builtin module does the same digest."""
from __future__ import annotations


def sha256(data: bytes) -> bytes:
    """The raw 32-byte digest."""
    try:
        from _sha2 import sha256 as _h  # type: ignore[import-not-found,unused-ignore]  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256 as _h  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:  # pragma: no cover - builds without the builtin module
            from hashlib import sha256 as _h
    digest: bytes = _h(data).digest()
    return digest


def sha256_hex(data: bytes) -> str:
    return sha256(data).hex()
