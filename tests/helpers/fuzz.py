"""The fuzz suite's seeds, mutators and oracles (tests/test_fuzz.py).

Seeds are real inputs: domain XMLs as libvirt and abiguard write them (arm64 and x86,
pinned, stamped by a previous hop, with <qemu:commandline> in its shapes), the bundled
profiles, their hook views and contracts. Mutators change bytes and structure. The
oracles are the hook's promises, checked on every input:

* exit 0 only with output that libxml2 parses, whose every byte except abiguard's stamp
  and pins equals the input, and whose pins (as libvirt reads them) are the plan's;
* exit 1 with exactly one ``abiguard:`` line of bounded length;
* never a traceback, an internal error on bad input, or a run past the deadline.
"""
from __future__ import annotations

import os
import random
import time
from typing import Any

from lxml import etree

from abiguard.builtin import builtin_profiles
from abiguard.errors import MAX_LINE, AbiguardError, InputError
from abiguard.hook import protocol
from abiguard.model import contract, profile
from abiguard.model.names import LD_PRELOAD, QEMU_NS
from abiguard.preload import ENV_PINS
from abiguard.xml import domain as domxml
from abiguard.xml.contract import to_xml_text
from abiguard.xml.edit import boot_stamp

P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
K61, K612, K72 = "6.1.0-50-arm64", "6.12.117+deb13-arm64", "7.2.13+deb14-arm64"
UUID = "6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10"
#: no single hook run may take longer than this, whatever the input
RUN_LIMIT = 3.0


def _domain(meta: str, extra: str = "", arch: str = "aarch64", head: str = "") -> bytes:
    machine = "virt" if arch == "aarch64" else "pc-q35-7.2"
    cpu = "<cpu mode='host-passthrough'/>" if arch == "aarch64" else "<cpu mode='custom'><model>kvm64</model></cpu>"
    return (f"<?xml version='1.0' encoding='UTF-8'?>\n<domain type='kvm'{head}>\n  <name>vm</name>\n"
            f"  <uuid>{UUID}</uuid>\n  <metadata>\n    <app:x xmlns:app='urn:app'/>\n    {meta}\n  </metadata>\n"
            f"  <memory unit='KiB'>65536</memory>\n  <os><type arch='{arch}' machine='{machine}'>hvm</type></os>\n"
            f"  {cpu}\n  <devices><emulator>/usr/bin/qemu-system-{arch}</emulator></devices>\n{extra}</domain>\n"
            ).encode()


def xml_seeds() -> list[bytes]:
    c61 = contract.from_profile(profile.load(P[K61]), "psci")
    c72 = contract.from_profile(profile.load(P[K72]))
    q = f"xmlns:qemu='{QEMU_NS}'"
    seeds = [
        _domain(""),
        _domain(to_xml_text(c72) + boot_stamp(c72).decode()),
        _domain(to_xml_text(c61) + boot_stamp(c61).decode()),
        _domain(to_xml_text(c61) + boot_stamp(c61).decode(), f"<qemu:commandline {q}/>\n", head=f" {q}"),
        _domain(to_xml_text(c61) + boot_stamp(c61).decode(),
                f"<qemu:commandline {q}><qemu:arg value='-S'/><qemu:env name='ABIGUARD_PINS' value='0x1=0x1'/>"
                "</qemu:commandline>\n"),
    ]
    # unpinned VMs the started hook saw boot on 7.2 and on 6.1 (abiguard.hook.seen)
    from abiguard.hook import seen

    for name in (K72, K61):
        got = seen.elements(_domain(""), profile.load(P[name]))
        assert got is not None
        seeds.append(_domain(got[1].decode() + got[0]))
    # what the hook itself wrote on a previous hop
    root = _fake_root(K72)
    for s in list(seeds):
        rc, out, _err = run_hook(root, ["hook", "vm", "migrate", "begin", "-"], s)
        if rc == 0 and out:
            seeds.append(out)
    return seeds


_ROOTS: dict[str, str] = {}
_BASE: list[str] = []


def _new_root(prefix: str) -> str:
    """A fresh directory below one temporary base the process removes when it exits: the
    fake roots live as long as the campaigns that share them, and never outlive the run
    (tests/test_host_untouched.py)."""
    import atexit
    import shutil
    import tempfile

    if not _BASE:
        _BASE.append(tempfile.mkdtemp(prefix="abiguard-fuzz-"))
        atexit.register(shutil.rmtree, _BASE[0], True)
    return tempfile.mkdtemp(prefix=prefix, dir=_BASE[0])


def remove_roots() -> None:
    """Every fake root made so far, gone (the campaigns' module fixture calls it)."""
    import shutil

    if _BASE:
        shutil.rmtree(_BASE.pop(), ignore_errors=True)
    _ROOTS.clear()


def _fake_root(profile_name: str) -> str:
    """A host root (ABIGUARD_ROOT) with a bundled profile and the preload library."""
    if profile_name in _ROOTS:
        return _ROOTS[profile_name]
    root = _new_root(f"{profile_name[:8]}-")
    os.makedirs(os.path.join(root, "var/lib/abiguard"))
    os.makedirs(os.path.join(root, "usr/lib/abiguard"))
    open(os.path.join(root, "usr/lib/abiguard/abiguard_pin.so"), "wb").close()
    profile.save(profile.load(P[profile_name]).doc, os.path.join(root, "var/lib/abiguard/host-profile.json"))
    _ROOTS[profile_name] = root
    return root


def run_hook(root: str, argv: list[str], data: bytes) -> tuple[int, bytes, str]:
    """The real hook protocol, in-process, on a fake root (its paths move with ABIGUARD_ROOT)."""
    from abiguard import state

    saved = {k: getattr(state, k) for k in ("ROOT", "ETC", "STATE", "LOGDIR", "CONFIG", "PROFILE", "INCOMING",
                                            "LOG")}
    state.ROOT = root
    state.ETC = os.path.join(root, "etc/abiguard")
    state.STATE = os.path.join(root, "var/lib/abiguard")
    state.LOGDIR = os.path.join(root, "var/log/abiguard")
    state.CONFIG = os.path.join(state.ETC, "abiguard.toml")
    state.PROFILE = os.path.join(state.STATE, "host-profile.json")
    state.INCOMING = os.path.join(state.STATE, "incoming")
    state.LOG = os.path.join(state.LOGDIR, "hook.log")
    try:
        return protocol.run(argv, data, time.monotonic() + protocol.DEADLINE)
    finally:
        for k, v in saved.items():
            setattr(state, k, v)


# -- mutators ----------------------------------------------------------------------------

_SNIPPETS = [
    b"<!-- c -->", b"<?pi x?>", b"<![CDATA[x]]>", b"&amp;", b"&#10;", b"&#0;", b"\x00", b"\xff\xfe", b"\"", b"'",
    b"<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'/>",
    b"<q:env xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0' name='LD_PRELOAD' "
    b"value='/usr/lib/abiguard/abiguard_pin.so'/>",
    b"<q:env xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0' name='ABIGUARD_PINS' "
    b"value='0x6030000000140000=0x10001'/>",
    b"<s:stamp xmlns:s='urn:abiguard:stamp:1' contract='x'/>", b"<s:stamp xmlns:s='urn:abiguard:stamp:1}x'/>",
    b"<metadata/>", b"<os><type arch='x86_64' machine='pc'>hvm</type></os>",
    b"<cpu mode='custom'><model>x</model></cpu>",
    b"<a>" * 40, b"</a>", b"<x/>" * 50, b" xmlns:abiguard='urn:abiguard:contract:1'", b" digest='sha256:0'",
    b"0x6030000000140000", b"0x603000000013c080", b"0xffffffffffffffffff", b"psci+pmu", b"aarch64", b"x86_64",
    b"<!DOCTYPE d>", b"\n", b"\t", b"\xc3\xa9", b"\xed\xa0\x80",
]


def mutate_bytes(rng: random.Random, data: bytes, rounds: int = 3) -> bytes:
    """Byte- and markup-level edits at random positions."""
    b = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        op = rng.randrange(7)
        at = rng.randrange(len(b) + 1) if b else 0
        if op == 0 and b:                               # delete a run
            del b[at:at + rng.randint(1, 40)]
        elif op == 1:                                   # insert a snippet
            b[at:at] = rng.choice(_SNIPPETS)
        elif op == 2 and b:                             # flip a byte
            b[min(at, len(b) - 1)] = rng.randrange(256)
        elif op == 3 and b:                             # duplicate a run
            run = bytes(b[at:at + rng.randint(1, 400)])
            b[at:at] = run
        elif op == 4:                                   # tags next to tags: self-closing/end-tag joins
            b[at:at] = rng.choice([b"/>", b"</", b">", b"<"])
        elif op == 5 and b:                             # swap a quoted attribute value
            q = bytes(b).find(b"'", at)
            if q >= 0:
                e = bytes(b).find(b"'", q + 1)
                if e > q:
                    b[q + 1:e] = rng.choice(_SNIPPETS)
        elif op == 6 and b:                             # cut the document
            del b[at:]
    return bytes(b)


#: markup libvirt may well send around abiguard's elements: the hook must keep it byte for byte
_BENIGN = [
    b"\n  ", b"<!-- a comment, even one naming abiguard:contract -->", b"<?xml-stylesheet x?>",
    b"<x:y xmlns:x='urn:x' a='1'/>", b"<x:y xmlns:x='urn:x'><x:z>t</x:z></x:y>",
    b"<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'/>",
    b"<q:commandline xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'><q:arg value='-S'/></q:commandline>",
    b"<commandline xmlns='http://libvirt.org/schemas/domain/qemu/1.0'><env name='OTHER' value='1'/></commandline>",
    b"<q:commandline xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'><q:env name='ABIGUARD_PINS' value='0x1=0x1'/>"
    b"</q:commandline>",
    b"<description>a &amp; b</description>", b"<title>\xc3\xa9t\xc3\xa9</title>", b"<clock offset='utc'/>",
    b"<s:stamp xmlns:s='urn:abiguard:stamp:1}other'/>", b"<on_reboot>restart</on_reboot>",
]


def mutate_markup(rng: random.Random, data: bytes, rounds: int = 3) -> bytes:
    """Benign edits: markup inserted between elements outside abiguard's own, as another
    tool or libvirt itself could write it. Most such inputs must still be allowed."""
    b = bytes(data)
    for _ in range(rng.randint(1, rounds)):
        try:
            f = domxml.parse(b) if rng.random() < 0.9 else None
        except InputError:
            f = None
        own = []
        if f is not None:
            own = [(s.start, s.end) for s in f.stamp_spans]
            if f.contract is not None:
                start = b.find(b"<abiguard:contract")
                end = b.find(b"</abiguard:contract>") + len(b"</abiguard:contract>")
                own.append((start, end))
        import re

        ends = [m.end() for m in re.finditer(rb">", b) if not any(a <= m.start() < e for a, e in own)]
        if not ends:
            return b
        at = rng.choice(ends[1:-1] or ends)
        b = b[:at] + rng.choice(_BENIGN) + b[at:]
    return b


def mutate_json(rng: random.Random, doc: Any, rounds: int = 3) -> Any:
    """Member-level edits of a JSON document: types swapped, members dropped or added,
    numbers and hex strings bent, containers nested."""
    import copy

    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, rounds)):
        path = _random_path(rng, doc)
        if not path:
            continue
        parent, key = path[-1]
        value = parent[key]
        choice = rng.randrange(9)
        if choice == 0:
            parent.pop(key)
        elif choice == 1:
            parent[key] = rng.choice([None, True, 0, -1, 1 << 70, 1.5, "", "x" * 5000, [], {}, [[[]]], "0x", "0x00"])
        elif choice == 2 and isinstance(value, str):
            parent[key] = value + rng.choice(["0", "\n", "\"", "\\", "&#10;", "}", " ", "\x00", "é"])
        elif choice == 3 and isinstance(value, str) and value.startswith("0x"):
            parent[key] = rng.choice(["0x" + "f" * 17, "0x0" + value[2:], value.upper(), "-" + value, value[:3]])
        elif choice == 4 and isinstance(parent, dict):
            parent[rng.choice(["x", "0x6030000000140009", "digest", "format", "\x00", "A" * 100])] = value
        elif choice == 5 and isinstance(value, list):
            value.extend(value[:rng.randint(0, 3)])
            rng.shuffle(value)
        elif choice == 6:
            parent[key] = [value]
        elif choice == 7 and isinstance(value, dict):
            parent[key] = list(value.items())[:3]
        elif choice == 8 and isinstance(value, int) and not isinstance(value, bool):
            parent[key] = rng.choice([value + 1, -value, value << 40, str(value)])
    return doc


def _random_path(rng: random.Random, doc: Any) -> list[tuple[Any, Any]]:
    path: list[tuple[Any, Any]] = []
    node = doc
    for _ in range(rng.randint(1, 8)):
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
        elif isinstance(node, list) and node:
            key = rng.randrange(len(node))
        else:
            break
        path.append((node, key))
        node = node[key]
    return path


# -- oracles -------------------------------------------------------------------------------

def libvirt_env(xml: bytes) -> dict[str, str]:
    root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False))
    env: dict[str, str] = {}
    for e in root.xpath("./q:commandline/q:env", namespaces={"q": QEMU_NS}):
        env[e.get("name")] = e.get("value", "")
    return env


def _stripped(xml: bytes) -> bytes:
    """The bytes abiguard does not own: stamps and its own env elements cut out, and the
    empty containers it opens or creates (metadata, commandline) in one normal form."""
    import re

    f = domxml.parse(xml)
    cuts = [(s.start, s.end) for s in f.stamp_spans]
    cuts += [(e.span.start, e.span.end) for e in f.envs if e.name in (LD_PRELOAD, ENV_PINS)]
    out, pos = [], 0
    for a, b in sorted(cuts):
        out.append(xml[pos:a])
        pos = b
    out.append(xml[pos:])
    text = b"".join(out)
    text = re.sub(rb"<metadata(\s[^<>]*)?/>", rb"<metadata\1></metadata>", text)
    text = re.sub(rb"<([\w.-]+:)?commandline(\s[^<>]*)?/>", rb"<\1commandline\2></\1commandline>", text)
    q = f'<abiguard-q:commandline xmlns:abiguard-q="{QEMU_NS}"></abiguard-q:commandline>'.encode()
    return text.replace(q, b"").replace(b"<metadata></metadata>", b"")


def run_hook_configured(root: str, config: str, argv: list[str], data: bytes) -> tuple[int, bytes, str]:
    """:func:`run_hook` with ``config`` as the fake root's abiguard.toml for this one run
    (removed after it), its answer held to :func:`check_hook_answer`."""
    path = os.path.join(root, "etc/abiguard/abiguard.toml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t0 = time.monotonic()
    try:
        with open(path, "w") as f:
            f.write(config)
        rc, out, err = run_hook(root, argv, data)
    finally:
        os.unlink(path)
    check_hook_answer(root, argv, data, rc, out, err, time.monotonic() - t0)
    return rc, out, err


def check_hook_answer(root: str, argv: list[str], data: bytes, rc: int, out: bytes, err: str, took: float) -> None:
    """Every promise of the hook, for one input and its answer (AssertionError if one fails)."""
    assert took < RUN_LIMIT, f"hook ran {took:.2f} s"
    assert "Traceback" not in err and "internal error" not in err, err[:500]
    if rc == 1:
        lines = err.splitlines()
        assert out == b"" and len(lines) == 1 and lines[0].startswith("abiguard: "), err[:500]
        assert len(lines[0]) <= MAX_LINE
        return
    assert rc == 0, (rc, err[:500])
    if not out:
        return                       # unpinned VM allowed: the XML stays as it came
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        return                       # libvirt (libxml2) never sends this document: no promise about it
    etree.fromstring(out, parser)    # what libxml2 parses stays parseable
    before, after = domxml.parse(data), domxml.parse(out)
    assert len(after.stamp_spans) == 1, "one stamp after every hop"
    # every byte but abiguard's stamp and pins is the input's
    b, a = _stripped(data), _stripped(out)
    if a != b:
        import difflib
        sm = difflib.SequenceMatcher(None, b, a, autojunk=False)
        bad = [(op, b[i1:i2][:80], a[j1:j2][:80]) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal"]
        raise AssertionError(f"the hook changed other bytes: {bad[:3]}")
    if before.contract is not None and _origin_kind(before) == "seen":
        # an unpinned VM abiguard saw boot: restamped, its qemu:env left exactly as it came
        assert libvirt_env(out) == libvirt_env(data)
        return
    # the pins QEMU gets are the plan's
    env = libvirt_env(out)
    assert env.get(LD_PRELOAD, "/usr/lib/abiguard/abiguard_pin.so") == "/usr/lib/abiguard/abiguard_pin.so"
    assert sum(1 for e in after.envs if e.name == ENV_PINS) <= 1
    expected = _planned_pins(root, before)
    if expected is not None:
        assert env.get(ENV_PINS, "") == expected, (env.get(ENV_PINS), expected)


_HOSTS: dict[str, profile.Profile] = {}


def _origin_kind(facts: domxml.DomainFacts) -> str | None:
    from abiguard.xml.contract import from_element

    try:
        return from_element(facts.contract, "fuzz").origin.kind
    except AbiguardError:
        return None


def _planned_pins(root: str, facts: domxml.DomainFacts) -> str | None:
    """ABIGUARD_PINS as the engine plans them for this input on this root's host (None
    where the plan does not apply: no contract, or an arch without the library)."""
    from abiguard.arch import get
    from abiguard.engine import verdict
    from abiguard.model.pins import env_value
    from abiguard.model.problem import Policy
    from abiguard.model.stamp import HopStamp
    from abiguard.xml.contract import from_element

    if facts.contract is None:
        return None
    sealed = from_element(facts.contract, "fuzz")
    arch = get(sealed.arch)
    if not arch.uses_preload:
        return None
    if sealed.origin.kind == "seen":
        return None        # an unpinned VM abiguard saw boot: its pins are not the hook's (hook.seen)
    stamp = HopStamp.from_element(facts.stamp) if facts.stamp is not None else None
    host = _HOSTS.get(root)
    if host is None:
        host = _HOSTS[root] = profile.load(os.path.join(root, "var/lib/abiguard/host-profile.json"))
    v = verdict.check(sealed, host, Policy(), stamp.stream if stamp is not None else None)
    return env_value(arch.plan_pins(sealed, host, v))


def check_model(load: Any, *args: Any) -> object | None:
    """A boundary reader either returns a model or raises an InputError; nothing else."""
    try:
        return load(*args)
    except InputError as e:
        assert str(e).startswith("abiguard: ") and "\n" not in str(e), str(e)[:300]
        return None


def check_engine(p: profile.Profile) -> None:
    """Whatever a profile that passed the boundary holds, the engine answers or says why:
    no exception but abiguard's own."""
    from abiguard.engine import baseline, verdict

    others = [profile.load(P[K61]), profile.load(P[K72])]
    for other in others:
        calls = (lambda o=other: verdict.check_pair(p, o), lambda o=other: verdict.check_pair(o, p),
                 lambda o=other: baseline.compute([p, o]), lambda o=other: verdict.realise(contract.from_profile(o), p))
        for call in calls:
            try:
                call()
            except AbiguardError:
                pass


# -- issue 22's shapes: stamps claiming less, crafted view bodies, pinned records ----------------

def forged_stamp(rng: random.Random, c: contract.Contract) -> str:
    """A stamp of ``c`` that claims less than its contract: an empty, shortened or thinned
    stream, some attributes dropped, its checksum recomputed (anyone can)."""
    from abiguard.model.stamp import HopStamp

    stream = tuple(c.body.stream)
    shape = rng.randrange(4)
    if shape == 0:
        claim: tuple[int, ...] = ()
    elif shape == 1:
        claim = stream[:rng.randrange(len(stream))]
    elif shape == 2:
        drop = set(rng.sample(stream, rng.randint(1, min(8, len(stream)))))
        claim = tuple(r for r in stream if r not in drop)
    else:                                        # one dropped, the rest shuffled or repeated
        gone = rng.choice(stream)
        claim = tuple(r for r in stream if r != gone)
        claim = tuple(rng.sample(claim, len(claim))) + claim[:rng.randrange(3)]
    attrs = {"nonce": os.urandom(8).hex(), "at": "2026-01-01T00:00:00Z", "boot": "pin", "host": "h",
             "profile": "sha256:" + "0" * 64, "kernel": K72}
    for k in rng.sample(list(attrs), rng.randrange(len(attrs))):
        if k != "nonce":
            attrs.pop(k)
    return HopStamp.made(attrs, c.digest, claim).to_xml().decode()


def check_fail_open(argv: list[str], rc: int, err: str, must_refuse: bool, why: str) -> None:
    """The fail-open oracle: exit 0 where the honest input (or a pinned VM's record) refuses."""
    if must_refuse:
        assert rc == 1, f"fail-open ({why}): exit {rc} for {argv[2]} {err[:300]!r}"


def pinned_record(root: str, uuid: str, line: bytes | None) -> str:
    """Leave (or, ``line`` None, remove) the record of VM ``uuid`` on a fake root."""
    path = os.path.join(root, "var/lib/abiguard/pinned", uuid.lower())
    if line is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(line)
    return path


def without_contract(xml: bytes) -> bytes:
    """A pinned seed with its contract cut out (stamps and pins left), as ``virsh metadata
    --remove`` leaves it when only the contract goes."""
    start = xml.find(b"<abiguard:contract")
    end = xml.find(b"</abiguard:contract>")
    if start < 0 or end < 0:
        return xml
    return xml[:start] + xml[end + len(b"</abiguard:contract>"):]


def view_root(profile_name: str, tag: str) -> str:
    """A fresh host root (not shared with the other campaigns) whose view can be rewritten."""
    root = _new_root(f"view-{tag}-")
    os.makedirs(os.path.join(root, "var/lib/abiguard"))
    os.makedirs(os.path.join(root, "usr/lib/abiguard"))
    open(os.path.join(root, "usr/lib/abiguard/abiguard_pin.so"), "wb").close()
    profile.save(profile.load(P[profile_name]).doc, os.path.join(root, "var/lib/abiguard/host-profile.json"))
    return root


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, (tuple, list)):
        for i, v in enumerate(node[:64]):
            out += _leaves(v, path + (i,))
    elif isinstance(node, dict):
        for k in list(node)[:64]:
            out += _leaves(node[k], path + (k,))
    return out


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        new = dict(node)
        new[head] = _replace(node[head], rest, value)
        return new
    items = list(node)
    items[head] = _replace(items[head], rest, value)
    return tuple(items) if isinstance(node, tuple) else items


_WRONG = [None, True, 0, -1, 1 << 70, 1.5, "", "x" * 3000, b"\x00", (), [], {}, frozenset(), ("accepted",), {"a": 7},
          [None] * 5, (1, 2, 3), "0xffffffffffffffffff"]


def crafted_view_body(rng: random.Random, good: bytes) -> bytes:
    """The view ``good`` with its frame kept (length recomputed, the binding save wrote
    kept) around a crafted body: huge marshal length fields, or members of the wrong type
    or another value. The hook must answer as with ``good``: such a body is not the one
    save wrote, and the binding tells."""
    import marshal

    bound = good[profile.VIEW_PAYLOAD_AT - len(profile.binding(b"", b"")):profile.VIEW_PAYLOAD_AT]
    key, view = marshal.loads(good[profile.VIEW_PAYLOAD_AT:])
    shape = rng.randrange(4)
    if shape == 0:                  # a container claiming 2**31-1 (or a random huge count of) items
        count = rng.choice([0x7fffffff, 0xffffffff, 1 << 24, rng.randrange(1 << 32)]).to_bytes(4, "little")
        payload = b")\x02" + marshal.dumps(key) + rng.choice(b"[()<{") .to_bytes(1, "little") + count
        payload += rng.choice([b"", b"N" * rng.randrange(16), marshal.dumps(view)[:rng.randrange(200)]])
    elif shape == 1:                # a string or bytes with a huge length field inside a valid tuple
        body = marshal.dumps((key, view))
        at = rng.randrange(len(body))
        payload = body[:at] + rng.choice([b"s", b"u", b"a", b"z"]) + (0xfffffff0).to_bytes(4, "little") + body[at:]
    else:                           # members of the wrong type, 1-3 of them, anywhere in the model
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(_leaves(view)[1:] or [()])
            view = _replace(view, path, rng.choice(_WRONG))
        payload = marshal.dumps((key, view))
    return profile.framed_view(payload, bound)
