"""The hop stamp: what abiguard writes into a VM's ``<metadata>`` beside its contract.

``abiguard pin`` writes the first one (a *boot* stamp); the hook replaces it on every
allowed hop. It names the contract it belongs to, the host the VM now runs on (profile
digest, kernel, QEMU; absent in a boot stamp), a nonce that ties a hop to the ``prepare``
that follows it, and, on arm64, the register stream the VM carries from now on: QEMU
migrates the register list of the host it runs on, not of the host it was booted on, so
the next hop is judged with this stream. A checksum binds the stream to the contract, so
a stream copied or edited by hand is noticed.
"""
from __future__ import annotations

from .names import STAMP_NS, STAMP_PREFIX

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ..xml.domain import Element
    from .contract import Contract

#: attributes in the order they are written
ATTRS = ("host", "kernel", "profile", "contract", "nonce", "at", "qemu", "boot", "stream-sum", "abi-changed")
#: an unpinned VM's record of the move that changed its guest ABI (abiguard.hook.seen):
#: information for status, never a reason to allow
MAX_STREAM = 4096
#: what a stamp attribute value may not hold (it is written between double quotes)
_UNSAFE = frozenset('<>&"')


#: (contract digest, stream) -> checksum, for the last few: a hop checks the incoming
#: stamp's and writes its own, often over the same stream
_SUMS: dict[tuple[str, tuple[int, ...]], str] = {}


def stream_sum(contract_digest: str, stream: tuple[int, ...]) -> str:
    """The checksum that binds a stream to its contract (first 32 hex digits of sha256)."""
    import hashlib

    key = (contract_digest, stream)
    got = _SUMS.get(key)
    if got is None:
        if len(_SUMS) >= 4:
            _SUMS.clear()
        text = contract_digest + " " + " ".join(map(hex, stream))
        got = _SUMS[key] = hashlib.sha256(text.encode()).hexdigest()[:32]
    return got


class HopStamp:
    __slots__ = ("attrs", "stream")

    def __init__(self, attrs: dict[str, str], stream: tuple[int, ...] | None) -> None:
        #: attribute -> value, in :data:`ATTRS` order, only those present
        self.attrs = attrs
        self.stream = stream

    @classmethod
    def made(cls, attrs: dict[str, str], contract_digest: str, stream: tuple[int, ...] | None) -> HopStamp:
        """A new stamp for a contract: its attributes, its stream and the stream's checksum."""
        attrs = dict(attrs, contract=contract_digest)
        if stream is not None:
            attrs["stream-sum"] = stream_sum(contract_digest, stream)
        return cls({k: attrs[k] for k in ATTRS if k in attrs}, stream)

    @classmethod
    def boot(cls, contract: Contract, nonce: str, at: str, stream: tuple[int, ...] | None = None) -> HopStamp:
        """What ``abiguard pin`` writes: the stream a VM started under abiguard carries -- its
        contract's, or ``stream`` (the pinning host's :meth:`boot_stream
        <abiguard.arch.base.Arch.boot_stream>`); ``prepare`` refuses a start where the host's
        list differs from the stamp's."""
        from .arches import get

        if not get(contract.arch).carries_register_stream:
            stream = None
        elif stream is None:
            stream = getattr(contract.body, "stream", None)
        return cls.made({"nonce": nonce, "at": at, "boot": "pin"}, contract.digest, stream)

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)

    def to_xml(self) -> bytes:
        """The stamp element; attribute values are checked, never escaped into meaning."""
        for k, v in self.attrs.items():
            if not safe_attr(v):
                raise ValueError(f"unsafe stamp attribute {k}={v!r}")
        p = STAMP_PREFIX
        head = f'<{p}:stamp xmlns:{p}="{STAMP_NS}"' + "".join(f' {k}="{v}"' for k, v in self.attrs.items())
        if self.stream is None:
            return (head + "/>").encode()
        return (head + f"><{p}:stream>" + " ".join(map(hex, self.stream))
                + f"</{p}:stream></{p}:stamp>").encode()

    def problem(self, contract: Contract, needs_stream: bool) -> str | None:
        """Why this stamp cannot be trusted for this contract (None: it can)."""
        from ..errors import printable

        if self.get("contract") != contract.digest:
            return f"its hop stamp belongs to another contract ({printable(self.get('contract'), 80)})"
        if self.stream is not None and self.get("stream-sum") != stream_sum(contract.digest, self.stream):
            return "its hop stamp's register stream does not match its checksum (edited or copied by hand)"
        if needs_stream and self.stream is None:
            return "its hop stamp lists no register stream"
        return self.claims_less(contract)

    def claims_less(self, contract: Contract) -> str | None:
        """Why this stamp claims less than its contract (None: it does not). A stamp's claims
        may only add checks: the stream a VM carries is judged register by register, so a
        stream without some of the contract's registers would skip their checks (and with
        ``allow_widening`` their values). Every host of a contract lists its whole stream
        (a fleet contract's is the hosts' common one), so an honest hop never drops any."""
        own = getattr(contract.body, "stream", None)
        if self.stream is None or not own:
            return None
        have = set(self.stream)
        lacking = [r for r in own if r not in have]
        if not lacking:
            return None
        return (f"its hop stamp claims fewer registers than its contract ({len(self.stream)} in its stream, "
                f"{len(lacking)} of the contract's missing, first {lacking[0]:#x}): a stamp may only add "
                "checks")

    @classmethod
    def from_element(cls, el: Element) -> HopStamp:
        """The stamp as the hook's reader found it; ValueError when its stream is not a
        list of arm64 register ids (the caller decides what that means)."""
        attrs = {k: v for k, v in el.attrib.items() if k in ATTRS}
        stream_el = el.find(f"{{{STAMP_NS}}}stream")
        stream = None
        if stream_el is not None:
            from ..uapi.arm64 import parse_ids  # only arm64 stamps carry a stream

            words = stream_el.text.split()
            ids, bad = parse_ids(words)
            if len(words) > MAX_STREAM or bad:
                raise ValueError("invalid register stream")
            stream = tuple(ids)
        return cls(attrs, stream)


def safe_attr(value: str) -> bool:
    return value.isprintable() and _UNSAFE.isdisjoint(value)
