"""The contract's XML form: the ``<abiguard:contract>`` element inside ``<metadata>``.

One table (:data:`CONTRACT`, :data:`ORIGIN`, :data:`HOST` and each arch's
:class:`~abiguard.arch.base.XmlShape`) both renders the element from a contract's JSON
form and parses it back into that form, which :meth:`Contract.from_json
<abiguard.model.contract.Contract.from_json>` then checks: one reader, whatever parsed
the XML (the hook's expat tree or lxml).
"""
from __future__ import annotations

from ..errors import ContractError
from ..model.names import CONTRACT_NS, CONTRACT_PREFIX

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ..model.contract import Contract

#: (XML attribute, JSON member) of <contract>, <origin> and <host>
CONTRACT = (("version", "version"), ("arch", "arch"), ("machine", "machine_type"), ("digest", "digest"))
#: the abiguard version that sealed it (the JSON form's ``meta``, outside the digest)
SEALED_BY = "abiguard-version"
ORIGIN = (("kind", "kind"),)
HOST = (("kernel", "kernel"), ("profile", "profile"))
#: repeated children a hostile document may not multiply without bound
MAX_CHILDREN = 4096


def _q(tag: str) -> str:
    return f"{{{CONTRACT_NS}}}{tag}"


def _attrs(pairs: tuple[tuple[str, str], ...], doc: dict[str, Any]) -> str:
    from xml.sax.saxutils import quoteattr

    return "".join(f" {a}={quoteattr(str(doc[m]))}" for a, m in pairs if doc.get(m) is not None)


def to_xml_text(contract: Contract, prefix: str = CONTRACT_PREFIX) -> str:
    """The element as text (no XML library needed)."""
    from ..arch import get

    doc = contract.to_json()
    shape = get(contract.arch).xml
    body = doc[contract.arch]
    p = prefix
    sealed_by = f' {SEALED_BY}="{contract.sealed_by}"' if contract.sealed_by else ""
    parts = [f'<{p}:contract xmlns:{p}="{CONTRACT_NS}"' + _attrs(CONTRACT, doc) + sealed_by + ">",
             f"<{p}:origin" + _attrs(ORIGIN, doc["origin"]) + ">"]
    parts += [f"<{p}:host" + _attrs(HOST, h) + "/>" for h in doc["origin"]["hosts"]]
    parts.append(f"</{p}:origin>")
    parts.append(f"<{p}:{shape.element}" + _attrs(shape.attrs, body) + ">")
    for tag, member in shape.lists:
        parts.append(f"<{p}:{tag}>" + " ".join(body[member]) + f"</{p}:{tag}>")
    for tag, member, key, value in shape.maps:
        for k, v in (body.get(member) or {}).items():    # an optional map: absent, no children
            parts.append(f"<{p}:{tag}" + _attrs(((key, "k"), (value, "v")), {"k": k, "v": v}) + "/>")
    for tag, member, pairs in shape.records:
        parts += [f"<{p}:{tag}" + _attrs(pairs, item) + "/>" for item in body.get(member) or ()]
    parts.append(f"</{p}:{shape.element}>")
    parts.append(f"</{p}:contract>")
    return "".join(parts)


def _need(cond: bool, source: str, detail: str) -> None:
    if not cond:
        raise ContractError(source, detail)


def from_element(el: Any, source: str) -> Contract:
    """Build and check a contract from a parsed ``contract`` element: any
    ElementTree-compatible element (lxml, or :mod:`abiguard.xml.domain`'s minimal tree)."""
    from ..arch import NAMES, get
    from ..model.contract import FORMAT, Contract

    _need(el.tag == _q("contract"), source, f"expected <contract xmlns='{CONTRACT_NS}'>")
    doc: dict[str, Any] = {"format": FORMAT}
    for attr, member in CONTRACT:
        doc[member] = el.get(attr)
    if el.get(SEALED_BY) is not None:
        doc["meta"] = {"abiguard_version": el.get(SEALED_BY)}
    try:
        doc["version"] = int(doc["version"] or "")
    except ValueError:
        raise ContractError(source, "attribute 'version' of <contract> must be an integer") from None
    origin_el = el.find(_q("origin"))
    _need(origin_el is not None, source, "<contract> lacks <origin>")
    hosts = origin_el.findall(_q("host"))
    _need(len(hosts) <= 1024, source, "<origin> names more than 1024 hosts")
    doc["origin"] = {m: origin_el.get(a) for a, m in ORIGIN}
    doc["origin"]["hosts"] = [{m: h.get(a) for a, m in HOST} for h in hosts]
    arch = doc["arch"]
    if arch in NAMES:
        shape = get(arch).xml
        body_el = el.find(_q(shape.element))
        _need(body_el is not None, source, f"an {arch} contract needs an <{shape.element}> element")
        # an absent attribute is an absent member (the JSON reader says which one is missing)
        body: dict[str, Any] = {m: body_el.get(a) for a, m in shape.attrs if body_el.get(a) is not None}
        for tag, member in shape.lists:
            list_el = body_el.find(_q(tag))
            _need(list_el is not None, source, f"<{shape.element}> lacks <{tag}>")
            words = (list_el.text or "").split()
            _need(len(words) <= MAX_CHILDREN, source, f"<{tag}> lists more than {MAX_CHILDREN} registers")
            body[member] = words
        for tag, member, key, value in shape.maps:
            items = body_el.findall(_q(tag))
            _need(len(items) <= MAX_CHILDREN, source, f"more than {MAX_CHILDREN} <{tag}> elements")
            mapping: dict[str, Any] = {}
            for item in items:
                k, v = item.get(key), item.get(value)
                _need(isinstance(k, str) and isinstance(v, str), source, f"<{tag}> needs '{key}' and '{value}'")
                _need(k not in mapping, source, f"<{tag} {key}='{k[:40]}'> appears twice")
                mapping[k] = v
            body[member] = mapping
        for tag, member, pairs in shape.records:
            records = body_el.findall(_q(tag))
            _need(len(records) <= MAX_CHILDREN, source, f"more than {MAX_CHILDREN} <{tag}> elements")
            if records:   # each attribute, present or None: the JSON reader says what is wrong
                body[member] = [{m: item.get(a) for a, m in pairs} for item in records]
        doc[arch] = body
    return Contract.from_json(doc, source)
