"""sha256 without OpenSSL: hashlib would load libcrypto first, which costs the hook
milliseconds; CPython's builtin module does the same digest."""
from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# the builtin module's name: _sha256 until 3.11, _sha2 since 3.12 (asking for the other first
# would cost a failed import search on every hook run)
try:
    if sys.version_info >= (3, 12):
        from _sha2 import sha256 as _impl  # type: ignore[import-not-found,unused-ignore]
    else:
        from _sha256 import sha256 as _impl  # type: ignore[import-not-found,no-redef,unused-ignore]
except ImportError:  # pragma: no cover - builds without the builtin module
    from hashlib import sha256 as _impl

_sha256: Any = _impl  # annotations are not evaluated: typing stays unimported (it costs ~10 ms)


def sha256(data: bytes) -> bytes:
    """The raw 32-byte digest."""
    digest: bytes = _sha256(data).digest()
    return digest


def sha256_hex(data: bytes) -> str:
    hexdigest: str = _sha256(data).hexdigest()
    return hexdigest
