"""``abiguard pin`` and ``abiguard status``: contracts in persistent domain definitions.

Talks to libvirt through libvirt-python and edits the definition with lxml. ``pin`` writes
the contract into ``<metadata>`` and the configuration that realises it where libvirt and
QEMU have a knob (machine type; x86 CPU model and features; arm64 PMU and SVE), and says
plainly what it cannot pin with this stack.
"""
from __future__ import annotations

from typing import Any

from . import contract as contract_mod
from .errors import InputError, UsageError

PARSER_OPTS = dict(resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=False)


def _parser():  # type: ignore[no-untyped-def]
    from lxml import etree

    return etree.XMLParser(**PARSER_OPTS)


def _connect(uri: str | None, readonly: bool = False):  # type: ignore[no-untyped-def]
    import libvirt

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise UsageError(f"cannot connect to libvirt at {uri or 'the default URI'}: {e}") from None


def x86_body_from_domain(root: Any) -> dict[str, Any] | None:
    """The CPU a domain definition asks for, as an x86 contract body (custom mode only)."""
    cpu = root.find("cpu")
    if cpu is None or cpu.get("mode", "custom") != "custom" or cpu.findtext("model") is None:
        return None
    return {"cpu_model": cpu.findtext("model").strip(), "pv_features": None,
            "features": {f.get("name"): f.get("policy", "require") for f in cpu.findall("feature")}}


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


def _set_x86_cpu(root: Any, body: dict[str, Any], notes: list[str]) -> None:
    from lxml import etree

    if body.get("cpu_model") is None:
        notes.append("x86 CPU: the contract names features without a model; CPU left as it is")
        return
    old = root.find("cpu")
    cpu = etree.Element("cpu", mode="custom", match="exact", check="partial")
    if old is not None:
        for keep in ("topology", "numa", "cache"):
            for el in old.findall(keep):
                cpu.append(el)
        root.replace(old, cpu)
    else:
        root.append(cpu)
    model = etree.SubElement(cpu, "model", fallback="forbid")
    model.text = body["cpu_model"]
    for name, policy in body["features"].items():
        etree.SubElement(cpu, "feature", policy=policy, name=name)
    notes.append(f"x86 CPU: custom {body['cpu_model']} with {len(body['features'])} explicit features, "
                 "check=partial")


def _set_arm64(root: Any, body: dict[str, Any], notes: list[str], cannot: list[str],
               profile: dict[str, Any] | None = None) -> None:
    from lxml import etree

    from .arch import arm64

    features = set(arm64.config_features(body["config"]))
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
        cannot.append(f"{len(body['values'])} firmware/ID register values: no host profile to plan "
                      "their pins with")
        return
    from . import enforce

    for env in root.findall(f"{{{enforce.QEMU_XMLNS}}}commandline/{{{enforce.QEMU_XMLNS}}}env"):
        if env.get("name") == "LD_PRELOAD" and env.get("value") != enforce.LIBRARY_PATH:
            raise UsageError(f"the domain sets LD_PRELOAD={env.get('value')} itself: abiguard cannot add "
                             f"{enforce.LIBRARY_NAME}")
        if env.get("name") in ("LD_PRELOAD", enforce.ENV_PINS):
            env.getparent().remove(env)
    try:
        pins = enforce.plan({"aarch64": body}, profile)
    except enforce.EnforceError as e:
        cannot.extend(e.problems)
        return
    notes.extend(enforce.describe(pins))
    text = enforce.commandline_xml(pins)
    if text:
        cmdline = root.find(f"{{{enforce.QEMU_XMLNS}}}commandline")
        if cmdline is None:
            cmdline = etree.SubElement(root, f"{{{enforce.QEMU_XMLNS}}}commandline",
                                       nsmap={"qemu": enforce.QEMU_XMLNS})
        for env in etree.fromstring(text.encode()):
            cmdline.append(env)


def apply(xml: str, sealed: dict[str, Any], profile: dict[str, Any] | None = None
          ) -> tuple[str, list[str], list[str]]:
    """Return the definition with the contract (and what realises it) written in."""
    from lxml import etree

    root = etree.fromstring(xml.encode(), _parser())
    notes: list[str] = []
    cannot: list[str] = []
    arch = root.find("os/type").get("arch") if root.find("os/type") is not None else None
    if arch and arch != sealed["arch"]:
        raise UsageError(f"the domain is {arch}, the contract is for {sealed['arch']}")
    _set_machine(root, sealed.get("machine_type"), notes)
    if sealed["arch"] == "x86_64":
        _set_x86_cpu(root, sealed["x86_64"], notes)
    else:
        _set_arm64(root, sealed["aarch64"], notes, cannot, profile)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = etree.Element("metadata")
        root.insert(3, metadata)
    for child in list(metadata):
        if isinstance(child.tag, str) and child.tag.startswith("{urn:abiguard:"):
            metadata.remove(child)
    metadata.append(etree.fromstring(contract_mod.to_xml_text(sealed).encode(), _parser()))
    return etree.tostring(root, encoding="unicode"), notes, cannot


def pin(uri: str | None, name: str, sealed: dict[str, Any] | None, profile_path: str) -> dict[str, Any]:
    import libvirt
    from lxml import etree

    from . import profile as profile_mod

    conn = _connect(uri)
    try:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            raise UsageError(f"no domain named {name!r} at {conn.getURI()}") from None
        if not dom.isPersistent():
            raise UsageError(f"domain {name!r} is transient: define it first (virsh define) so the pin persists")
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        # this host's profile: to derive a contract, and for arm64 to plan register pins;
        # an x86 contract given as a file needs none (libvirt and QEMU realise it)
        host = None
        if sealed is None or sealed["arch"] == "aarch64":
            host = profile_mod.load(profile_path)
        if sealed is None:
            assert host is not None
            root = etree.fromstring(xml.encode(), _parser())
            body = x86_body_from_domain(root) if host["host"]["machine"] == "x86_64" else None
            sealed = contract_mod.from_profile(host)
            if body is not None:
                # pin what the VM asks for now: its own CPU, its machine type made concrete
                body["pv_features"] = sealed["x86_64"].get("pv_features")
                os_type = root.find("os/type")
                machine = contract_mod.resolve_machine(host, os_type.get("machine") if os_type is not None else None)
                unsealed = {k: v for k, v in sealed.items() if k not in ("digest", "format", "version")}
                sealed = contract_mod.seal(unsealed | {"x86_64": body, "machine_type": machine or sealed["machine_type"]})
        new_xml, notes, cannot = apply(xml, sealed, host)
        try:
            conn.defineXML(new_xml)
        except libvirt.libvirtError as e:
            raise UsageError(f"libvirt refused the pinned definition of {name!r}: {e}") from None
        return {"domain": name, "contract": sealed["digest"], "arch": sealed["arch"],
                "pinned": notes, "cannot_pin": cannot,
                "note": "takes effect at the next start" if dom.isActive() else "takes effect at start"}
    finally:
        conn.close()


def status(uri: str | None, profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import libvirt

    from . import domxml, verdict

    import os

    # the migratable XML of a running domain needs a read-write connection (secure flag)
    conn = _connect(uri, readonly=os.geteuid() != 0)
    try:
        rows = []
        for dom in sorted(conn.listAllDomains(), key=lambda d: d.name()):
            active = dom.isActive()
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE if active else libvirt.VIR_DOMAIN_XML_INACTIVE)
            facts = domxml.parse(xml.encode(), f"domain {dom.name()}")
            row: dict[str, Any] = {"domain": dom.name(), "state": "running" if active else "shut off"}
            try:
                sealed = contract_mod.from_element(facts.contract, dom.name()) if facts.contract is not None else None
            except InputError as e:
                row["contract"] = f"invalid: {e}"
                rows.append(row)
                continue
            if sealed is None:
                row["contract"] = "none"
                rows.append(row)
                continue
            row["contract"] = sealed["digest"]
            row["arch"] = sealed["arch"]
            if facts.stamp is not None:
                row["running_on_profile"] = facts.stamp.get("profile")
            if sealed["arch"] == "x86_64":
                row["enforced"] = "machine type and CPU model/features by libvirt"
            else:
                from .arch import arm64

                pins = facts.qemu_env.get(domxml.PIN_ENV, ("", None))[0]
                regs = [f"{arm64.reg_name(int(k, 16))}={v}" for k, v in
                        (kv.split("=") for kv in pins.split(",") if "=" in kv)]
                row["enforced"] = ("PMU/SVE by libvirt; " + (f"{len(regs)} registers by abiguard_pin.so "
                                   f"(LD_PRELOAD): {', '.join(regs)}" if regs else
                                   "firmware and ID registers by refusal only (no pins)"))
            row["may_move_to"] = [p["_label"] for p in profiles
                                  if verdict.check(sealed, p).allow]
            rows.append(row)
        return rows
    finally:
        conn.close()
