"""Guest ABI contracts: the ABI a VM is pinned to.

A contract is an arch, a machine type, where it came from (a host profile or a fleet
baseline over several) and the arch's body (:mod:`abiguard.arch.arm64.body`,
:mod:`abiguard.arch.x86.body`, read by the arch's plugin: :mod:`.arches`), sealed with a
sha256 digest over its canonical JSON form.
It travels as JSON (files, ``abiguard baseline``) and as a compact XML element inside the
domain's ``<metadata>`` (:mod:`abiguard.xml.contract`); both forms round-trip exactly.

Parsing is hostile-input parsing: size caps, every member checked before use, and the
digest recomputed from the model, so a contract that parses is one abiguard wrote.
"""
from __future__ import annotations

from ..errors import ContractError, printable
from . import arches
from .fields import Reader, is_digest, is_name

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from ..arch.arm64.body import Arm64Body
    from ..arch.x86.body import X86Body
    from .profile import Profile

    #: a contract's arch body
    Body: TypeAlias = Arm64Body | X86Body

FORMAT = "abiguard-contract"
VERSION = 1
MAX_HOSTS = 1024
#: profile: one host's defaults; baseline: a fleet's; seen: what the hook saw an unpinned VM
#: boot with (not a pin: the VM stays unpinned, :mod:`abiguard.hook.seen`)
ORIGIN_KINDS = ("profile", "baseline", "seen")
SEEN = "seen"


class OriginHost:
    __slots__ = ("kernel", "profile")

    def __init__(self, kernel: str, profile: str) -> None:
        self.kernel, self.profile = kernel, profile


class Origin:
    """Where the contract came from: one host's profile, or a baseline over several."""

    __slots__ = ("kind", "hosts")

    def __init__(self, kind: str, hosts: tuple[OriginHost, ...]) -> None:
        self.kind, self.hosts = kind, hosts

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "hosts": [{"kernel": h.kernel, "profile": h.profile} for h in self.hosts]}


class _Keep:
    """The default of :meth:`Contract.replace`'s machine type: keep it."""


KEEP = _Keep()


class Contract:
    """:param sealed_by: the abiguard version that sealed it (``meta``: outside the digest)"""

    __slots__ = ("arch", "machine_type", "origin", "body", "digest", "sealed_by")

    def __init__(self, arch: str, machine_type: str | None, origin: Origin, body: Body, digest: str,
                 sealed_by: str | None = None) -> None:
        self.arch = arch
        self.machine_type = machine_type
        self.origin = origin
        self.body = body
        self.digest = digest
        self.sealed_by = sealed_by

    def to_json(self) -> dict[str, Any]:
        doc = _unsealed(self.arch, self.machine_type, self.origin, self.body)
        doc["digest"] = self.digest
        if self.sealed_by:
            doc["meta"] = {"abiguard_version": self.sealed_by}
        return doc

    def replace(self, machine_type: str | None | _Keep = KEEP, origin: Origin | None = None,
                body: Body | None = None) -> Contract:
        """A new contract with members changed, sealed again."""
        return seal(self.arch, self.machine_type if isinstance(machine_type, _Keep) else machine_type,
                    origin or self.origin, body or self.body)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Contract) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Contract({self.arch}, {self.digest[:19]})"

    @classmethod
    def from_json(cls, doc: Any, source: str) -> Contract:
        """Check every member; raise ContractError naming the first wrong one."""
        r = Reader(source, ContractError)
        r.need(isinstance(doc, dict), "a contract must be a JSON object")
        r.need(doc.get("format") == FORMAT, f"member 'format' must be {FORMAT!r}")
        version = doc.get("version")
        r.need(version == VERSION and not isinstance(version, bool),
               f"contract version {printable(repr(version), 20)}; this abiguard reads version {VERSION}")
        arch = doc.get("arch")
        r.need(arch in arches.NAMES, f"member 'arch' must be one of {', '.join(arches.NAMES)}")
        mt = doc.get("machine_type")
        r.need(mt is None or is_name(mt),
               "member 'machine_type' must be a machine type name such as 'virt-7.2' or null")
        body_doc = doc.get(arch)
        r.need(isinstance(body_doc, dict), f"member {arch!r} must be a JSON object")
        body = arches.get(arch).body_from_json(r, body_doc, arch)
        digest = doc.get("digest")
        r.need(is_digest(digest), "member 'digest' is missing or not a sha256 digest")
        origin_doc = doc.get("origin")
        r.need(isinstance(origin_doc, dict) and origin_doc.get("kind") in ORIGIN_KINDS
               and isinstance(origin_doc.get("hosts"), list) and len(origin_doc["hosts"]) <= MAX_HOSTS
               and all(isinstance(h, dict) and is_name(h.get("kernel"), 128) and is_digest(h.get("profile"))
                       for h in origin_doc["hosts"]),
               "member 'origin' must name its kind and hosts (kernel, sha256 profile digest)")
        origin = Origin(origin_doc["kind"], tuple(OriginHost(h["kernel"], h["profile"]) for h in origin_doc["hosts"]))
        extra = set(doc) - {"format", "version", "arch", "machine_type", arch, "digest", "origin", "meta"}
        r.need(not extra, "unknown member(s) " + printable(", ".join(sorted(map(str, extra))), 80))
        meta = doc.get("meta")
        r.need(meta is None or (isinstance(meta, dict) and set(meta) <= {"abiguard_version"}
                                and is_name(meta.get("abiguard_version"), 32)),
               "member 'meta' may only name the abiguard_version that sealed the contract")
        sealed = seal(arch, mt, origin, body)
        r.need(digest == sealed.digest, "content does not match its digest: it was edited or damaged")
        sealed.sealed_by = meta["abiguard_version"] if meta else None
        return sealed


def _unsealed(arch: str, machine_type: str | None, origin: Origin, body: Body) -> dict[str, Any]:
    return {"arch": arch, "machine_type": machine_type, "origin": origin.to_json(), arch: body.to_json(),
            "format": FORMAT, "version": VERSION}


def _plain(text: str) -> None:
    """Contract strings are printable ASCII without quotes or backslashes: JSON's escapes
    never apply, so the canonical form below is json.dumps' exactly."""
    if not (text.isascii() and text.isprintable()) or '"' in text or "\\" in text:
        raise ContractError("contract", f"string {printable(text, 40)!r} has characters a contract may not hold")


def canonical(obj: object) -> str:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"))`` for contract documents,
    without importing json (the hook seals every contract it reads to check its digest).
    Lists and objects of strings, the bulk of an arm64 contract, are checked and joined in
    one go."""
    if isinstance(obj, dict):
        keys = sorted(obj)
        values = list(map(obj.__getitem__, keys))
        if set(map(type, keys)) <= {str} and set(map(type, values)) <= {str}:
            _plain("".join(keys) + "".join(values))
            # '"k":"v"' for each pair, joined by commas
            return '{"' + '","'.join(map('":"'.join, zip(keys, values))) + '"}' if keys else "{}"
        _plain("".join(keys))
        return "{" + ",".join(f'"{k}":{canonical(v)}' for k, v in zip(keys, values)) + "}"
    if isinstance(obj, (list, tuple)):
        if obj and set(map(type, obj)) <= {str}:
            _plain("".join(obj))
            return '["' + '","'.join(obj) + '"]'
        return "[" + ",".join(map(canonical, obj)) + "]"
    if isinstance(obj, str):
        _plain(obj)
        return f'"{obj}"'
    if obj is None:
        return "null"
    if obj is True or obj is False:
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    raise ContractError("contract", f"unexpected value of type {type(obj).__name__}")


def seal(arch: str, machine_type: str | None, origin: Origin, body: Body) -> Contract:
    import hashlib

    from ..version import __version__

    doc = _unsealed(arch, machine_type, origin, body)
    digest = "sha256:" + hashlib.sha256(canonical(doc).encode()).hexdigest()
    return Contract(arch, machine_type, origin, body, digest, __version__)


def loads(text: str | bytes, source: str) -> Contract:
    from .profile import parse_json

    return Contract.from_json(parse_json(text, source, ContractError), source)


def from_profile(profile: Profile, config: str | None = None, machine_type: str | None = None) -> Contract:
    """The contract a VM booted on that host with libvirt's defaults has."""
    arch = arches.get(profile.machine)
    body = arch.contract_body(profile, config)
    origin = Origin("profile", (OriginHost(profile.kernel_release, profile.digest),))
    return seal(profile.machine, machine_type or profile.newest_machine(arch.machine_family), origin, body)


def seal_json(doc: dict[str, Any], source: str = "contract") -> Contract:
    """A contract from a JSON document whose digest is missing or stale: checked like any
    other, then sealed anew (for callers that build or edit contract documents)."""
    import hashlib

    body = {k: v for k, v in doc.items() if k not in ("digest", "meta")}   # meta is outside the digest
    body.update(format=FORMAT, version=VERSION)
    try:
        digest = "sha256:" + hashlib.sha256(canonical(body).encode()).hexdigest()
    except ContractError as e:
        raise ContractError(source, e.detail) from None
    sealed = Contract.from_json(body | {"digest": digest}, source)
    from ..version import __version__

    sealed.sealed_by = __version__
    return sealed
