"""Contracts: derived from real profiles, JSON and XML forms round-trip exactly, and
hostile input is refused with a message naming what is wrong."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings, strategies as st
from lxml import etree

from abiguard.builtin import builtin_profiles
from abiguard.errors import ContractError
from abiguard.model import contract, profile
from abiguard.xml import contract as contract_xml, domain as domxml

PROFILES = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}


@pytest.fixture(scope="module", params=sorted(PROFILES))
def sealed(request):
    return contract.from_profile(profile.load(PROFILES[request.param]))


def parse_lxml(text: str):
    return etree.fromstring(text.encode(), etree.XMLParser(resolve_entities=False, no_network=True))


def parse_expat(text: str):
    facts = domxml.parse(f"<domain><metadata>{text}</metadata></domain>".encode())
    return facts.contract


def test_json_round_trip(sealed):
    text = json.dumps(sealed.to_json())
    again = contract.loads(text, "x")
    assert again == sealed and again.to_json() == sealed.to_json()


@pytest.mark.parametrize("parse", [parse_lxml, parse_expat], ids=["lxml", "expat"])
def test_xml_round_trip_is_exact(sealed, parse):
    xml = contract_xml.to_xml_text(sealed)
    again = contract_xml.from_element(parse(xml), "x")
    assert again == sealed and again.to_json() == sealed.to_json()
    assert len(xml) < 16 * 1024


def test_own_canonical_form_equals_json_canonical_form(sealed):
    body = {k: v for k, v in sealed.to_json().items() if k != "digest"}
    assert contract.canonical(body) == json.dumps(body, sort_keys=True, separators=(",", ":"))


def test_default_config_is_what_cpu_host_enables():
    p = profile.load(PROFILES["7.2.13+deb14-arm64"])
    assert contract.from_profile(p).body.config == "psci+pmu+sve+ptrauth"
    a72 = profile.load(PROFILES["7.2.13+deb14-arm64-cortex-a72"])
    assert contract.from_profile(a72).body.config == "psci+pmu"


def test_values_are_only_abi_registers():
    c = contract.from_profile(profile.load(PROFILES["6.1.0-50-arm64"]), "psci")
    body = c.to_json()["aarch64"]
    assert body["values"]["0x6030000000140000"] == "0x10001"  # PSCI 1.1
    sctlr = "0x603000000013c080"                                # SCTLR_EL1 (3,0,1,0,0)
    assert sctlr in body["stream"] and sctlr not in body["values"]  # guest state, not ABI
    assert set(body["values"]) <= set(body["stream"])


def tamper(sealed, mutate):
    doc = json.loads(json.dumps(sealed.to_json()))
    mutate(doc)
    return doc


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["aarch64"]["values"].update({"0x6030000000140000": "0x10001"}), "does not match its digest"),
    (lambda d: d.update(version=2), "contract version 2"),
    (lambda d: d.update(arch="riscv64"), "member 'arch'"),
    (lambda d: d["aarch64"].update(config="psci+rootkit"), "unknown vCPU configuration"),
    (lambda d: d["aarch64"]["stream"].append("0x6030000000140000; rm -rf /"), "arm64 register ids"),
    (lambda d: d["aarch64"]["values"].update({"0x6030000000999999": "0x1"}), "register ids of the stream"),
    (lambda d: d.update(machine_type="virt-7.2 -device evil"), "machine type name"),
    (lambda d: d["origin"]["hosts"].append({"kernel": "x", "profile": "md5:0"}), "origin"),
])
def test_hostile_contracts_are_refused(mutate, message):
    sealed = contract.from_profile(profile.load(PROFILES["7.2.13+deb14-arm64"]))
    with pytest.raises(ContractError) as err:
        contract.Contract.from_json(tamper(sealed, mutate), "metadata")
    assert message in str(err.value)
    assert str(err.value).startswith("abiguard: metadata: ")


def test_x86_contract_from_this_machines_profile_validates(tmp_path):
    body = {"cpu_model": "qemu64", "pv_features": "0x1007efb", "arch_capabilities": "0x0",
            "features": {"pni": "disable", "sse2": "require"}}
    sealed = contract.seal_json({"arch": "x86_64", "machine_type": "pc-i440fx-7.2",
                                 "origin": {"kind": "profile", "hosts": []}, "x86_64": body})
    assert contract_xml.from_element(parse_lxml(contract_xml.to_xml_text(sealed)), "x") == sealed
    bad = tamper(sealed, lambda d: d["x86_64"]["features"].update({"sse2": "sometimes"}))
    with pytest.raises(ContractError, match="one of require, disable"):
        contract.Contract.from_json(bad, "x")
    older = tamper(sealed, lambda d: d["x86_64"].pop("arch_capabilities"))
    with pytest.raises(ContractError, match="did not record IA32_ARCH_CAPABILITIES; pin the VM again"):
        contract.Contract.from_json(older, "x")


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.one_of(st.integers(-5, 1 << 70).map(hex), st.integers(0, 1 << 70).map(lambda i: f"{i:#X}"),
                          st.integers(0, 1 << 64).map(lambda i: f"0x{i:04x}"),
                          st.sampled_from(["0x", "0x0", "0x00", "0x1_f", " 0x1", "0x1 ", "0x\u0661", "-0x0", "0xa"]),
                          st.text(max_size=6), st.integers(0, 9), st.none()), max_size=8),
       st.sampled_from([1, 4, 16, 32]))
def test_hex_values_agrees_with_is_hex_item_by_item(words, digits):
    from abiguard.model.fields import hex_values, is_hex

    got = hex_values(words, digits)
    if all(is_hex(w, digits) for w in words):
        assert got == [int(w, 16) for w in words]
    else:
        assert got is None


_plain_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'), max_size=6)
_json_docs = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), _plain_text),
                          lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                  st.dictionaries(_plain_text, inner, max_size=4)),
                          max_leaves=20)


@settings(max_examples=1000, deadline=None)
@given(_json_docs)
def test_canonical_is_json_dumps_sorted_compact(doc):
    """The digest's form, written without the json module: byte for byte json.dumps'."""
    assert contract.canonical(doc) == json.dumps(doc, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("mutate, message", [
    (lambda g: g.update({"0x6030000000140000": "0x10000"}), "neither a register the guest reads nor a firmware call"),
    (lambda g: g.update({"0x603000000013d801": "8444c004"}), "must be a hex value or 'esr:' and a hex ESR"),
    (lambda g: g.update({"0x603000000013d801": 0x8444C004}), "must be a hex value or 'esr:' and a hex ESR"),
    (lambda g: g.update({"0x603000000013d801": "esr:0xZZ"}), "must be a hex value or 'esr:' and a hex ESR"),
    (lambda g: g.update({"0x603000000013D801": "0x8444c004"}), "neither a register the guest reads"),
    (lambda g: g.update({"PSCI_VERSION\x1b[2J": "0x10001"}), "neither a register the guest reads"),
    (lambda g: g.update({f"0x{0x6030000000138000 + i:x}": "0x0" for i in range(600)}), "must map at most 512"),
])
def test_a_hostile_guest_member_is_refused(mutate, message):
    """'guest' (issues 23 and 25: what the guest saw where ONE_REG does not say it, CTR_EL0
    on 6.1 among it) names registers a guest reads or firmware calls only, each with a
    canonical hex value or a trapped read's ESR; an untrusted key is never echoed raw"""
    sealed = contract.from_profile(profile.load(PROFILES["6.1.0-50-arm64"]))
    # the 6.1 profile's guest view: the CPU's CTR_EL0 (IDC 0), where ONE_REG says IDC 1
    assert sealed.body.guest[0x603000000013D801] == ("value", 0x8444C004)
    assert sealed.body.values[0x603000000013D801] == 0x9444C004
    doc = json.loads(json.dumps(sealed.to_json()))
    mutate(doc["aarch64"]["guest"])
    with pytest.raises(ContractError) as err:
        contract.Contract.from_json(doc, "metadata")
    assert message in str(err.value), str(err.value)
    assert "\x1b" not in str(err.value)
