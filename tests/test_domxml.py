"""The hook's XML reader: facts out of hostile input, and a splice that changes nothing
but abiguard's stamp."""
from __future__ import annotations

import pytest

from abiguard.errors import InputError
from abiguard.model.stamp import HopStamp
from abiguard.xml import domain as domxml

DOMAIN = b"""<?xml version="1.0"?>
<!-- a comment -->
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm&amp;1</name>
  <uuid>6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10</uuid>
  <metadata>
    <app:x xmlns:app="urn:app"><app:y a='&lt;&gt;'/></app:x>
  </metadata>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model>
    <feature policy='disable' name='pni'/><feature name='sse2'/></cpu>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
"""


def test_facts():
    f = domxml.parse(DOMAIN)
    assert (f.name, f.uuid, f.domain_type, f.arch, f.machine) == (
        "vm&1", "6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10", "kvm", "x86_64", "pc-q35-7.2")
    assert (f.cpu_mode, f.cpu_model, f.cpu_features) == ("custom", "qemu64", {"pni": "disable", "sse2": "require"})
    assert f.contract is None and f.stamp is None


def test_stamp_splice_keeps_every_other_byte():
    f = domxml.parse(DOMAIN)
    stamp = HopStamp({"host": "b", "profile": "sha256:" + "0" * 64}, None).to_xml()
    out = domxml.with_stamp(DOMAIN, f, stamp)
    assert out.replace(stamp, b"") == DOMAIN
    again = domxml.with_stamp(out, domxml.parse(out), HopStamp({"host": "c"}, (0x1,)).to_xml())
    assert again.count(b"urn:abiguard:stamp:1") == 1 and b'host="c"' in again
    assert domxml.parse(again).stamp.find("{urn:abiguard:stamp:1}stream").text == "0x1"


def test_domain_without_metadata_gets_one():
    xml = b"<domain type='kvm'><name>x</name></domain>"
    out = domxml.with_stamp(xml, domxml.parse(xml), b"<s/>")
    assert out == b"<domain type='kvm'><name>x</name><metadata><s/></metadata></domain>"


@pytest.mark.parametrize("xml, message", [
    (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><domain>&b;</domain>',
     "DOCTYPE/DTD is not allowed"),
    (b'<!DOCTYPE d SYSTEM "http://attacker.example/x.dtd"><domain/>', "DOCTYPE/DTD is not allowed"),
    (b"<domain><name>x</name>", "not well-formed"),
    (b"<notdomain/>", "expected <domain>"),
    (b"<domain>" + b"<a>" * 10 + b"</domain>", "not well-formed"),
])
def test_hostile_xml_is_refused(xml, message):
    with pytest.raises(InputError) as err:
        domxml.parse(xml)
    assert message in str(err.value)


def test_size_cap():
    with pytest.raises(InputError, match="larger than"):
        domxml.parse(b"<domain>" + b" " * domxml.MAX_BYTES + b"</domain>")


def test_stamp_attributes_cannot_inject_markup():
    with pytest.raises(ValueError):
        HopStamp({"host": 'x"/><evil/>'}, None).to_xml()
