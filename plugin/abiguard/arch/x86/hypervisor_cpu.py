"""libvirt's own x86 CPU knowledge, asked over a connection: ``baselineHypervisorCPU``
(the CPU every given host CPU can run, in this libvirt's CPU map and for its QEMU) and
``compareHypervisorCPU`` (whether this host, its libvirt and QEMU, can run a CPU
definition). Never on the hook's path (the hook must not call back into libvirt).
"""
from __future__ import annotations

from typing import Any

#: the CPU model that carries a host's features into another libvirt's baseline: libvirt's
#: CPU APIs take no CPU without a model, a host-model CPU names a model an older libvirt may
#: not know, and kvm64 is in every libvirt's x86 CPU map
CARRIER_MODEL = "kvm64"
#: libvirt's verdicts of compareHypervisorCPU (VIR_CPU_COMPARE_*)
COMPARE = {0: "incompatible", 1: "identical", 2: "superset"}


class HypervisorCpu:
    """One host's libvirt and QEMU, asked about x86 CPUs.

    :param conn: an open libvirt connection
    :param label: how reports name it (its URI)
    """

    def __init__(self, conn: Any, label: str) -> None:
        self.conn = conn
        self.label = label

    @classmethod
    def open(cls, uri: str) -> HypervisorCpu:
        from ...connection import connect

        return cls(connect(uri, readonly=False), uri)

    @classmethod
    def local(cls) -> list[HypervisorCpu]:
        """This host's libvirt, if libvirt-python is there and the daemon answers; else none."""
        try:
            import libvirt
        except ImportError:
            return []
        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        try:
            conn = libvirt.open(None)
        except libvirt.libvirtError:
            return []
        return [cls(conn, conn.getURI())]

    def version(self) -> tuple[int, ...]:
        n = self.conn.getLibVersion()
        return (n // 1000000, n // 1000 % 1000, n % 1000)

    def _baseline(self, cpus: list[str], expand: bool = True) -> str:
        import libvirt

        flags = libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE
        if expand:
            flags |= libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
        xml: str = self.conn.baselineHypervisorCPU(None, "x86_64", None, "kvm", cpus, flags)
        return xml

    def model_features(self, model: str) -> set[str]:
        """Every feature of a CPU model as this libvirt defines it."""
        return required(self._baseline([f"<cpu><model>{model}</model></cpu>"]))

    def baseline(self, hosts: list[set[str]]) -> tuple[str, list[str]]:
        """libvirt's baseline over hosts given as feature sets (libvirt names): the CPU XML,
        and the feature names this libvirt did not know and left out (it refuses a CPU
        naming one)."""
        import libvirt

        carrier = self.model_features(CARRIER_MODEL)
        unknown: list[str] = []
        for _ in range(64):     # each round learns one name this libvirt does not know
            cpus = [carrier_cpu(carrier, feats - set(unknown)) for feats in hosts]
            try:
                return self._baseline(cpus), unknown
            except libvirt.libvirtError as e:
                name = unknown_feature(str(e))
                if name is None or name in unknown:
                    raise
                unknown.append(name)
        raise RuntimeError("libvirt keeps naming CPU features it does not know")

    def compare(self, cpu_xml: str) -> tuple[str, str | None]:
        """(identical | superset | incompatible | error, libvirt's reason when not compatible)."""
        import libvirt

        try:
            res = self.conn.compareHypervisorCPU(None, "x86_64", None, "kvm", cpu_xml,
                                                 libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
        except libvirt.libvirtError as e:
            return ("incompatible" if e.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE else "error"), str(e)
        return COMPARE.get(res, "error"), None


def required(cpu_xml: str) -> set[str]:
    from lxml import etree

    root = etree.fromstring(cpu_xml.encode(), etree.XMLParser(resolve_entities=False, no_network=True))
    return {str(f.get("name")) for f in root.findall("feature") if f.get("policy") == "require" and f.get("name")}


def parse_cpu(cpu_xml: str) -> tuple[str | None, dict[str, str]]:
    """(model, feature -> policy) of a libvirt CPU definition."""
    from lxml import etree

    root = etree.fromstring(cpu_xml.encode(), etree.XMLParser(resolve_entities=False, no_network=True))
    model = root.findtext("model")
    return (model.strip() if model else None,
            {str(f.get("name")): str(f.get("policy", "require")) for f in root.findall("feature") if f.get("name")})


def carrier_cpu(carrier: set[str], feats: set[str]) -> str:
    """A host's feature set as a CPU this libvirt reads: the carrier model, the host's
    features it lacks required, its features the host lacks disabled."""
    from lxml import etree

    cpu = etree.Element("cpu")
    etree.SubElement(cpu, "model").text = CARRIER_MODEL
    for name in sorted(feats - carrier):
        etree.SubElement(cpu, "feature", policy="require", name=name)
    for name in sorted(carrier - feats):
        etree.SubElement(cpu, "feature", policy="disable", name=name)
    return etree.tostring(cpu, encoding="unicode")


def cpu_xml(model: str | None, feats: dict[str, str]) -> str:
    """The contract's CPU as the ``<cpu>`` libvirt's compare takes (what pin writes)."""
    from lxml import etree

    cpu = etree.Element("cpu", mode="custom", match="exact")
    if model:
        etree.SubElement(cpu, "model", fallback="forbid").text = model
    for name, policy in sorted(feats.items()):
        etree.SubElement(cpu, "feature", policy=policy, name=name)
    return etree.tostring(cpu, encoding="unicode")


def unknown_feature(message: str) -> str | None:
    """The feature a libvirt error says it does not know ("Unknown CPU feature X", or
    "unknown CPU feature: X" from an incoming definition)."""
    marker = "nknown CPU feature"
    at = message.find(marker)
    if at < 0:
        return None
    words = message[at + len(marker):].lstrip(" :").split()
    name = words[0].strip("'\".,:") if words else ""
    return name or None
