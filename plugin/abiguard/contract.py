"""Guest ABI contracts: the ABI a VM is pinned to, as JSON and as a compact XML element
for the domain's ``<metadata>``.

arm64 contract: the vCPU configuration (KVM_ARM_VCPU_INIT features, SVE lengths), the
register stream QEMU carries for it (every KVM_GET_REG_LIST id except core and SVE
registers) and the values of the registers that define the guest ABI (firmware
pseudo-registers, the feature ID range, CCSIDR), plus the machine type.
x86 contract: CPU model and features, KVM PV feature bits, machine type.

Both forms round-trip exactly; the digest covers everything but itself. Parsing is
hostile-input parsing: size caps, no entities, no network, every attribute checked
against a pattern before it is used.
"""
from __future__ import annotations

from .errors import ContractError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = "abiguard-contract"
VERSION = 1
#: the XML namespace of abiguard's element inside <metadata>
XMLNS = "urn:abiguard:contract:1"
MAX_XML_BYTES = 256 * 1024
MAX_REGISTERS = 4096
MAX_FEATURES = 512
ARCHES = ("aarch64", "x86_64")

# Validators without the re module: the hook imports this, and re (with enum) would cost
# more than the hook's whole budget.
_HEXDIGITS = frozenset("0123456789abcdef")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-~")


def is_hex(v: object, max_digits: int = 32) -> bool:
    return (isinstance(v, str) and v.startswith("0x") and 0 < len(v) - 2 <= max_digits
            and _HEXDIGITS.issuperset(v[2:]))


def is_name(v: object, max_len: int = 64) -> bool:
    return (isinstance(v, str) and 0 < len(v) <= max_len and v[0].isalnum() and v.isascii()
            and _NAME_CHARS.issuperset(v))


def is_digest(v: object) -> bool:
    return (isinstance(v, str) and len(v) == 71 and v.startswith("sha256:")
            and _HEXDIGITS.issuperset(v[7:]))


#: arm64 ONE_REG groups (arch/arm64/include/uapi/asm/kvm.h KVM_REG_ARM_*: core, demux,
#: sysreg, fw, sve, fw_bmap) and sizes (KVM_REG_SIZE_U32 .. U2048)
_ARM64_COPROCS = frozenset({0x10, 0x11, 0x13, 0x14, 0x15, 0x16})
_ARM64_SIZES = frozenset(range(2, 9))


def is_arm64_reg(v: object) -> bool:
    """A well-formed arm64 ONE_REG id of a group KVM defines (hex string, 0x60...)."""
    if not (isinstance(v, str) and len(v) == 18 and v.startswith("0x60") and _HEXDIGITS.issuperset(v[2:])):
        return False
    reg = int(v, 16)
    return (reg >> 16) & 0xFFF in _ARM64_COPROCS and (reg >> 52) & 0xF in _ARM64_SIZES


def _canonical(obj: object) -> str:
    """json.dumps(obj, sort_keys=True, separators=(",", ":")) for validated contracts,
    whose strings are plain printable ASCII (checked before this runs)."""
    if isinstance(obj, dict):
        return "{" + ",".join(f'"{k}":{_canonical(obj[k])}' for k in sorted(obj)) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(_canonical(x) for x in obj) + "]"
    if isinstance(obj, str):
        if not (obj.isascii() and obj.isprintable()) or '"' in obj or "\\" in obj:
            raise ContractError("contract", f"string {obj[:40]!r} has characters a contract may not hold")
        return f'"{obj}"'
    if obj is None:
        return "null"
    if obj is True or obj is False:
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    raise ContractError("contract", f"unexpected value of type {type(obj).__name__}")


def _sha256(data: bytes) -> str:
    try:
        from _sha256 import sha256  # the builtin: hashlib would load OpenSSL first
    except ImportError:  # pragma: no cover - other Python builds
        from hashlib import sha256
    return sha256(data).hexdigest()


def digest_of(doc: dict[str, Any]) -> str:
    return "sha256:" + _sha256(_canonical({k: v for k, v in doc.items() if k != "digest"}).encode())


def seal(doc: dict[str, Any]) -> dict[str, Any]:
    doc = dict(doc, format=FORMAT, version=VERSION)
    doc["digest"] = digest_of(doc)
    return doc


# -- derivation -----------------------------------------------------------------------

def default_arm64_config(profile: dict[str, Any]) -> str:
    """What ``-cpu host`` gives on that host: every vCPU feature its KVM offers."""
    configs = profile["kvm"]["aarch64"]["configs"]
    return max(configs, key=lambda name: (len(configs[name]["features"]), name))


def newest_machine(names: Any, family: str) -> str | None:
    """The newest versioned machine type of a family ("pc-q35-7.2" for "pc-q35")."""
    import re

    versioned = [n for n in names if re.fullmatch(rf"{family}-\d+\.\d+", n)]
    return max(versioned, key=lambda n: tuple(int(x) for x in n.rsplit("-", 1)[1].split(".")),
               default=None)


def newest_machine_type(profile: dict[str, Any], family: str) -> str | None:
    qemu = (profile.get("stack") or {}).get("qemu") or {}
    return newest_machine((m["name"] for m in qemu.get("machines", [])), family)


def resolve_machine(profile: dict[str, Any], name: str | None) -> str | None:
    """A machine type alias ('pc', 'q35', 'virt') made concrete with that host's QEMU."""
    qemu = (profile.get("stack") or {}).get("qemu") or {}
    for m in qemu.get("machines", []):
        if name is not None and m.get("alias") == name:
            return str(m["name"])
    return name


def from_profile(profile: dict[str, Any], config: str | None = None,
                 machine_type: str | None = None) -> dict[str, Any]:
    """The contract a VM booted on that host with defaults has."""
    arch = profile["host"]["machine"]
    kvm = profile.get("kvm") or {}
    origin = {"kind": "profile", "hosts": [{"kernel": profile["host"]["kernel_release"],
                                            "profile": profile["digest"]}]}
    if arch == "aarch64":
        from .arch import arm64

        section = kvm.get("aarch64") or {}
        if not section.get("configs"):
            raise ContractError("profile", "it has no arm64 vCPU configuration: the probe could not create a vCPU there")
        config = config or default_arm64_config(profile)
        if config not in section["configs"]:
            raise ContractError("profile", f"vCPU configuration {config!r} was not probed there "
                                f"(it has: {', '.join(section['configs'])})")
        probed = section["configs"][config]
        registers = probed["registers"]
        body: dict[str, Any] = {
            "config": config,
            "sve_vls": probed.get("sve_vls"),
            "stream": sorted(registers, key=lambda r: int(r, 16)),
            "values": {r: v for r, v in sorted(registers.items(), key=lambda kv: int(kv[0], 16))
                       if v is not None and arm64.carries_abi_value(int(r, 16))},
        }
        machine_type = machine_type or newest_machine_type(profile, "virt")
        return seal({"arch": arch, "machine_type": machine_type, "origin": origin, "aarch64": body})
    if arch == "x86_64":
        from .arch import x86

        return seal({"arch": arch, "machine_type": machine_type or newest_machine_type(profile, "pc-q35"),
                     "origin": origin, "x86_64": x86.contract_body(profile)})
    raise ContractError("profile", f"architecture {arch!r}: abiguard knows {', '.join(ARCHES)}")


# -- validation -----------------------------------------------------------------------

def _need(cond: bool, source: str, detail: str) -> None:
    if not cond:
        raise ContractError(source, detail)


def validate(doc: Any, source: str) -> dict[str, Any]:
    _need(isinstance(doc, dict), source, "a contract must be a JSON object")
    _need(doc.get("format") == FORMAT, source, f"member 'format' must be {FORMAT!r}")
    _need(doc.get("version") == VERSION, source,
          f"contract version {doc.get('version')!r}; this abiguard reads version {VERSION}")
    arch = doc.get("arch")
    _need(arch in ARCHES, source, f"member 'arch' must be one of {', '.join(ARCHES)}")
    mt = doc.get("machine_type")
    _need(mt is None or is_name(mt), source,
          "member 'machine_type' must be a machine type name such as 'virt-7.2' or null")
    body = doc.get(arch)
    _need(isinstance(body, dict), source, f"member {arch!r} must be a JSON object")
    if arch == "aarch64":
        from .arch import arm64
        try:
            arm64.config_features(body.get("config", ""))
        except ValueError as e:
            raise ContractError(source, str(e)) from e
        vls = body.get("sve_vls")
        _need(vls is None or is_hex(vls, 128), source,
              "member 'sve_vls' must be a hex string or null")
        stream = body.get("stream")
        _need(isinstance(stream, list) and len(stream) <= MAX_REGISTERS
              and all(is_arm64_reg(r) for r in stream), source,
              f"member 'stream' must list at most {MAX_REGISTERS} arm64 register ids (0x60...) of groups "
              "KVM defines: " + ", ".join(r for r in stream if not is_arm64_reg(r))[:120]
              if isinstance(stream, list) else "member 'stream' must be a list")
        values = body.get("values")
        in_stream = set(stream)
        _need(isinstance(values, dict) and len(values) <= MAX_REGISTERS and all(
            is_hex(v, 16) and r in in_stream for r, v in values.items()), source,
            "member 'values' must map register ids of the stream to hex values")
    else:
        from .arch import x86
        x86.validate_body(body, source)
    digest = doc.get("digest")
    _need(is_digest(digest), source, "member 'digest' is missing or not a sha256 digest")
    origin = doc.get("origin")
    _need(isinstance(origin, dict) and origin.get("kind") in ("profile", "baseline")
          and isinstance(origin.get("hosts"), list) and len(origin["hosts"]) <= 1024
          and all(isinstance(h, dict) and is_name(h.get("kernel"), 128) and is_digest(h.get("profile"))
                  for h in origin["hosts"]), source,
          "member 'origin' must name its kind and hosts (kernel, sha256 profile digest)")
    _need(digest == digest_of(doc), source, "content does not match its digest: it was edited or damaged")
    return doc


def loads(text: str | bytes, source: str) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ContractError(source, f"not valid JSON ({e})") from e
    return validate(doc, source)


# -- XML form -------------------------------------------------------------------------

def _q(tag: str) -> str:
    return f"{{{XMLNS}}}{tag}"


def to_xml_text(doc: dict[str, Any], prefix: str = "abiguard") -> str:
    """The ``<abiguard:contract>`` element as text (no XML library needed)."""
    from xml.sax.saxutils import quoteattr

    def attrs(pairs: list[tuple[str, Any]]) -> str:
        return "".join(f" {k}={quoteattr(str(v))}" for k, v in pairs if v is not None)

    p = prefix
    origin = doc["origin"]
    parts = [f"<{p}:contract xmlns:{p}=\"{XMLNS}\""
             + attrs([("version", doc["version"]), ("arch", doc["arch"]),
                      ("machine", doc.get("machine_type")), ("digest", doc["digest"])]) + ">",
             f"<{p}:origin" + attrs([("kind", origin["kind"])]) + ">"]
    for host in origin["hosts"]:
        parts.append(f"<{p}:host" + attrs([("kernel", host["kernel"]), ("profile", host["profile"])]) + "/>")
    parts.append(f"</{p}:origin>")
    if doc["arch"] == "aarch64":
        body = doc["aarch64"]
        parts.append(f"<{p}:arm64" + attrs([("config", body["config"]), ("sve-vls", body.get("sve_vls"))]) + ">")
        parts.append(f"<{p}:stream>" + " ".join(body["stream"]) + f"</{p}:stream>")
        for reg, value in body["values"].items():
            parts.append(f"<{p}:reg" + attrs([("id", reg), ("value", value)]) + "/>")
        parts.append(f"</{p}:arm64>")
    else:
        body = doc["x86_64"]
        parts.append(f"<{p}:x86" + attrs([("cpu-model", body.get("cpu_model")),
                                            ("pv-features", body.get("pv_features"))]) + ">")
        for name, policy in body["features"].items():
            parts.append(f"<{p}:feature" + attrs([("name", name), ("policy", policy)]) + "/>")
        parts.append(f"</{p}:x86>")
    parts.append(f"</{p}:contract>")
    return "".join(parts)


def from_element(el: Any, source: str) -> dict[str, Any]:
    """Build and validate a contract from a parsed ``contract`` element.

    ``el`` is any ElementTree-compatible element (lxml or :mod:`abiguard.domxml`'s
    minimal tree); every attribute is checked before use.
    """
    _need(el.tag == _q("contract"), source, f"expected <contract xmlns='{XMLNS}'>")
    doc: dict[str, Any] = {"format": FORMAT}
    try:
        doc["version"] = int(el.get("version", ""))
    except ValueError:
        raise ContractError(source, "attribute 'version' of <contract> must be an integer") from None
    doc["arch"] = el.get("arch")
    doc["machine_type"] = el.get("machine")
    origin_el = el.find(_q("origin"))
    _need(origin_el is not None, source, "<contract> lacks <origin>")
    hosts = [{"kernel": h.get("kernel"), "profile": h.get("profile")} for h in origin_el.findall(_q("host"))]
    _need(len(hosts) <= 1024 and all(is_name(h["kernel"], 128) and is_digest(h["profile"]) for h in hosts),
          source, "<origin> hosts must carry 'kernel' and a sha256 'profile' digest")
    doc["origin"] = {"kind": origin_el.get("kind"), "hosts": hosts}
    _need(doc["origin"]["kind"] in ("profile", "baseline"), source,
          "<origin kind> must be 'profile' or 'baseline'")
    arm = el.find(_q("arm64"))
    x86 = el.find(_q("x86"))
    if doc["arch"] == "aarch64":
        _need(arm is not None, source, "an aarch64 contract needs an <arm64> element")
        stream_el = arm.find(_q("stream"))
        _need(stream_el is not None, source, "<arm64> lacks <stream>")
        text = stream_el.text or ""
        stream = text.split()
        _need(len(stream) <= MAX_REGISTERS, source, f"<stream> lists more than {MAX_REGISTERS} registers")
        regs = arm.findall(_q("reg"))
        _need(len(regs) <= MAX_REGISTERS, source, f"more than {MAX_REGISTERS} <reg> elements")
        values = {}
        for r in regs:
            rid, value = r.get("id"), r.get("value")
            _need(isinstance(rid, str) and isinstance(value, str), source, "<reg> needs 'id' and 'value'")
            values[rid] = value
        doc["aarch64"] = {"config": arm.get("config"), "sve_vls": arm.get("sve-vls"),
                          "stream": stream, "values": values}
    elif doc["arch"] == "x86_64":
        _need(x86 is not None, source, "an x86_64 contract needs an <x86> element")
        feats = x86.findall(_q("feature"))
        _need(len(feats) <= MAX_FEATURES, source, f"more than {MAX_FEATURES} <feature> elements")
        doc["x86_64"] = {"cpu_model": x86.get("cpu-model"), "pv_features": x86.get("pv-features"),
                         "features": {f.get("name"): f.get("policy") for f in feats}}
    doc["digest"] = el.get("digest")
    return validate(doc, source)
