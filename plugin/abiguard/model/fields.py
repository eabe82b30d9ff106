"""Checks for hostile input at the boundary: every member of a profile, contract, stamp or
hook view is read through one of these, which names the source and the member on failure
(``abiguard: h1.json: member 'kvm.caps' must be a JSON object``).

Standard library only and no ``re``: the hook imports this, and ``re`` (with ``enum``)
would cost more than its whole time budget.
"""
from __future__ import annotations

from ..errors import InputError, printable

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

_HEXDIGITS = frozenset("0123456789abcdef")
#: characters a label may not hold: markup, quotes, escapes
_MARKUP = frozenset("<>&\"'\\`")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-~")
#: sha256 digests are written "sha256:" + 64 lowercase hex digits
DIGEST_PREFIX = "sha256:"


def is_hex(v: object, max_digits: int = 32) -> bool:
    """A canonical hex string as abiguard writes it: ``0x`` + lowercase digits, no
    leading zeros (``0x0`` for zero), so one value has exactly one spelling."""
    if type(v) is not str or not 2 < len(v) <= max_digits + 2 or not v.startswith("0x") or not v.isascii():
        return False
    try:
        return f"{int(v, 16):#x}" == v   # int() alone would take "0X1F", " 1f", "1_f"
    except ValueError:
        return False


def hex_values(vs: list[Any], max_digits: int = 32) -> list[int] | None:
    """Many :func:`is_hex` strings at once (an arm64 contract has ~100): their values, or
    None if any is not canonical. The checks run in C over the whole list, not per item."""
    if not set(map(type, vs)) <= {str}:
        return None
    try:
        ints = [int(v, 16) for v in vs]
    except ValueError:
        return None
    # hex() spells each value the one canonical way: equal lists mean every string was
    # canonical (no 0X, no blanks, no underscores, no non-ASCII digits); minus signs aside
    if ints and (min(ints) < 0 or max(map(len, vs)) > max_digits + 2):
        return None
    return ints if list(map(hex, ints)) == vs else None


def is_name(v: object, max_len: int = 64) -> bool:
    """A name such as a machine type, CPU model, kernel release or feature."""
    return (isinstance(v, str) and 0 < len(v) <= max_len and v[0].isalnum() and v.isascii()
            and _NAME_CHARS.issuperset(v))


def is_label(v: object, max_len: int = 64) -> bool:
    """Printable ASCII a report may show as it is (a register name such as
    ``DEMUX_CCSIDR[0]``): no markup, quote or escape characters."""
    return (isinstance(v, str) and 0 < len(v) <= max_len and v.isascii() and v.isprintable()
            and _MARKUP.isdisjoint(v))


def is_digest(v: object) -> bool:
    return (isinstance(v, str) and len(v) == 71 and v.startswith(DIGEST_PREFIX)
            and _HEXDIGITS.issuperset(v[7:]))


def hex_of(v: int) -> str:
    return f"{v:#x}"


class Reader:
    """Reads one document: each method checks one member and names it on failure.

    :param source: where the document came from (a path, ``contract of 'vm'``)
    :param error: the :class:`~abiguard.errors.InputError` subclass to raise
    """

    __slots__ = ("source", "error")

    def __init__(self, source: str, error: type[InputError] = InputError) -> None:
        self.source = source
        self.error = error

    def fail(self, detail: str) -> InputError:
        return self.error(self.source, detail)

    def need(self, cond: bool, detail: str) -> None:
        if not cond:
            raise self.fail(detail)

    def obj(self, v: object, where: str, max_len: int = 1 << 16) -> dict[str, Any]:
        self.need(isinstance(v, dict) and len(v) <= max_len, f"member '{where}' must be a JSON object"
                  + (f" of at most {max_len} members" if isinstance(v, dict) else ""))
        assert isinstance(v, dict)
        return v

    def opt_obj(self, v: object, where: str, max_len: int = 1 << 16) -> dict[str, Any] | None:
        return None if v is None else self.obj(v, where, max_len)

    def lst(self, v: object, where: str, max_len: int = 1 << 16) -> list[Any]:
        self.need(isinstance(v, list) and len(v) <= max_len, f"member '{where}' must be a JSON array"
                  + (f" of at most {max_len} items" if isinstance(v, list) else ""))
        assert isinstance(v, list)
        return v

    def string(self, v: object, where: str, max_len: int = 4096) -> str:
        self.need(isinstance(v, str) and len(v) <= max_len,
                  f"member '{where}' must be a string of at most {max_len} characters")
        assert isinstance(v, str)
        return v

    def opt_string(self, v: object, where: str, max_len: int = 4096) -> str | None:
        return None if v is None else self.string(v, where, max_len)

    def name(self, v: object, where: str, what: str, max_len: int = 64) -> str:
        self.need(is_name(v, max_len), f"member '{where}' must be {what}")
        assert isinstance(v, str)
        return v

    def label(self, v: object, where: str, what: str, max_len: int = 64) -> str:
        self.need(is_label(v, max_len), f"member '{where}' must be {what}")
        assert isinstance(v, str)
        return v

    def opt_name(self, v: object, where: str, what: str, max_len: int = 64) -> str | None:
        return None if v is None else self.name(v, where, what, max_len)

    def integer(self, v: object, where: str, low: int = -(1 << 63), high: int = (1 << 64) - 1) -> int:
        self.need(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
                  f"member '{where}' must be an integer from {low} to {high}")
        assert isinstance(v, int)
        return v

    def boolean(self, v: object, where: str) -> bool:
        self.need(v is True or v is False, f"member '{where}' must be true or false")
        return bool(v)

    def hexint(self, v: object, where: str, max_digits: int = 16) -> int:
        self.need(is_hex(v, max_digits), f"member '{where}' must be a hex string such as 0x1f "
                  f"(lowercase, no leading zeros, at most {max_digits} digits)")
        assert isinstance(v, str)
        return int(v, 16)

    def opt_hexint(self, v: object, where: str, max_digits: int = 16) -> int | None:
        return None if v is None else self.hexint(v, where, max_digits)

    def digest(self, v: object, where: str) -> str:
        self.need(is_digest(v), f"member '{where}' must be a sha256 digest (sha256:<64 hex digits>)")
        assert isinstance(v, str)
        return v

    def one_of(self, v: object, where: str, choices: tuple[str, ...]) -> str:
        self.need(isinstance(v, str) and v in choices,
                  f"member '{where}' must be one of {', '.join(choices)}, not {printable(v, 40)}")
        assert isinstance(v, str)
        return v
