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
    cpu = root.find("cpu")
    sve_now = _sve_defined(cpu)
    want = {"PMU": "on" if "PMU_V3" in features else "off", "SVE": "on" if "SVE" in features else "off"}
    now = {"PMU": pmu.get("state") if pmu is not None else None, "SVE": sve_now}
    refuse_other_config(body.config, now, want)
    if pmu is None:
        pmu = etree.SubElement(feats, "pmu")
    pmu.set("state", want["PMU"])
    if cpu is None:
        cpu = etree.SubElement(root, "cpu", mode="host-passthrough")
    for f in cpu.findall("feature"):
        if f.get("name", "").startswith("sve"):
            cpu.remove(f)
    etree.SubElement(cpu, "feature", policy="require" if "SVE" in features else "disable", name="sve")
    for what in ("PMU", "SVE"):
        notes.append(f"{what}: {want[what]} (as the domain defines it)" if now[what] == want[what] else
                     f"{what}: not defined (QEMU's default) -> {want[what]}")
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
    from .judge import section_of

    own = section_of(profile)
    probed = own.usable(body.config) if own is not None else None
    defaults = (probed.registers if probed is not None else None) or {}
    notes.extend(before_after(pins, describe(pins), defaults))
    text = commandline_xml(pins)
    if text:
        cmdline = root.find(f"{{{QEMU_NS}}}commandline")
        if cmdline is None:
            cmdline = etree.SubElement(root, f"{{{QEMU_NS}}}commandline", nsmap={"qemu": QEMU_NS})
        for env in etree.fromstring(text.encode()):
            cmdline.append(env)


#: a domain definition's SVE feature policies, as on or off
_SVE_POLICY = {"require": "on", "force": "on", "disable": "off", "forbid": "off"}


def _sve_defined(cpu: Any) -> str | None:
    """SVE as the domain defines it (``<feature name='sve'>``), None where it leaves it to QEMU."""
    if cpu is None:
        return None
    for f in cpu.findall("feature"):
        if f.get("name") == "sve":
            return _SVE_POLICY.get(f.get("policy", "require"))
    return None


def refuse_other_config(config: str, now: dict[str, str | None], want: dict[str, str]) -> None:
    """``pin`` never changes what the domain itself defines: a PMU or SVE the domain sets
    otherwise than the contract's vCPU configuration is a refusal naming the configuration
    that fits the domain (``abiguard baseline --config``)."""
    from ...errors import Refusal
    from . import regs

    differ = [k for k in want if now[k] is not None and now[k] != want[k]]
    if not differ:
        return
    groups = {"PMU": "pmu", "SVE": "sve"}
    have = [g for g in config.split("+")[1:] if g not in [groups[k] for k in differ]]
    have += [groups[k] for k in differ if now[k] == "on"]
    fit = "+".join(["psci"] + [g for g in regs.FEATURE_GROUPS if g in have])
    raise Refusal("abiguard: not pinning: the domain defines "
                  + ", ".join(f"{k} {now[k]}" for k in differ)
                  + f" and the contract's vCPU configuration {config} has "
                  + ", ".join(f"{k} {want[k]}" for k in differ)
                  + f"; pin never changes what the domain defines: pin it to a baseline of its own "
                  f"configuration (abiguard baseline --config {fit} PROFILE...), or change the domain first")


def before_after(pins: list[Any], lines: list[str], defaults: dict[int, int | None]) -> list[str]:
    """Each pin's line with what the host would give the VM without it: ``default -> value``."""
    out = []
    for p, line in zip(pins, lines):
        before = defaults.get(p.id) if getattr(p, "id", None) is not None else None
        out.append(line if before is None or p.how == "impl-cpu" else
                   line.replace(f"= {p.value:#x}", f"{before:#x} -> {p.value:#x}", 1))
    return out
