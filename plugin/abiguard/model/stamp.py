"""The hop stamp: what the hook writes into a VM's ``<metadata>`` on every allowed hop.

It names the host the VM now runs on (its profile digest, kernel, QEMU), the contract it
was judged against, a nonce that ties the hop to the ``prepare`` that follows, and, on
arm64, the register stream the VM carries from now on: QEMU migrates the register list of
the host it runs on, not of the host it was booted on, so the next hop is judged with
this stream.
"""
from __future__ import annotations

from ..xml.names import STAMP_NS, STAMP_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..xml.domain import Element

#: attributes in the order they are written
ATTRS = ("host", "kernel", "profile", "contract", "nonce", "at", "qemu")
MAX_STREAM = 4096


class HopStamp:
    __slots__ = ("attrs", "stream")

    def __init__(self, attrs: dict[str, str], stream: tuple[int, ...] | None) -> None:
        #: attribute -> value, in :data:`ATTRS` order, only those present
        self.attrs = attrs
        self.stream = stream

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
        return (head + f"><{p}:stream>" + " ".join(f"{r:#x}" for r in self.stream)
                + f"</{p}:stream></{p}:stamp>").encode()

    @classmethod
    def from_element(cls, el: Element) -> HopStamp:
        """The stamp as the hook's reader found it; ValueError when its stream is not a
        list of arm64 register ids (the caller decides what that means)."""
        from ..arch.arm64.regs import is_reg_id
        from .fields import is_hex

        attrs = {k: v for k, v in el.attrib.items() if k in ATTRS}
        stream_el = el.find(f"{{{STAMP_NS}}}stream")
        stream = None
        if stream_el is not None:
            words = stream_el.text.split()
            if len(words) > MAX_STREAM or not all(is_hex(w, 16) and is_reg_id(int(w, 16)) for w in words):
                raise ValueError("invalid register stream")
            stream = tuple(int(w, 16) for w in words)
        return cls(attrs, stream)


def safe_attr(value: str) -> bool:
    return value.isprintable() and not any(c in value for c in '<>&"')
