"""Host profiles: what :mod:`abiguard.probe` read on one host, as versioned JSON with a
content digest, and the typed model every other part of abiguard reads it through.

JSON layout (version 1)::

    format      "abiguard-host-profile"
    version     1
    digest      "sha256:<hex>" over every member but digest and meta
    meta        when, how long, by which abiguard (not part of the digest)
    host        kernel_release, kernel_version, machine
    kvm         device, api_version, caps, and one of aarch64 / x86_64 (or null: no /dev/kvm)
    stack       qemu and libvirt: versions, machine types, CPU model expansion (or absent)
    unavailable what could not be read: what, errno, error, detail

Register ids and values are hex strings in the JSON ("0x6030000000140000": readable, and
exact in every JSON reader) and ints in the model. :meth:`Profile.from_json` checks every
member the engine reads, naming the member that is wrong; members it does not know are
left alone (a newer probe may add some). The arch sections are read by the arch plugins
(:mod:`abiguard.arch`), which the models reach through :mod:`.arches`.

The hook reads a profile from its *hook view*: the model's values in marshal form, written
next to the JSON by :func:`save`, keyed to the JSON bytes written and checksummed, so that
the hook needs neither json, re nor a digest over 160 KB (:func:`load_for_hook`).
"""
from __future__ import annotations

from ..errors import InputError, ProfileError
from . import arches
from .fields import Reader

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from .stack import LibvirtInfo, QemuInfo

FORMAT = "abiguard-host-profile"
VERSION = 1
#: a profile bigger than this is not one of ours
MAX_BYTES = 8 * 1024 * 1024
_UNDIGESTED = ("digest", "meta")


class KvmSection:
    """The arch's part of a profile's ``kvm`` section (``kvm.aarch64``, ``kvm.x86_64``): a
    subclass of the arch plugin's, read by it (:meth:`abiguard.arch.base.Arch.section_from_json`)."""

    __slots__ = ()


class KvmInfo:
    """The ``kvm`` section: the API version, capabilities, and the arch plugin's section."""

    __slots__ = ("device", "api_version", "caps", "arch")

    def __init__(self, device: str | None, api_version: int | None, caps: dict[str, int],
                 arch: KvmSection | None) -> None:
        self.device, self.api_version, self.caps, self.arch = device, api_version, caps, arch


class Unavailable:
    __slots__ = ("what", "errno", "error", "detail")

    def __init__(self, what: str, errno: int, error: str, detail: str) -> None:
        self.what, self.errno, self.error, self.detail = what, errno, error, detail


class Profile:
    """One host, as its profile says.

    :param label: how reports name the host (its file, or its kernel release)
    :param doc: the JSON document it was read from (None when read from a hook view)
    """

    __slots__ = ("kernel_release", "kernel_version", "machine", "kvm", "qemu", "libvirt",
                 "unavailable", "digest", "label", "doc")

    def __init__(self, kernel_release: str, kernel_version: str, machine: str, kvm: KvmInfo | None,
                 qemu: QemuInfo | None, libvirt: LibvirtInfo | None, unavailable: tuple[Unavailable, ...],
                 digest: str, label: str | None = None, doc: dict[str, Any] | None = None) -> None:
        self.kernel_release = kernel_release
        self.kernel_version = kernel_version
        self.machine = machine
        self.kvm = kvm
        self.qemu = qemu
        self.libvirt = libvirt
        self.unavailable = unavailable
        self.digest = digest
        self.label = label or kernel_release
        self.doc = doc

    @property
    def name(self) -> str:
        """The host as messages name it: its kernel release."""
        return self.kernel_release

    def arch_section(self) -> KvmSection | None:
        return self.kvm.arch if self.kvm is not None else None

    def qemu_version(self) -> tuple[int, ...] | None:
        return self.qemu.version if self.qemu is not None else None

    def libvirt_version(self) -> tuple[int, ...] | None:
        return self.libvirt.version if self.libvirt is not None else None

    def newest_machine(self, family: str) -> str | None:
        return self.qemu.newest_machine(family) if self.qemu is not None else None

    def with_label(self, label: str) -> Profile:
        return Profile(self.kernel_release, self.kernel_version, self.machine, self.kvm, self.qemu,
                       self.libvirt, self.unavailable, self.digest, label, self.doc)

    # -- JSON ----------------------------------------------------------------------------

    @classmethod
    def from_json(cls, doc: Any, source: str, verified: dict[str, Profile] | None = None) -> Profile:
        """Check every member the engine reads; raise ProfileError naming the first wrong one.

        :param verified: digest -> profile already read; a document equal to one of them
            needs no second digest computation or model (a fleet has few kinds of host)
        """
        r = Reader(source, ProfileError)
        r.need(isinstance(doc, dict), "a host profile must be a JSON object")
        r.need(doc.get("format") == FORMAT,
               f"member 'format' must be {FORMAT!r}: is this a file written by 'abiguard probe'?")
        version = doc.get("version")
        r.need(version == VERSION and not isinstance(version, bool),
               f"member 'version' is {_shown(version)}; this abiguard reads version {VERSION}: "
               "probe the host again with this abiguard")
        host = doc.get("host")
        r.need(isinstance(host, dict) and isinstance(host.get("machine"), str),
               "member 'host' must be an object with a string 'machine'")
        machine = host["machine"]
        r.need(machine in arches.NAMES, f"architecture {_shown(machine)}: abiguard knows aarch64 and x86_64")
        digest = r.string(doc.get("digest"), "digest", 80)
        if verified is not None:
            twin = verified.get(digest)
            if twin is not None and twin.doc is not None and all(
                    twin.doc.get(k) == doc.get(k) for k in set(twin.doc) | set(doc) if k not in _UNDIGESTED):
                return twin.with_label(source) if twin.label != source else twin
        actual = digest_of(doc)
        r.need(digest == actual, f"content does not match its digest ({_shown(digest, 80)} recorded, {actual} "
               "computed): the file was edited or damaged; probe the host again")
        kernel = r.name(host.get("kernel_release"), "host.kernel_release", "a kernel release", 128)
        kernel_version = r.string(host.get("kernel_version", ""), "host.kernel_version", 512)
        kvm_doc = doc.get("kvm")
        r.need(kvm_doc is None or isinstance(kvm_doc, dict), "member 'kvm' must be a JSON object or null")
        kvm = _kvm_from_json(r, kvm_doc, machine) if kvm_doc is not None else None
        stack = r.opt_obj(doc.get("stack"), "stack")
        from .stack import libvirt_from_json, qemu_from_json

        qemu = qemu_from_json(r, stack.get("qemu")) if stack is not None and stack.get("qemu") is not None else None
        libvirt = (libvirt_from_json(r, stack.get("libvirt"))
                   if stack is not None and stack.get("libvirt") is not None else None)
        unavailable = []
        for i, item in enumerate(r.lst(doc.get("unavailable"), "unavailable", 4096)):
            u = r.obj(item, f"unavailable[{i}]")
            unavailable.append(Unavailable(r.string(u.get("what"), f"unavailable[{i}].what", 1024),
                                           r.integer(u.get("errno", 0), f"unavailable[{i}].errno", 0, 1 << 16),
                                           r.string(u.get("error", ""), f"unavailable[{i}].error", 64),
                                           r.string(u.get("detail", ""), f"unavailable[{i}].detail", 4096)))
        profile = cls(kernel, kernel_version, machine, kvm, qemu, libvirt, tuple(unavailable), digest, source, doc)
        if verified is not None:
            verified[digest] = profile
        return profile

    # -- the hook view ---------------------------------------------------------------------

    def to_view(self) -> tuple[Any, ...]:
        """The model as marshal-able values (:func:`from_view` is its inverse)."""
        kvm = None
        if self.kvm is not None:
            section = self.kvm.arch
            kvm = (self.kvm.device, self.kvm.api_version, self.kvm.caps,
                   None if section is None else arches.get(self.machine).section_to_view(section))
        qemu = None
        if self.qemu is not None:
            q = self.qemu
            qemu = (q.binary, q.version_text, q.package,
                    tuple((m.name, m.alias, m.default, m.deprecated) for m in q.machines),
                    q.host_cpu_model, q.host_cpu_props, q.cpu_definitions, q.named_cpu_props)
        libvirt = None
        if self.libvirt is not None:
            lv = self.libvirt
            dc = lv.domcaps
            caps = None
            if dc is not None:
                hm = dc.host_model
                caps = (dc.machine, dc.emulator,
                        None if hm is None else (hm.model, hm.vendor, hm.features), dc.cpu_modes,
                        None if dc.custom_models is None else
                        {k: (m.usable, m.blockers) for k, m in dc.custom_models.items()},
                        dc.host_model_xml)
            cpu = None if lv.cpu is None else (lv.cpu.features, lv.cpu.models, lv.cpu.host_features)
            libvirt = (lv.uri, lv.version_text, lv.hypervisor_version, lv.host_uuid, caps, cpu)
        return (self.kernel_release, self.kernel_version, self.machine, kvm, qemu, libvirt,
                tuple((u.what, u.errno, u.error, u.detail) for u in self.unavailable), self.digest)

    @classmethod
    def from_view(cls, v: Any) -> Profile:
        """Rebuild from :meth:`to_view` values; TypeError/ValueError on anything else. Every
        member is typed here (exact types), as strictly as :meth:`from_json` reads the JSON."""
        _tuple(v, 8)
        kernel, kernel_version, machine, kvm_v, qemu_v, libvirt_v, unavail, digest = v
        if machine not in arches.NAMES or type(kernel) is not str or type(digest) is not str \
                or type(kernel_version) is not str or not digest.startswith("sha256:") or len(digest) > 80:
            raise ValueError("not a profile view")
        kvm = None
        if kvm_v is not None:
            _tuple(kvm_v, 4)
            device, api, caps, section_v = kvm_v
            if not (device is None or type(device) is str) or not (api is None or type(api) is int):
                raise ValueError("not a profile view")
            _dict_of(caps, str, int)
            section = None if section_v is None else arches.get(machine).section_from_view(section_v)
            kvm = KvmInfo(device, api, caps, section)
        if qemu_v is not None or libvirt_v is not None:
            # the stack's model loads only for profiles that have one (not the lab's KVM-only ones)
            from .stack import CustomModel, DomCaps, HostModel, LibvirtCpu, LibvirtInfo, Machine, QemuInfo
        qemu = None
        if qemu_v is not None:
            _tuple(qemu_v, 8)
            binary, vtext, package, machines, model, props, defs, named = qemu_v
            _tuple(machines)
            for m in machines:
                _tuple(m, 4)
            qemu = QemuInfo(binary, vtext, package, tuple(Machine(*m) for m in machines), model, props, defs, named)
        libvirt = None
        if libvirt_v is not None:
            _tuple(libvirt_v, 6)
            uri, vtext, hv, uuid, caps_v, cpu_v = libvirt_v
            dc = None
            if caps_v is not None:
                _tuple(caps_v, 6)
                m, emu, hm, modes, custom, hm_xml = caps_v
                if hm is not None:
                    _tuple(hm, 3)
                if custom is not None:
                    _dict_of(custom, str, tuple)
                    for c in custom.values():
                        _tuple(c, 2)
                dc = DomCaps(m, emu, None if hm is None else HostModel(*hm), tuple(modes),
                             None if custom is None else {k: CustomModel(*c) for k, c in custom.items()}, hm_xml)
            if cpu_v is not None:
                _tuple(cpu_v, 3)
            libvirt = LibvirtInfo(uri, vtext, hv, uuid, dc, None if cpu_v is None else LibvirtCpu(*cpu_v))
        _tuple(unavail)
        for u in unavail:
            _tuple(u, 4)
            if not (type(u[0]) is str and type(u[1]) is int and type(u[2]) is str and type(u[3]) is str):
                raise ValueError("not a profile view")
        return cls(kernel, kernel_version, machine, kvm, qemu, libvirt,
                   tuple(Unavailable(*u) for u in unavail), digest)


def _tuple(v: object, n: int | None = None) -> None:
    if type(v) is not tuple or (n is not None and len(v) != n):
        raise ValueError("not a profile view")


def _shown(v: object, limit: int = 40) -> str:
    from ..errors import printable

    return printable(repr(v), limit)


def _dict_of(d: object, kt: type, vt: type) -> None:
    # exact types, checked in C (set(map(type, ...))): a view holds only what to_view wrote
    if type(d) is not dict or not set(map(type, d)) <= {kt} or not set(map(type, d.values())) <= {vt}:
        raise ValueError("not a profile view")


def _kvm_from_json(r: Reader, doc: dict[str, Any], machine: str) -> KvmInfo:
    device = r.opt_string(doc.get("device"), "kvm.device", 256)
    api = doc.get("api_version")
    api_version = None if api is None else r.integer(api, "kvm.api_version", 0, 1 << 16)
    caps_doc = r.obj(doc.get("caps", {}), "kvm.caps", 4096)
    caps = {r.name(k, "kvm.caps", "capability names", 64): r.integer(v, f"kvm.caps.{k}", -(1 << 63), (1 << 64) - 1)
            for k, v in caps_doc.items()}
    section_doc = doc.get(machine)
    section = None
    if section_doc is not None:
        section = arches.get(machine).section_from_json(r, r.obj(section_doc, f"kvm.{machine}"), f"kvm.{machine}")
    return KvmInfo(device, api_version, caps, section)


# -- files -----------------------------------------------------------------------------

def _canonical(doc: dict[str, Any]) -> bytes:
    import json

    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def digest_of(doc: dict[str, Any]) -> str:
    import hashlib

    body = {k: v for k, v in doc.items() if k not in _UNDIGESTED}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def finalize(doc: dict[str, Any], probe_seconds: float, hostname: str) -> dict[str, Any]:
    """Stamp a probe's document with format, version, meta and digest."""
    import time

    from ..version import __version__

    doc = dict(doc, format=FORMAT, version=VERSION)
    doc["meta"] = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "probe_seconds": round(probe_seconds, 3), "hostname": hostname,
                   "abiguard_version": __version__}
    doc["digest"] = digest_of(doc)
    return doc


def render(doc: dict[str, Any]) -> str:
    """Deterministic text: sorted keys, one-space indent, trailing newline."""
    import json

    return json.dumps(doc, sort_keys=True, indent=1) + "\n"


def atomic_write(path: str, text: str | bytes, mode: int = 0o644) -> tuple[int, int, int]:
    """Write a file so that a reader sees the old content or the new one, never a torn one.
    Returns (inode, size, mtime_ns) of the file written, read from the file itself before
    it replaced the old one (a later look at the path may see another writer's file)."""
    import os
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".abiguard-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
            st = os.fstat(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return (st.st_ino, st.st_size, st.st_mtime_ns)


HOOKVIEW_SUFFIX = ".hookview"
#: the view's first bytes: format name and version; then the payload's length (4 bytes,
#: big-endian) and the binding (below): a torn, damaged or foreign view is noticed before
#: marshal reads it
_VIEW_MAGIC = b"abiguard-hookview-6\n"
#: the binding: sha256 over the JSON file's bytes the view was made from followed by the
#: payload -- the view is read only as the exact one :func:`save` wrote for that JSON. A
#: body crafted or damaged under a kept frame, or a view paired with another JSON, is read
#: as absent (format 5 bound the JSON alone, and a re-framed body of valid types but other
#: values, e.g. ``kvm`` None, changed the hook's answer: issue 22's fuzz, input 757).
_BOUND = 32
#: where the payload starts: after the magic, its length (4 bytes) and the binding
VIEW_PAYLOAD_AT = len(_VIEW_MAGIC) + 4 + _BOUND
#: a view bigger than this is not one of ours
MAX_VIEW_BYTES = 16 * 1024 * 1024


def save(doc: dict[str, Any], path: str) -> Profile:
    """Write the JSON profile, then its hook view.

    The view holds the validated model in marshal form and the (inode, size, mtime) of the
    JSON file this call wrote, taken from that file itself: two refreshes racing each
    other can leave a view that belongs to the other's JSON, and the key then does not
    match, so the hook reads the JSON instead. The binding (sha256 over the JSON's bytes and
    the payload) keeps a damaged or crafted view from ever reaching marshal."""
    import marshal

    model = Profile.from_json(doc, path)
    text = render(doc).encode()
    key = atomic_write(path, text)
    payload = marshal.dumps((key, model.to_view()))
    atomic_write(path + HOOKVIEW_SUFFIX, framed_view(payload, binding(text, payload)))
    return model


def framed_view(payload: bytes, bound: bytes) -> bytes:
    """The hook view's bytes around ``payload`` with the binding ``bound`` (what :func:`save`
    writes with :func:`binding`; the tamper tests frame other bodies the same way)."""
    return _VIEW_MAGIC + len(payload).to_bytes(4, "big") + bound + payload


def _stat_key(path: str) -> tuple[int, int, int]:
    import os

    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def load_view(path: str) -> Profile | None:
    """The profile from the hook view at ``path + HOOKVIEW_SUFFIX`` if it is whole, ours
    and made from the JSON now at ``path``; None otherwise (read the JSON then).

    The view is trusted no further than the JSON (issue 22): its sizes are checked before
    marshal allocates anything; it must be the one :func:`save` wrote for the exact bytes
    of the JSON now at ``path`` (sha256 over those bytes and the payload, compared before
    marshal reads the payload) and hold the model of that JSON's digest; every member is
    typed (:meth:`Profile.from_view`). Whoever can rewrite the view can rewrite the JSON
    (both are root's, 0644 in /var/lib/abiguard), so the JSON is what the checks trust. Any doubt,
    any error (MemoryError included): None, and the hook reads the JSON."""
    try:
        with open(path + HOOKVIEW_SUFFIX, "rb") as f:
            data = f.read(MAX_VIEW_BYTES + 1)
        head = len(_VIEW_MAGIC)
        if len(data) > MAX_VIEW_BYTES or data[:head] != _VIEW_MAGIC:
            return None
        payload = data[VIEW_PAYLOAD_AT:]
        if int.from_bytes(data[head:head + 4], "big") != len(payload):
            return None
        with open(path, "rb") as f:
            text = f.read(MAX_BYTES + 1)
        if len(text) > MAX_BYTES or binding(text, payload) != data[head + 4:VIEW_PAYLOAD_AT]:
            return None
        key, view = _bounded_loads(payload)
        if type(key) is not tuple or tuple(key) != _stat_key(path):
            return None
        model = Profile.from_view(view)
        if model.digest != _json_digest(text):
            return None
        return model
    except Exception:   # noqa: BLE001 -- any doubt: the JSON (MemoryError, RecursionError, ...)
        return None


#: the most memory marshal may take while it reads a view: a view of MAX_VIEW_BYTES needs a
#: small part of this, and a crafted container count (marshal allocates the count it reads
#: before its items) then fails at once instead of allocating, and freeing, gigabytes
VIEW_MEMORY = 1 << 30


def _bounded_loads(payload: bytes) -> Any:
    """marshal.loads with the data segment capped (RLIMIT_DATA) while it runs: a view with a
    valid frame claiming a list of 2**31 items is a MemoryError (read the JSON), not a
    run of tens of seconds (issue 22's fuzz shapes)."""
    import marshal
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = VIEW_MEMORY if hard == resource.RLIM_INFINITY else min(VIEW_MEMORY, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return marshal.loads(payload)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        return marshal.loads(payload)
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def binding(text: bytes, payload: bytes) -> bytes:
    """The view's binding (:data:`_BOUND` bytes): sha256 over the JSON's bytes, then the
    payload -- the one place that says what binds a view to its JSON (save, load_view, and
    the tests that write views as someone who knows the format would)."""
    import hashlib

    digest = hashlib.sha256(text)
    digest.update(payload)
    return digest.digest()


def _json_digest(text: bytes) -> str | None:
    """The top-level ``digest`` member of a JSON profile as :func:`render` writes it (one
    space of indent marks the top level; a JSON string holds no raw newline)."""
    mark = b'\n "digest": "'
    at = text.find(mark)
    if at < 0:
        return None
    start = at + len(mark)
    end = text.find(b'"', start, start + 100)
    return text[start:end].decode("ascii", "replace") if end > 0 else None


def load_for_hook(path: str) -> Profile:
    """The profile at ``path``, from its hook view when that is current, else validated JSON."""
    return load_view(path) or load(path)


def loads(text: str | bytes, source: str, verified: dict[str, Profile] | None = None) -> Profile:
    doc = parse_json(text, source, ProfileError)
    return Profile.from_json(doc, source, verified)


def parse_json(text: str | bytes, source: str, error: type[InputError] = ProfileError) -> Any:
    """JSON from an untrusted file: size-capped; too deep a nesting (json's decoder
    recurses) and bad JSON are both an InputError naming the file."""
    import json

    if len(text) > MAX_BYTES:
        raise error(source, f"larger than {MAX_BYTES} bytes: not an abiguard file")
    try:
        return json.loads(text)
    except RecursionError:
        raise error(source, "nested too deeply: not an abiguard file") from None
    except ValueError as e:
        raise error(source, f"not valid JSON ({str(e)[:200]})") from None


def load(path: str, verified: dict[str, Profile] | None = None) -> Profile:
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ProfileError(path, f"cannot read: {e.strerror}") from e
    return loads(text, path, verified)


def load_labelled(paths: list[str], verified: dict[str, Profile] | None = None) -> list[Profile]:
    """Profiles named by their paths (shown in reports)."""
    return [load(path, verified).with_label(path) for path in paths]
