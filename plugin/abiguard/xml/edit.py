"""The definition edits ``abiguard pin`` makes, with lxml: the contract into
``<metadata>`` and the configuration that realises it where libvirt and QEMU have a knob
(machine type; x86 CPU model and features; arm64 PMU and SVE; the preload library's
``<qemu:commandline>``), and a plain list of what it cannot pin with this stack.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InputError, UsageError

if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..model.profile import Profile


def parser() -> Any:
    """lxml's parser for libvirt's XML: no entities, no network, no huge trees."""
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=False)


def machine_family(name: str) -> str:
    """pc-q35-7.2 -> pc-q35, virt-7.2 -> virt; an alias stands for its family."""
    head, _, tail = name.rpartition("-")
    family = head if tail.replace(".", "").isdigit() and head else name
    return {"pc": "pc-i440fx", "q35": "pc-q35"}.get(family, family)


def _set_machine(root: Any, machine: str | None, notes: list[str]) -> None:
    if not machine:
        notes.append("machine type: the contract names none; left as it is")
        return
    os_type = root.find("os/type")
    if os_type is None:
        raise InputError("domain XML", "no <os><type> element")
    current = os_type.get("machine")
    if current and machine_family(current) != machine_family(machine):
        raise UsageError(f"the domain runs machine type {current}, the contract pins {machine}: another "
                         f"chipset is other virtual hardware; define the VM on {machine_family(machine)} "
                         "first, then pin it")
    if current != machine:
        notes.append(f"machine type: {os_type.get('machine')} -> {machine}")
        os_type.set("machine", machine)


def apply(xml: str, sealed: Contract, profile: Profile | None = None, nonce: str | None = None,
          at: str | None = None) -> tuple[str, list[str], list[str]]:
    """Return the definition with the contract, its boot stamp (:meth:`HopStamp.boot
    <abiguard.model.stamp.HopStamp.boot>`) and what realises it written in."""
    from lxml import etree

    from .contract import to_xml_text

    root = etree.fromstring(xml.encode(), parser())
    notes: list[str] = []
    cannot: list[str] = []
    arch = root.find("os/type").get("arch") if root.find("os/type") is not None else None
    if arch and arch != sealed.arch:
        raise UsageError(f"the domain is {arch}, the contract is for {sealed.arch}")
    _set_machine(root, sealed.machine_type, notes)
    from ..arch import get

    get(sealed.arch).edit_definition(root, sealed, notes, cannot, profile)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = etree.Element("metadata")
        root.insert(3, metadata)
    for child in list(metadata):
        if isinstance(child.tag, str) and child.tag.startswith("{urn:abiguard:"):
            metadata.remove(child)
    metadata.append(etree.fromstring(to_xml_text(sealed).encode(), parser()))
    stream = get(sealed.arch).boot_stream(sealed, profile) if profile is not None else None
    metadata.append(etree.fromstring(boot_stamp(sealed, nonce, at, stream), parser()))
    return etree.tostring(root, encoding="unicode"), notes, cannot


def boot_stamp(sealed: Contract, nonce: str | None = None, at: str | None = None,
               stream: tuple[int, ...] | None = None) -> bytes:
    """The stamp ``pin`` writes beside the contract: the stream a VM started under abiguard
    carries (``stream``: the pinning host's, when it knows it)."""
    import os
    import time

    from ..model.stamp import HopStamp

    return HopStamp.boot(sealed, nonce or os.urandom(8).hex(),
                         at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), stream).to_xml()
