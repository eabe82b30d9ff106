"""Domain XML on the hook's path: read the few facts abiguard needs from hostile XML, and
splice abiguard's per-hop stamp and pins into it without touching anything else.

Uses the standard library's expat (lxml costs more to import than the whole hook may
take): no DTD is accepted at all, so no entity is ever declared or expanded and nothing
is fetched; the input is size-capped by the caller. The CLI edits persistent definitions
with lxml instead (:mod:`abiguard.pin`).
"""
from __future__ import annotations

from xml.parsers import expat

from ..errors import InputError
from ..preload import ENV_PINS, LIBRARY_PATH
from .names import CONTRACT_NS, LD_PRELOAD, QEMU_NS, QEMU_PREFIX, STAMP_NS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

MAX_BYTES = 4 * 1024 * 1024
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

    def find(self, tag: str) -> Element | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[Element]:
        return [c for c in self.children if c.tag == tag]


class Span:
    """(start, end) byte offsets of an element in the input."""

    __slots__ = ("start", "end")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end


class DomainFacts:
    """What the hook reads from a domain XML."""

    __slots__ = ("name", "uuid", "domain_type", "arch", "machine", "cpu_mode", "cpu_model",
                 "cpu_features", "contract", "stamp", "stamp_spans", "metadata_end", "domain_end",
                 "qemu_env", "qemu_commandline_end")

    name: str | None
    uuid: str | None
    domain_type: str | None
    arch: str | None
    machine: str | None
    cpu_mode: str | None
    cpu_model: str | None
    cpu_features: dict[str, str]
    contract: Element | None
    stamp: Element | None
    stamp_spans: list[Span]
    metadata_end: int | None
    domain_end: int | None
    #: name -> (value, span of the <qemu:env> element)
    qemu_env: dict[str, tuple[str, Span]]
    qemu_commandline_end: int | None

    def __init__(self, **values: Any) -> None:
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
    facts: dict[str, Any] = {"cpu_features": {}, "stamp_spans": [], "contract": None, "stamp": None,
                   "metadata_end": None, "domain_end": None, "qemu_env": {}, "qemu_commandline_end": None}
    env_start: list[tuple[str, str, int]] = []
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
        elif depth == 3 and path[1] == f"{{{QEMU_NS}}}commandline" and tag == f"{{{QEMU_NS}}}env":
            env_start.append((attrs.get("name", ""), attrs.get("value", ""), parser.CurrentByteIndex))
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
        if depth == 3 and tag == f"{{{QEMU_NS}}}env" and env_start:
            name, value, begin = env_start.pop()
            here = parser.CurrentByteIndex
            stop = data.index(b">", here) + 1 if data.startswith(b"</", here) else _start_tag_end(data, begin)
            facts["qemu_env"][name] = (value, Span(begin, stop))
        if depth == 2 and tag == f"{{{QEMU_NS}}}commandline":
            facts["qemu_commandline_end"] = parser.CurrentByteIndex
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


def _env_el(name: str, value: str) -> bytes:
    if not _safe_attr(value):
        raise ValueError(f"unsafe qemu:env value {value!r}")
    return f'<{QEMU_PREFIX}:env xmlns:{QEMU_PREFIX}="{QEMU_NS}" name="{name}" value="{value}"/>'.encode()


def _pin_cuts(facts: DomainFacts, pins: str | None, library: str) -> Iterator[tuple[int, int, bytes]]:
    """The destination's ABIGUARD_PINS (abiguard.enforce): None leaves the XML as it is, ""
    removes abiguard's two qemu:env elements, a value replaces or adds them."""
    if pins is None:
        return
    env = facts.qemu_env
    preload = env.get(LD_PRELOAD)
    if preload is not None and preload[0] != library:
        raise InputError("domain XML", f"it sets LD_PRELOAD={preload[0]!r} itself; abiguard cannot add "
                         "its register pinning library")
    if not pins:
        for name in (LD_PRELOAD, ENV_PINS):
            if name in env:
                yield env[name][1].start, env[name][1].end, b""
        return
    new = {LD_PRELOAD: _env_el(LD_PRELOAD, library), ENV_PINS: _env_el(ENV_PINS, pins)}
    missing = b""
    for name, el in new.items():
        if name in env:
            yield env[name][1].start, env[name][1].end, el
        else:
            missing += el
    if missing:
        if facts.qemu_commandline_end is not None:
            yield facts.qemu_commandline_end, facts.qemu_commandline_end, missing
        elif facts.domain_end is not None:
            yield facts.domain_end, facts.domain_end, (
                f'<{QEMU_PREFIX}:commandline xmlns:{QEMU_PREFIX}="{QEMU_NS}">'.encode()
                + missing.replace(f' xmlns:{QEMU_PREFIX}="{QEMU_NS}"'.encode(), b"")
                + f"</{QEMU_PREFIX}:commandline>".encode())


def _cuts(facts: DomainFacts, new: bytes) -> Iterator[tuple[int, int, bytes]]:
    for span in facts.stamp_spans:
        yield span.start, span.end, b""
    if facts.metadata_end is not None:
        yield facts.metadata_end, facts.metadata_end, new
    elif facts.domain_end is not None:
        yield facts.domain_end, facts.domain_end, b"<metadata>" + new + b"</metadata>"
    else:
        raise InputError("domain XML", "no </domain> end tag")


def with_stamp(data: bytes, facts: DomainFacts, stamp: bytes, pins: str | None = None,
               library: str = LIBRARY_PATH) -> bytes:
    """The same bytes, with old stamps removed and ``stamp`` added at the end of <metadata>;
    with ``pins``, abiguard's qemu:env elements set to them (see _pin_cuts)."""
    out, pos = [], 0
    for start, end, insert in sorted(list(_cuts(facts, stamp)) + list(_pin_cuts(facts, pins, library))):
        out += [data[pos:start], insert]
        pos = end
    out.append(data[pos:])
    return b"".join(out)
