"""What realises an arm64 contract in a libvirt definition (lxml edits for ``abiguard
pin``): PMU and SVE where libvirt has elements for them, and the preload library with
this host's pins as ``<qemu:commandline>`` environment."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import UsageError
from ...model.names import QEMU_NS

if TYPE_CHECKING:
    from ...model.contract import Contract
    from ...model.profile import Profile


def edit(root: Any, sealed: Contract, notes: list[str], cannot: list[str], profile: Profile | None = None) -> None:
    from lxml import etree

    from ...errors import EnforceError
    from ...model.pins import commandline_xml, describe
    from ...preload import ENV_PINS, LIBRARY_NAME, LIBRARY_PATH
    from .body import Arm64Body

    body = sealed.body
    assert isinstance(body, Arm64Body)
    features = set(body.features())
    feats = root.find("features")
    if feats is None:
        feats = etree.SubElement(root, "features")
    pmu = feats.find("pmu")
    if pmu is None:
        pmu = etree.SubElement(feats, "pmu")
    pmu.set("state", "on" if "PMU_V3" in features else "off")
    notes.append(f"PMU: {pmu.get('state')}")
    cpu = root.find("cpu")
    if cpu is None:
        cpu = etree.SubElement(root, "cpu", mode="host-passthrough")
    for f in cpu.findall("feature"):
        if f.get("name", "").startswith("sve"):
            cpu.remove(f)
    etree.SubElement(cpu, "feature", policy="require" if "SVE" in features else "disable", name="sve")
    notes.append(f"SVE: {'on' if 'SVE' in features else 'off'}")
    if "PTRAUTH_ADDRESS" not in features:
        cannot.append("pointer authentication off: libvirt has no element for QEMU's pauth property")
    if profile is None:
        cannot.append(f"{len(body.values)} firmware/ID register values: no host profile to plan "
                      "their pins with")
        return
    for env in root.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}env"):
        if env.get("name") == "LD_PRELOAD" and env.get("value") != LIBRARY_PATH:
            raise UsageError(f"the domain sets LD_PRELOAD={env.get('value')} itself: abiguard cannot add "
                             f"{LIBRARY_NAME}")
        if env.get("name") in ("LD_PRELOAD", ENV_PINS):
            env.getparent().remove(env)
    from .pins import for_start

    try:
        pins = for_start(sealed, profile)
    except EnforceError as e:
        cannot.extend(e.problems)
        return
    notes.extend(describe(pins))
    text = commandline_xml(pins)
    if text:
        cmdline = root.find(f"{{{QEMU_NS}}}commandline")
        if cmdline is None:
            cmdline = etree.SubElement(root, f"{{{QEMU_NS}}}commandline", nsmap={"qemu": QEMU_NS})
        for env in etree.fromstring(text.encode()):
            cmdline.append(env)
