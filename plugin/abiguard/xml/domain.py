"""Domain XML on the hook's path: read the few facts abiguard needs from hostile XML as
libvirt itself reads them, and splice abiguard's per-hop stamp and pins into it without
touching anything else.

libvirt's view, which this reader keeps (src/conf/domain_conf.c, src/qemu/qemu_domain.c):
the *first* ``<os>``, ``<cpu>``, ``<name>``, ``<uuid>`` and ``<metadata>`` count;
namespaces are compared by their whole URI, whatever the prefix; ``<qemu:env>`` of every
``<qemu:commandline>`` reach QEMU; libvirt writes UTF-8 and libxml2 (without
XML_PARSE_HUGE, virxml.c) refuses documents nested deeper than 256 elements.

Uses the standard library's expat (lxml costs more to import than the whole hook may
take): no DTD is accepted, so no entity is ever declared or expanded and nothing is
fetched; the input is size-capped, parsed in chunks against a deadline, in time linear in
its size. Comments, processing instructions and CDATA inside abiguard's own elements are
refused, so this reader and lxml can never read one contract two ways.
"""
from __future__ import annotations

import pyexpat as expat  # the builtin module itself: xml.parsers.expat is three more imports
import time

from ..errors import InputError, printable
from ..model.names import CONTRACT_NS, LD_PRELOAD, QEMU_NS, QEMU_PREFIX, STAMP_NS
from ..preload import ENV_PINS, LIBRARY_PATH

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

MAX_BYTES = 4 * 1024 * 1024
#: libxml2's own limit without XML_PARSE_HUGE: libvirt never reads a deeper document
MAX_DEPTH = 256
#: abiguard's own elements nest 4 deep (contract/arm64/stream); anything deeper is not ours
MAX_OWN_DEPTH = 8
#: the parser is fed this much at a time, so the deadline is checked while it works
CHUNK = 64 * 1024
_OURS = (CONTRACT_NS, STAMP_NS)
_COMMANDLINE = (QEMU_NS, "commandline")
_ENV = (QEMU_NS, "env")
#: the tag kept for an element nested below depth 3 outside abiguard's own: never compared
_DEEP = ("", "")
#: what an attribute value abiguard writes may not hold (it goes between double quotes)
_UNSAFE_ATTR = frozenset('<>&"')


class Element:
    """A minimal ElementTree-style node (tag as ``{uri}local``), for our own subtrees."""

    __slots__ = ("tag", "attrib", "children", "_text")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag = tag
        self.attrib = attrib
        self.children: list[Element] = []
        self._text: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._text)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.attrib.get(key, default)

    def find(self, tag: str) -> Element | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[Element]:
        return [c for c in self.children if c.tag == tag]


class Span:
    """(start, end) byte offsets of an element in the input; ``inner`` is where its
    content ends (the start of its end tag), None for an empty-element tag ``<x/>``."""

    __slots__ = ("start", "end", "inner")

    def __init__(self, start: int, end: int, inner: int | None = None) -> None:
        self.start = start
        self.end = end
        self.inner = inner


class Env:
    """A ``<qemu:env>`` as libvirt reads it."""

    __slots__ = ("name", "value", "span")

    def __init__(self, name: str | None, value: str | None, span: Span) -> None:
        self.name, self.value, self.span = name, value, span


class DomainFacts:
    """What the hook reads from a domain XML."""

    __slots__ = ("name", "uuid", "domain_type", "domain_id", "vcpu", "vcpu_current", "arch", "machine",
                 "cpu_mode", "cpu_model", "cpu_features", "contract", "stamp", "stamp_spans", "metadata",
                 "domain_end", "commandlines", "envs")

    def __init__(self) -> None:
        self.name: str | None = None
        self.uuid: str | None = None
        self.domain_type: str | None = None
        #: the running domain's id (live XML only), its <vcpu> text and current= attribute
        self.domain_id: str | None = None
        self.vcpu: str | None = None
        self.vcpu_current: str | None = None
        self.arch: str | None = None
        self.machine: str | None = None
        self.cpu_mode: str | None = None
        self.cpu_model: str | None = None
        self.cpu_features: dict[str, str] = {}
        self.contract: Element | None = None
        self.stamp: Element | None = None
        #: every abiguard stamp element (all are replaced by one)
        self.stamp_spans: list[Span] = []
        #: the first <metadata>
        self.metadata: Span | None = None
        #: where </domain> starts
        self.domain_end: int | None = None
        #: every <qemu:commandline> child of <domain>, in order
        self.commandlines: list[Span] = []
        #: every <qemu:env> of every <qemu:commandline>, in order
        self.envs: list[Env] = []

    @property
    def qemu_env(self) -> dict[str, tuple[str, Span]]:
        """name -> (value, span) of the <qemu:env> QEMU gets for each name: the last one
        (libvirt's virCommandAddEnv replaces an earlier entry of the same name)."""
        return {e.name: (e.value or "", e.span) for e in self.envs if e.name is not None}


def _split(name: str) -> tuple[str, str]:
    """expat's "URI local" name: the URI may hold spaces, a local name never does."""
    uri, sep, local = name.rpartition(" ")
    return (uri, local) if sep else ("", name)


def _start_tag_end(data: bytes, start: int) -> int:
    """Index just past the '>' that closes the start tag at ``start`` (quotes honoured)."""
    i = start + 1
    n = len(data)
    while i < n:
        c = data[i]
        if c in (0x22, 0x27):
            close = data.find(bytes((c,)), i + 1)
            if close < 0:
                break
            i = close + 1
            continue
        if c == 0x3E:
            return i + 1
        i += 1
    raise InputError("domain XML", "unterminated tag")


def _check_encoding(data: bytes, source: str) -> None:
    """libvirt writes UTF-8; anything else is refused rather than read another way."""
    if data.startswith((b"\xfe\xff", b"\xff\xfe", b"\x00\x00\xfe\xff")) or b"\x00" in data[:4096]:
        raise InputError(source, "not UTF-8 (libvirt writes domain XML in UTF-8): refusing it")
    if data.startswith(b"<?xml"):
        head = data[:data.find(b"?>") + 2 if b"?>" in data[:256] else 256].lower()
        at = head.find(b"encoding")
        if at >= 0:
            rest = head[at + 8:].lstrip(b" \t\r\n=").lstrip(b" \t\r\n")
            value = rest[1:].split(rest[:1])[0] if rest[:1] in (b"'", b'"') else rest
            if value not in (b"utf-8", b"utf8"):
                raise InputError(source, f"declares encoding {printable(value.decode('ascii', 'replace'), 20)}; "
                                 "libvirt writes UTF-8: refusing it")


def parse(data: bytes, source: str = "domain XML", deadline: float | None = None) -> DomainFacts:
    """The facts of a domain XML; InputError naming what is wrong.

    :param deadline: a ``time.monotonic()`` value parsing must finish by
    """
    if len(data) > MAX_BYTES:
        raise InputError(source, f"larger than {MAX_BYTES} bytes: refusing to parse it")
    _check_encoding(data, source)
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    facts = DomainFacts()
    tags: list[tuple[str, str]] = []       # (uri, local) of every open element
    own: list[Element] = []                 # the open part of one of our subtrees
    own_start: list[int] = []
    starts: list[int] = []                  # byte index of every open element's start tag
    text: list[str] | None = None           # collecting <name>, <uuid>, <cpu><model>
    text_key = ""
    text_depth = 0
    first: set[str] = set()                 # which first-only elements were seen
    cpu: list[bool] = [False]               # inside the first <cpu>
    os_: list[bool] = [False]               # inside the first <os>
    env_name: list[Any] = []

    def fail(detail: str) -> None:
        raise InputError(source, detail)

    def no_dtd(*_args: object) -> None:
        fail("a DOCTYPE/DTD is not allowed in domain XML")

    def not_in_ours(*_args: object) -> None:
        if own:
            fail("comments, processing instructions and CDATA are not allowed inside abiguard's elements")

    def span_of(begin: int) -> tuple[int, bool]:
        """(end of the start tag, whether it is an empty-element tag <x/>)"""
        end = _start_tag_end(data, begin)
        return end, data[end - 2] == 0x2F

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal text, text_key, text_depth
        if own:     # inside a contract or stamp: its tree, nothing else (most elements of a hop)
            if len(own) >= MAX_OWN_DEPTH:
                fail("abiguard's elements nest deeper than they ever do")
            tags.append(_DEEP)
            starts.append(0)
            i = name.rfind(" ")
            el = Element("{" + name[:i] + "}" + name[i + 1:] if i >= 0 else "{}" + name, attrs)
            own[-1].children.append(el)
            own.append(el)
            return
        depth = len(tags) + 1
        if depth > 3:
            # below a device or another deep element: nothing abiguard reads, only the depth
            if depth > MAX_DEPTH:
                fail(f"nested deeper than {MAX_DEPTH} elements (libvirt's own limit)")
            tags.append(_DEEP)
            starts.append(0)
            return
        uri, local = _split(name)
        here = parser.CurrentByteIndex
        tags.append((uri, local))
        starts.append(here)
        if depth == 1:
            if (uri, local) != ("", "domain"):
                fail(f"root element is <{printable(local, 40)}>, expected <domain>")
            facts.domain_type = attrs.get("type")
            facts.domain_id = attrs.get("id")
            return
        parent = tags[-2]
        if depth == 2:
            if (uri, local) == ("", "metadata"):
                if "metadata" in first:
                    fail("more than one <metadata> element")
                first.add("metadata")
            elif (uri, local) == ("", "cpu") and "cpu" not in first:
                first.add("cpu")
                cpu[0] = True
                facts.cpu_mode = attrs.get("mode", "custom")
            elif (uri, local) == ("", "os") and "os" not in first:
                first.add("os")
                os_[0] = True
            elif (uri, local) in (("", "name"), ("", "uuid"), ("", "vcpu")) and local not in first:
                first.add(local)
                text, text_key, text_depth = [], local, depth
                if local == "vcpu":
                    facts.vcpu_current = attrs.get("current")
            return
        if depth == 3:
            if parent == ("", "metadata") and uri in _OURS:
                el = Element(f"{{{uri}}}{local}", attrs)
                own.append(el)
                own_start.append(here)
                if uri == CONTRACT_NS:
                    if facts.contract is not None:
                        fail("more than one abiguard contract in <metadata>")
                    facts.contract = el
                elif facts.stamp is None:
                    facts.stamp = el
            elif parent == _COMMANDLINE and (uri, local) == _ENV:
                env_name.append((attrs.get("name"), attrs.get("value"), here))
            elif os_[0] and parent == ("", "os") and local == "type" and uri == "" and "os/type" not in first:
                first.add("os/type")
                facts.arch, facts.machine = attrs.get("arch"), attrs.get("machine")
            elif cpu[0] and parent == ("", "cpu") and uri == "":
                if local == "feature":
                    facts.cpu_features.setdefault(attrs.get("name", ""), attrs.get("policy", "require"))
                elif local == "model" and "cpu/model" not in first:
                    first.add("cpu/model")
                    text, text_key, text_depth = [], "cpu_model", depth

    def end(name: str) -> None:
        nonlocal text
        if len(own) > 1 or (len(tags) > 3 and not own):   # a child of ours, or deep elsewhere
            if own:
                own.pop()
            tags.pop()
            starts.pop()
            return
        uri, local = tags.pop()
        begin = starts.pop()
        depth = len(tags) + 1
        here = parser.CurrentByteIndex
        if own:
            own.pop()
            if not own:
                tag_end, empty = span_of(begin)
                stop = tag_end if empty else data.index(b">", here) + 1
                at = own_start.pop()
                if uri == STAMP_NS:
                    facts.stamp_spans.append(Span(at, stop))
            return
        if text is not None and depth == text_depth:
            setattr(facts, text_key, "".join(text).strip())
            text = None
        if depth == 3 and (uri, local) == _ENV and env_name:
            env, value, at = env_name.pop()
            tag_end, empty = span_of(at)
            facts.envs.append(Env(env, value, Span(at, tag_end if empty else data.index(b">", here) + 1)))
        elif depth == 2:
            if (uri, local) == _COMMANDLINE:
                tag_end, empty = span_of(begin)
                facts.commandlines.append(Span(begin, tag_end if empty else data.index(b">", here) + 1,
                                               None if empty else here))
            elif (uri, local) == ("", "metadata") and facts.metadata is None:
                tag_end, empty = span_of(begin)
                facts.metadata = Span(begin, tag_end if empty else data.index(b">", here) + 1,
                                      None if empty else here)
            elif (uri, local) == ("", "cpu"):
                cpu[0] = False
            elif (uri, local) == ("", "os"):
                os_[0] = False
        elif depth == 1:
            facts.domain_end = here if data.startswith(b"</", here) else None

    def chars(content: str) -> None:
        if own:
            own[-1]._text.append(content)
        elif text is not None:
            text.append(content)

    parser.StartDoctypeDeclHandler = no_dtd
    parser.EntityDeclHandler = no_dtd
    parser.CommentHandler = not_in_ours
    parser.ProcessingInstructionHandler = not_in_ours
    parser.StartCdataSectionHandler = not_in_ours
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.buffer_text = True       # one call per text run, not per line
    try:
        for at in range(0, len(data), CHUNK):
            if deadline is not None and time.monotonic() > deadline:
                fail("took too long to parse: refusing it")
            parser.Parse(data[at:at + CHUNK], False)
        parser.Parse(b"", True)
    except expat.ExpatError as e:
        raise InputError(source, f"not well-formed XML ({e})") from None
    except RecursionError:
        raise InputError(source, "nested too deeply") from None
    if facts.domain_end is None:
        raise InputError(source, "no </domain> end tag (an empty <domain/> is not a domain)")
    return facts


def _safe_attr(value: str) -> bool:
    return value.isprintable() and _UNSAFE_ATTR.isdisjoint(value)


def _env_el(name: str, value: str) -> bytes:
    if not _safe_attr(value):
        raise ValueError(f"unsafe qemu:env value {value!r}")
    return f'<{QEMU_PREFIX}:env xmlns:{QEMU_PREFIX}="{QEMU_NS}" name="{name}" value="{value}"/>'.encode()


def _open_tag(data: bytes, span: Span) -> bytes:
    """``<x a='b'/>`` -> ``<x a='b'>`` (the element's own start tag, opened)."""
    return data[span.start:span.end - 2].rstrip() + b">"


def _end_tag(data: bytes, span: Span) -> bytes:
    """The end tag that matches an empty element's start tag (its qualified name)."""
    head = data[span.start + 1:span.end - 2]
    qname = head.split(None, 1)[0] if head.split() else head
    return b"</" + qname.rstrip(b"/") + b">"


def _pin_cuts(data: bytes, facts: DomainFacts, pins: str | None, library: str
              ) -> Iterator[tuple[int, int, bytes]]:
    """The destination's ABIGUARD_PINS (abiguard.model.pins): None leaves the XML as it
    is, "" removes abiguard's qemu:env elements wherever they are, a value puts exactly
    one LD_PRELOAD and one ABIGUARD_PINS into the first <qemu:commandline>, in whatever
    shape that element has (with children, empty, or <qemu:commandline/>), or into a new
    one."""
    if pins is None:
        return
    for e in facts.envs:
        if e.name == LD_PRELOAD and e.value != library:
            raise InputError("domain XML", f"it sets LD_PRELOAD={printable(e.value, 80)!r} itself; abiguard "
                             "cannot add its register pinning library")
    for e in facts.envs:
        if e.name in (LD_PRELOAD, ENV_PINS):
            yield e.span.start, e.span.end, b""
    if not pins:
        return
    ours = _env_el(LD_PRELOAD, library) + _env_el(ENV_PINS, pins)
    if facts.commandlines:
        first = facts.commandlines[0]
        if first.inner is not None:
            yield first.inner, first.inner, ours
        else:   # <qemu:commandline/>: opened, filled, closed
            yield first.start, first.end, _open_tag(data, first) + ours + _end_tag(data, first)
        return
    assert facts.domain_end is not None
    bare = ours.replace(f' xmlns:{QEMU_PREFIX}="{QEMU_NS}"'.encode(), b"")
    yield facts.domain_end, facts.domain_end, (
        f'<{QEMU_PREFIX}:commandline xmlns:{QEMU_PREFIX}="{QEMU_NS}">'.encode() + bare
        + f"</{QEMU_PREFIX}:commandline>".encode())


def _stamp_cuts(data: bytes, facts: DomainFacts, new: bytes) -> Iterator[tuple[int, int, bytes]]:
    for span in facts.stamp_spans:
        yield span.start, span.end, b""
    meta = facts.metadata
    if meta is not None and meta.inner is not None:
        yield meta.inner, meta.inner, new
    elif meta is not None:   # <metadata/>
        yield meta.start, meta.end, _open_tag(data, meta) + new + b"</metadata>"
    else:
        assert facts.domain_end is not None
        yield facts.domain_end, facts.domain_end, b"<metadata>" + new + b"</metadata>"


def with_stamp(data: bytes, facts: DomainFacts, stamp: bytes, pins: str | None = None,
               library: str = LIBRARY_PATH) -> bytes:
    """The same bytes, with old stamps removed and ``stamp`` added at the end of
    <metadata>; with ``pins``, abiguard's qemu:env elements set to them (see _pin_cuts)."""
    cuts = sorted(list(_stamp_cuts(data, facts, stamp)) + list(_pin_cuts(data, facts, pins, library)))
    out, pos = [], 0
    for start, end, insert in cuts:
        if start < pos:
            raise InputError("domain XML", "abiguard's elements overlap in a way libvirt never writes")
        out += [data[pos:start], insert]
        pos = end
    out.append(data[pos:])
    return b"".join(out)
