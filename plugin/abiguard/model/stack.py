"""The stack part of a host profile: what QEMU (over QMP) and libvirt (domcapabilities)
said, as :mod:`abiguard.probe.stack` recorded it, read into typed models; and the one piece
of libvirt's XML the probes share (:func:`host_model_cpu_xml`)."""
from __future__ import annotations

from .fields import Reader

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any


def parse_version(text: object) -> tuple[int, ...] | None:
    """"7.2.22" -> (7, 2, 22); None for anything else."""
    if not isinstance(text, str) or not text or len(text) > 32:
        return None
    try:
        parts = tuple(int(x) for x in text.split(".")[:3])
    except ValueError:
        return None
    return parts if all(0 <= p < 1 << 31 for p in parts) else None


class Machine:
    """A QEMU machine type (query-machines)."""

    __slots__ = ("name", "alias", "default", "deprecated")

    def __init__(self, name: str, alias: str | None, default: bool, deprecated: bool) -> None:
        self.name, self.alias, self.default, self.deprecated = name, alias, default, deprecated


class QemuInfo:
    """What QEMU said over QMP (``-machine none -accel kvm``).

    :param host_cpu_props: ``query-cpu-model-expansion`` of ``host`` (full), or None
    :param cpu_definitions: model -> the features QEMU names unavailable on this host
    :param named_cpu_props: the full expansion of a named model (the arch's
        ``qemu_named_model``): what QEMU adds to any named model, such as x86's PV defaults
    """

    __slots__ = ("binary", "version_text", "version", "package", "machines", "host_cpu_model",
                 "host_cpu_props", "cpu_definitions", "named_cpu_props")

    def __init__(self, binary: str | None, version_text: str | None, package: str | None,
                 machines: tuple[Machine, ...], host_cpu_model: str | None,
                 host_cpu_props: dict[str, Any] | None, cpu_definitions: dict[str, tuple[str, ...]] | None,
                 named_cpu_props: dict[str, Any] | None = None) -> None:
        self.binary = binary
        self.version_text = version_text
        self.version = parse_version(version_text)
        self.package = package
        self.machines = machines
        self.host_cpu_model = host_cpu_model
        self.host_cpu_props = host_cpu_props
        self.cpu_definitions = cpu_definitions
        self.named_cpu_props = named_cpu_props

    def machine_names(self) -> set[str]:
        return {m.name for m in self.machines}

    def resolve_machine(self, name: str | None) -> str | None:
        """A machine type alias ('pc', 'q35', 'virt') made concrete with this QEMU."""
        for m in self.machines:
            if name is not None and m.alias == name:
                return m.name
        return name

    def newest_machine(self, family: str) -> str | None:
        return newest_machine(self.machine_names(), family)


def newest_machine(names: set[str] | list[str], family: str) -> str | None:
    """The newest versioned machine type of a family ("pc-q35-7.2" for "pc-q35")."""
    best: tuple[tuple[int, ...], str] | None = None
    for n in names:
        head, _, tail = n.rpartition("-")
        if head != family:
            continue
        version = parse_version(tail)
        if version is None or len(version) != 2 or tail != f"{version[0]}.{version[1]}":
            continue
        if best is None or version > best[0]:
            best = (version, n)
    return best[1] if best else None


class HostModel:
    """domcapabilities ``<mode name='host-model'>``: the CPU libvirt gives host-model VMs."""

    __slots__ = ("model", "vendor", "features")

    def __init__(self, model: str | None, vendor: str | None, features: dict[str, str]) -> None:
        self.model, self.vendor, self.features = model, vendor, features


class CustomModel:
    __slots__ = ("usable", "blockers")

    def __init__(self, usable: str, blockers: tuple[str, ...]) -> None:
        self.usable, self.blockers = usable, blockers


class DomCaps:
    """The guest-ABI parts of ``virsh domcapabilities``."""

    __slots__ = ("machine", "emulator", "host_model", "cpu_modes", "custom_models", "host_model_xml")

    def __init__(self, machine: str | None, emulator: str | None, host_model: HostModel | None,
                 cpu_modes: tuple[str, ...], custom_models: dict[str, CustomModel] | None,
                 host_model_xml: str | None = None) -> None:
        self.machine, self.emulator, self.host_model = machine, emulator, host_model
        self.cpu_modes, self.custom_models = cpu_modes, custom_models
        #: the host-model <cpu> as libvirt wrote it, for libvirt's own baseline/compare APIs
        self.host_model_xml = host_model_xml


class LibvirtCpu:
    """What this libvirt knows about CPUs (``stack.libvirt.cpu``).

    :param features: every feature name its CPU map accepts (aliases included), None unknown
    :param models: every CPU model name it knows, None unknown
    :param host_features: the host-model CPU expanded by this libvirt into every feature
        it has (libvirt's names), None unknown
    """

    __slots__ = ("features", "models", "host_features")

    def __init__(self, features: frozenset[str] | None, models: frozenset[str] | None,
                 host_features: frozenset[str] | None) -> None:
        self.features, self.models, self.host_features = features, models, host_features


class LibvirtInfo:
    __slots__ = ("uri", "version_text", "version", "hypervisor_version", "host_uuid", "domcaps", "cpu")

    def __init__(self, uri: str | None, version_text: str | None, hypervisor_version: str | None,
                 host_uuid: str | None, domcaps: DomCaps | None, cpu: LibvirtCpu | None = None) -> None:
        self.uri = uri
        self.version_text = version_text
        self.version = parse_version(version_text)
        self.hypervisor_version = hypervisor_version
        self.host_uuid = host_uuid
        self.domcaps = domcaps
        self.cpu = cpu



def host_model_cpu_xml(host_model: Any) -> str:
    """The ``<mode name='host-model'>`` of domcapabilities as the ``<cpu>`` libvirt's CPU
    APIs take (what ``virsh hypervisor-cpu-baseline`` does with a domcapabilities file):
    what :attr:`DomCaps.host_model_xml` holds, written by the probe."""
    from copy import deepcopy

    from lxml import etree

    cpu = deepcopy(host_model)
    cpu.tag = "cpu"
    for attr in list(cpu.attrib):
        del cpu.attrib[attr]
    return etree.tostring(cpu, encoding="unicode").strip()


def _shown(v: object, limit: int = 40) -> str:
    from ..errors import printable

    return printable(repr(v), limit)


def qemu_from_json(r: Reader, doc: Any) -> QemuInfo:
    q = r.obj(doc, "stack.qemu")
    machines = []
    for i, m in enumerate(r.lst(q.get("machines", []), "stack.qemu.machines", 4096)):
        m = r.obj(m, f"stack.qemu.machines[{i}]")
        machines.append(Machine(r.name(m.get("name"), f"stack.qemu.machines[{i}].name", "a machine type name"),
                                r.opt_name(m.get("alias"), f"stack.qemu.machines[{i}].alias", "a machine type name"),
                                m.get("default") is True, m.get("deprecated") is True))
    model, props = _expansion(r, q, "host_cpu_expansion")
    _named, named_props = _expansion(r, q, "named_cpu_expansion")
    defs_doc = r.opt_obj(q.get("cpu_definitions"), "stack.qemu.cpu_definitions", 8192)
    defs = None
    if defs_doc is not None:
        defs = {}
        for k, v in defs_doc.items():
            feats = r.lst(v, f"stack.qemu.cpu_definitions.{_shown(k)}", 4096)
            r.need(is_model_name(k) and all(isinstance(f, str) and len(f) <= 128 for f in feats),
                   "member 'stack.qemu.cpu_definitions' must map CPU model names to lists of feature names")
            defs[k] = tuple(feats)
    return QemuInfo(r.opt_string(q.get("binary"), "stack.qemu.binary", 4096),
                    r.opt_string(q.get("version"), "stack.qemu.version", 32),
                    r.opt_string(q.get("package"), "stack.qemu.package", 256),
                    tuple(machines), model, props, defs, named_props)


def _expansion(r: Reader, q: dict[str, Any], member: str) -> tuple[str | None, dict[str, Any] | None]:
    """A ``query-cpu-model-expansion`` answer: (model, props) or (None, None)."""
    expansion = r.opt_obj(q.get(member), f"stack.qemu.{member}")
    if expansion is None:
        return None, None
    model = r.opt_string(expansion.get("model"), f"stack.qemu.{member}.model", 64)
    props_doc = r.obj(expansion.get("props", {}), f"stack.qemu.{member}.props", 8192)
    props = {}
    for k, v in props_doc.items():
        r.need(isinstance(k, str) and len(k) <= 128 and (v is None or isinstance(v, (bool, int, float, str))),
               f"member 'stack.qemu.{member}.props' must map property names to plain values")
        props[k] = v
    return model, props


def is_model_name(v: object) -> bool:
    from .fields import is_name

    return is_name(v, 128)


def libvirt_from_json(r: Reader, doc: Any) -> LibvirtInfo:
    lv = r.obj(doc, "stack.libvirt")
    dc_doc = r.opt_obj(lv.get("domcapabilities"), "stack.libvirt.domcapabilities")
    dc = None
    if dc_doc is not None:
        w = "stack.libvirt.domcapabilities"
        hm_doc = r.opt_obj(dc_doc.get("host_model"), f"{w}.host_model")
        hm = None
        if hm_doc is not None:
            feats = r.obj(hm_doc.get("features", {}), f"{w}.host_model.features", 4096)
            r.need(all(isinstance(k, str) and len(k) <= 128 and isinstance(v, str) and len(v) <= 16
                       for k, v in feats.items()), f"member '{w}.host_model.features' must map names to policies")
            hm = HostModel(r.opt_string(hm_doc.get("model"), f"{w}.host_model.model", 128),
                           r.opt_string(hm_doc.get("vendor"), f"{w}.host_model.vendor", 128), dict(feats))
        modes = r.lst(dc_doc.get("cpu_modes", []), f"{w}.cpu_modes", 16)
        r.need(all(isinstance(m, str) and len(m) <= 64 for m in modes), f"member '{w}.cpu_modes' must list names")
        custom_doc = r.opt_obj(dc_doc.get("custom_models"), f"{w}.custom_models", 8192)
        custom = None
        if custom_doc is not None:
            custom = {}
            for k, v in custom_doc.items():
                v = r.obj(v, f"{w}.custom_models.{_shown(k)}")
                blockers = r.lst(v.get("blockers", []), f"{w}.custom_models.{_shown(k)}.blockers", 4096)
                r.need(is_model_name(k) and all(isinstance(b, str) and len(b) <= 128 for b in blockers),
                       f"member '{w}.custom_models' must map CPU model names to usable/blockers")
                custom[k] = CustomModel(r.string(v.get("usable", "unknown"), f"{w}.custom_models.usable", 16),
                                        tuple(blockers))
        dc = DomCaps(r.opt_string(dc_doc.get("machine"), f"{w}.machine", 128),
                     r.opt_string(dc_doc.get("emulator"), f"{w}.emulator", 4096), hm, tuple(modes), custom,
                     r.opt_string(dc_doc.get("host_model_xml"), f"{w}.host_model_xml", 1 << 16))
    cpu = None
    cpu_doc = r.opt_obj(lv.get("cpu"), "stack.libvirt.cpu")
    if cpu_doc is not None:
        def names(member: str, limit: int) -> frozenset[str] | None:
            v = cpu_doc.get(member)
            if v is None:
                return None
            items = r.lst(v, f"stack.libvirt.cpu.{member}", limit)
            r.need(all(isinstance(x, str) and 0 < len(x) <= 128 for x in items),
                   f"member 'stack.libvirt.cpu.{member}' must list names")
            return frozenset(items)

        cpu = LibvirtCpu(names("features", 8192), names("models", 4096), names("host_features", 4096))
    return LibvirtInfo(r.opt_string(lv.get("uri"), "stack.libvirt.uri", 1024),
                       r.opt_string(lv.get("version"), "stack.libvirt.version", 32),
                       r.opt_string(lv.get("hypervisor_version"), "stack.libvirt.hypervisor_version", 32),
                       r.opt_string(lv.get("host_uuid"), "stack.libvirt.host_uuid", 64), dc, cpu)
