"""Domain XML on the hook's path: read the few facts abiguard needs from hostile XML, and
splice abiguard's per-hop stamp into it without touching anything else.

Uses the standard library's expat (lxml costs more to import than the whole hook may
take): no DTD is accepted at all, so no entity is ever declared or expanded and nothing
is fetched; the input is size-capped by the caller. The CLI edits persistent definitions
with lxml instead (:mod:`abiguard.pin`).
"""
from __future__ import annotations

from xml.parsers import expat

from .errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator

MAX_BYTES = 4 * 1024 * 1024
CONTRACT_NS = "urn:abiguard:contract:1"
STAMP_NS = "urn:abiguard:stamp:1"
_OURS = (CONTRACT_NS, STAMP_NS)


class Element:
    """A minimal ElementTree-style node (tag as ``{uri}local``), for our own subtrees."""

    __slots__ = ("tag", "attrib", "children", "text")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag = tag
        self.attrib = attrib
        self.children: list[Element] = []
        self.text = ""

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.attrib.get(key, default)

    def find(self, tag: str) -> "Element | None":
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list["Element"]:
        return [c for c in self.children if c.tag == tag]


class Span(tuple):
    """(start, end) byte offsets of an element in the input."""

    __slots__ = ()

    def __new__(cls, start: int, end: int) -> "Span":
        return tuple.__new__(cls, (start, end))

    start = property(lambda self: self[0])
    end = property(lambda self: self[1])


class DomainFacts:
    """What the hook reads from a domain XML (plain attributes: no typing on this path)."""

    __slots__ = ("name", "uuid", "domain_type", "arch", "machine", "cpu_mode", "cpu_model",
                 "cpu_features", "contract", "stamp", "stamp_spans", "metadata_end", "domain_end")

    def __init__(self, **values: object) -> None:
        for key in self.__slots__:
            setattr(self, key, values.get(key))


def _clark(name: str) -> str:
    uri, sep, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if sep else name


def _start_tag_end(data: bytes, start: int) -> int:
    """Index just past the '>' that closes the start tag at ``start`` (quotes honoured)."""
    quote = 0
    for i in range(start + 1, len(data)):
        c = data[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3E:
            return i + 1
    raise InputError("domain XML", "unterminated tag")


def parse(data: bytes, source: str = "domain XML") -> DomainFacts:
    if len(data) > MAX_BYTES:
        raise InputError(source, f"larger than {MAX_BYTES} bytes: refusing to parse it")
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    path: list[str] = []
    stack: list[Element] = []
    facts: dict = {"cpu_features": {}, "stamp_spans": [], "contract": None, "stamp": None,
                   "metadata_end": None, "domain_end": None}
    text_target: list[str] = []
    stamp_start: list[int] = []

    def no_dtd(*_args: object) -> None:
        raise InputError(source, "a DOCTYPE/DTD is not allowed in domain XML")

    def start(name: str, attrs: dict[str, str]) -> None:
        tag = _clark(name)
        path.append(tag)
        depth = len(path)
        if stack:
            el = Element(tag, attrs)
            stack[-1].children.append(el)
            stack.append(el)
            return
        if depth == 1:
            if tag != "domain":
                raise InputError(source, f"root element is <{tag}>, expected <domain>")
            facts["domain_type"] = attrs.get("type")
        elif depth == 3 and path[1] == "metadata" and tag.startswith("{"):
            uri = tag[1:].split("}")[0]
            if uri in _OURS:
                el = Element(tag, attrs)
                stack.append(el)
                if uri == CONTRACT_NS:
                    if facts["contract"] is not None:
                        raise InputError(source, "more than one abiguard contract in <metadata>")
                    facts["contract"] = el
                else:
                    facts["stamp"] = el
                    stamp_start.append(parser.CurrentByteIndex)
        elif path[1:] == ["os", "type"]:
            facts["arch"], facts["machine"] = attrs.get("arch"), attrs.get("machine")
        elif path[1:] == ["cpu"]:
            facts["cpu_mode"] = attrs.get("mode", "custom")
        elif path[1:] == ["cpu", "feature"]:
            facts["cpu_features"][attrs.get("name", "")] = attrs.get("policy", "require")
        if path[1:] in (["name"], ["uuid"], ["cpu", "model"]):
            text_target.clear()
            text_target.append("")

    def end(name: str) -> None:
        tag = path.pop()
        depth = len(path) + 1
        if stack:
            el = stack.pop()
            if not stack and el is facts["stamp"]:
                here = parser.CurrentByteIndex
                begin = stamp_start.pop()
                stop = data.index(b">", here) + 1 if data.startswith(b"</", here) else _start_tag_end(data, begin)
                facts["stamp_spans"].append(Span(begin, stop))
            return
        if text_target and path[1:] + [tag] in (["name"], ["uuid"], ["cpu", "model"]):
            key = {"name": "name", "uuid": "uuid", "model": "cpu_model"}[tag]
            facts[key] = text_target[0].strip()
            text_target.clear()
        if depth == 2 and tag == "metadata":
            facts["metadata_end"] = parser.CurrentByteIndex
        if depth == 1:
            facts["domain_end"] = parser.CurrentByteIndex

    def chars(text: str) -> None:
        if stack:
            stack[-1].text += text
        elif text_target:
            text_target[0] += text

    parser.StartDoctypeDeclHandler = no_dtd
    parser.EntityDeclHandler = no_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise InputError(source, f"not well-formed XML ({e})") from None
    for key in ("name", "uuid", "arch", "machine", "cpu_mode", "cpu_model"):
        facts.setdefault(key, None)
    facts.setdefault("domain_type", None)
    return DomainFacts(**facts)


def _safe_attr(value: str) -> bool:
    return value.isprintable() and not any(c in value for c in '<>&"')


def stamp_xml(attrs: dict[str, str], stream: list[str] | None) -> bytes:
    """Our stamp element; attribute values are checked, never escaped into meaning."""
    for k, v in attrs.items():
        if not _safe_attr(v):
            raise ValueError(f"unsafe stamp attribute {k}={v!r}")
    head = "<abiguard-stamp:stamp xmlns:abiguard-stamp=\"%s\"%s" % (
        STAMP_NS, "".join(f' {k}="{v}"' for k, v in attrs.items()))
    if stream is None:
        return (head + "/>").encode()
    return (head + "><abiguard-stamp:stream>" + " ".join(stream)
            + "</abiguard-stamp:stream></abiguard-stamp:stamp>").encode()


def _cuts(facts: DomainFacts, new: bytes) -> Iterator[tuple[int, int, bytes]]:
    for span in facts.stamp_spans:
        yield span.start, span.end, b""
    if facts.metadata_end is not None:
        yield facts.metadata_end, facts.metadata_end, new
    elif facts.domain_end is not None:
        yield facts.domain_end, facts.domain_end, b"<metadata>" + new + b"</metadata>"
    else:
        raise InputError("domain XML", "no </domain> end tag")


def with_stamp(data: bytes, facts: DomainFacts, stamp: bytes) -> bytes:
    """The same bytes, with old stamps removed and ``stamp`` added at the end of <metadata>."""
    out, pos = [], 0
    for start, end, insert in sorted(_cuts(facts, stamp)):
        out += [data[pos:start], insert]
        pos = end
    out.append(data[pos:])
    return b"".join(out)
