"""What schedulers call a contract: an OpenStack Placement trait and a Kubernetes node label.

Both are named by the contract's *id*: the first 32 hex digits (128 bits) of its digest.
The whole digest does not fit a Kubernetes label name (at most 63 characters, and
``contract-`` takes 9), and 128 bits keep two contracts of any fleet apart.

- Placement: ``CUSTOM_ABIGUARD_<ID>``, uppercase. Placement takes a custom trait only
  when it matches ``^CUSTOM_[A-Z0-9_]+$`` and is at most 255 characters
  (placement/schemas/trait.py); a flavor asks for it with
  ``trait:CUSTOM_ABIGUARD_<ID>=required``.
- Kubernetes: ``abiguard.io/contract-<id>: "true"``, lowercase; a label name is at most
  63 characters of ``[a-z0-9A-Z._-]``, starting and ending with a letter or digit, and a
  node name a DNS-1123 subdomain (lowercase, at most 253 characters).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model.profile import Profile

ID_DIGITS = 32
TRAIT_PREFIX = "CUSTOM_ABIGUARD_"
LABEL_PREFIX = "abiguard.io/contract-"
MAX_TRAIT = 255
_TRAIT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_NODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


def contract_id(digest: str) -> str:
    """``sha256:0a1b...`` -> ``0a1b...`` (32 hex digits)."""
    if not digest.startswith("sha256:") or len(digest) < 7 + ID_DIGITS:
        raise ValueError(f"not a contract digest: {digest[:80]!r}")
    return digest[7:7 + ID_DIGITS]


def trait(digest: str) -> str:
    name = TRAIT_PREFIX + contract_id(digest).upper()
    assert is_custom_trait(name), name
    return name


def is_custom_trait(name: object) -> bool:
    """A trait name Placement accepts as custom."""
    return (isinstance(name, str) and name.startswith("CUSTOM_") and len(name) <= MAX_TRAIT
            and len(name) > len("CUSTOM_") and _TRAIT_CHARS.issuperset(name))


def is_ours(trait_name: str) -> bool:
    """A trait abiguard manages (and may therefore remove)."""
    return trait_name.startswith(TRAIT_PREFIX)


def label(digest: str) -> str:
    return LABEL_PREFIX + contract_id(digest)


def is_node_name(name: object) -> bool:
    """A Kubernetes node name: a DNS-1123 subdomain."""
    if not isinstance(name, str) or not 0 < len(name) <= 253 or not _NODE_CHARS.issuperset(name):
        return False
    return all(part and part[0].isalnum() and part[-1].isalnum() and len(part) <= 63 for part in name.split("."))


def stack(p: Profile) -> str:
    """What a reader tells hosts apart by: the kernel, and QEMU and libvirt where the
    profile names them (an x86 fleet's hosts often share a kernel and differ in QEMU)."""
    out = p.kernel_release
    for what, version in (("QEMU", p.qemu_version()), ("libvirt", p.libvirt_version())):
        if version is not None:
            out += f", {what} {'.'.join(map(str, version))}"
    return out
