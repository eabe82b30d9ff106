"""The fuzz suite: the hook's XML reader and splice, contracts, profiles, hook views and the
command line's JSON inputs, with the hook's promises as oracles (tests/helpers/fuzz.py).

The pure tier runs a short hypothesis campaign per class. The full suite (the README's
test command; marker ``slow``) adds a long seeded campaign of at least 100,000 inputs and
prints how many inputs of each class ran and how long it took.
"""
from __future__ import annotations

import io
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from abiguard import cli
from abiguard.model import contract, profile
from abiguard.xml import contract as contract_xml, domain as domxml
from helpers import fuzz

SEEDS = fuzz.xml_seeds()
PROFILE_DOCS = {k: profile.load(fuzz.P[k]).doc for k in (fuzz.K61, fuzz.K612, fuzz.K72)}
CONTRACT_DOCS = [contract.from_profile(profile.load(fuzz.P[k]), c).to_json()
                 for k, c in ((fuzz.K61, "psci"), (fuzz.K72, None))]
OPS = [["hook", "vm", "migrate", "begin", "-"], ["hook", "vm", "restore", "begin", "-"],
       ["hook", "vm", "prepare", "begin", "-"], ["hook", "vm", "started", "begin", "-"]]
HOSTS = [fuzz.K61, fuzz.K612, fuzz.K72]
#: arm64 contracts (their stamps carry the register stream)
STAMP_CONTRACTS = [contract.from_profile(profile.load(fuzz.P[k]), c)
                   for k, c in ((fuzz.K61, "psci"), (fuzz.K612, None), (fuzz.K72, None))]
PINNED_SEEDS = [s for s in SEEDS if b"<abiguard:contract" in s and b"kind=\"seen\"" not in s]   # seen: unpinned
UNPINNED_SEEDS = [SEEDS[0]] + [fuzz.without_contract(s) for s in PINNED_SEEDS]
VIEW_ROOTS: dict[str, str] = {}
VIEW_GOOD: dict[str, bytes] = {}
VIEW_HONEST: dict[tuple[str, bytes, str], int] = {}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)


@pytest.fixture(scope="module", autouse=True)
def _roots_removed() -> Iterator[None]:
    """The fake roots live for the module's campaigns and no longer."""
    yield
    fuzz.remove_roots()
    VIEW_ROOTS.clear()
    VIEW_HONEST.clear()


# -- one input of each class ------------------------------------------------------------

def hook_case(seed: int, xml_index: int, op: int, host: int) -> None:
    rng = random.Random(seed)
    seed_xml = SEEDS[xml_index % len(SEEDS)]
    data = (fuzz.mutate_markup(rng, seed_xml) if rng.random() < 0.5 else
            fuzz.mutate_bytes(rng, seed_xml, rounds=4))
    root = fuzz._fake_root(HOSTS[host % len(HOSTS)])
    argv = OPS[op % len(OPS)]
    fuzz.pinned_record(root, fuzz.UUID, None)     # records: record_case's (an allow here leaves one)
    t0 = time.monotonic()
    rc, out, err = fuzz.run_hook(root, argv, data)
    fuzz.check_hook_answer(root, argv, data, rc, out, err, time.monotonic() - t0)


def stamp_case(seed: int) -> None:
    """A stamp claiming less than its contract (checksum recomputed): refused on every judged
    path, whatever the policy; exit 0 is a fail-open."""
    rng = random.Random(seed)
    c = rng.choice(STAMP_CONTRACTS)
    data = fuzz._domain(contract_xml.to_xml_text(c) + fuzz.forged_stamp(rng, c))
    config = rng.choice(["[policy]\n", "[policy]\nallow_widening = true\n", "[policy]\nunpinned = \"allow\"\n"])
    root = fuzz._fake_root(HOSTS[rng.randrange(len(HOSTS))])
    argv = OPS[rng.randrange(2)]                       # migrate, restore: the stamp is the VM's word
    rc, out, err = fuzz.run_hook_configured(root, config, argv, data)
    fuzz.check_fail_open(argv, rc, err, True, "a stamp claiming fewer registers than its contract")


def view_body_case(seed: int) -> None:
    """A hook view with a valid frame around a crafted body: the hook answers as with the
    honest view (exit 0 where the honest input refuses is a fail-open), never an internal error."""
    rng = random.Random(seed)
    host = HOSTS[rng.randrange(len(HOSTS))]
    root = VIEW_ROOTS.get(host)
    if root is None:
        root = VIEW_ROOTS[host] = fuzz.view_root(host, host[:6])
        with open(os.path.join(root, "var/lib/abiguard/host-profile.json.hookview"), "rb") as f:
            VIEW_GOOD[host] = f.read()
    xml = PINNED_SEEDS[rng.randrange(len(PINNED_SEEDS))]
    argv = OPS[rng.randrange(3)]
    key = (host, xml, argv[2])
    if key not in VIEW_HONEST:
        with open(os.path.join(root, "var/lib/abiguard/host-profile.json.hookview"), "wb") as f:
            f.write(VIEW_GOOD[host])
        VIEW_HONEST[key] = fuzz.run_hook(root, argv, xml)[0]
    with open(os.path.join(root, "var/lib/abiguard/host-profile.json.hookview"), "wb") as f:
        f.write(fuzz.crafted_view_body(rng, VIEW_GOOD[host]))
    t0 = time.monotonic()
    rc, out, err = fuzz.run_hook(root, argv, xml)
    fuzz.check_hook_answer(root, argv, xml, rc, out, err, time.monotonic() - t0)
    fuzz.check_fail_open(argv, rc, err, VIEW_HONEST[key] == 1, "a crafted hook view")
    assert rc == VIEW_HONEST[key], (rc, VIEW_HONEST[key], err[:300])


def record_case(seed: int) -> None:
    """A pinned VM's record present (valid, malformed, or another VM's) while a VM arrives or
    starts without a contract (mutated): the VM the record names is refused under every
    policy; exit 0 for it is a fail-open."""
    rng = random.Random(seed)
    root = fuzz._fake_root(HOSTS[rng.randrange(len(HOSTS))])
    c = rng.choice(STAMP_CONTRACTS)
    line = (c.digest + " 2026-01-01T00:00:00Z\n").encode()
    shape = rng.randrange(4)
    if shape == 1:
        line = fuzz.mutate_bytes(rng, line, 2)
    uuid = fuzz.UUID if shape != 3 else "0b7e2a51-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
    seed_xml = rng.choice(UNPINNED_SEEDS)
    data = seed_xml if rng.random() < 0.3 else (
        fuzz.mutate_markup(rng, seed_xml) if rng.random() < 0.5 else fuzz.mutate_bytes(rng, seed_xml, rounds=2))
    argv = OPS[rng.randrange(3)]
    policy = rng.choice(["allow", "warn", "refuse"])
    path = fuzz.pinned_record(root, uuid, line)
    try:
        rc, out, err = fuzz.run_hook_configured(root, f"[policy]\nunpinned = \"{policy}\"\n", argv, data)
    finally:
        fuzz.pinned_record(root, uuid, None)
    try:
        facts = domxml.parse(data)
    except Exception:  # noqa: BLE001 - the hook refuses what its reader refuses
        return
    named = facts.contract is None and facts.uuid is not None and facts.uuid.lower() == uuid
    fuzz.check_fail_open(argv, rc, err, named, f"a pinned record {path} and no contract")
    if named and shape == 0:
        assert c.digest in err, err[:300]


def swap_case(seed: int) -> None:
    """With a fleet directory, a pinned VM arriving (migrate, restore) with a contract other
    than the one the fleet recorded for it — another VM's, with its honest stamp — is refused
    naming both digests; with the recorded one it is judged as usual."""
    from abiguard.xml.edit import boot_stamp

    rng = random.Random(seed)
    recorded, arriving = rng.choice(STAMP_CONTRACTS), rng.choice(STAMP_CONTRACTS)
    root = fuzz._fake_root(HOSTS[rng.randrange(len(HOSTS))])
    fleet = os.path.join(root, "fleet")
    os.makedirs(os.path.join(fleet, "pinned"), exist_ok=True)
    with open(os.path.join(fleet, "pinned", fuzz.UUID), "wb") as f:
        f.write((recorded.digest + " 2026-01-01T00:00:00Z\n").encode())
    data = fuzz._domain(contract_xml.to_xml_text(arriving) + boot_stamp(arriving).decode())
    argv = OPS[rng.randrange(2)]
    config = (rng.choice(["", "[policy]\nallow_widening = true\n", "[policy]\nunpinned = \"allow\"\n"])
              + f"[fleet]\ndir = \"{fleet}\"\n")
    try:
        rc, out, err = fuzz.run_hook_configured(root, config, argv, data)
    finally:
        fuzz.pinned_record(root, fuzz.UUID, None)      # an allow leaves this host's record
    swapped = recorded.digest != arriving.digest
    fuzz.check_fail_open(argv, rc, err, swapped, "another contract than the fleet recorded")
    if swapped:
        assert recorded.digest in err and arriving.digest in err, err[:300]


def contract_case(seed: int) -> None:
    rng = random.Random(seed)
    doc = fuzz.mutate_json(rng, rng.choice(CONTRACT_DOCS))
    if rng.random() < 0.5:
        c = fuzz.check_model(contract.seal_json, doc, "fuzz") if isinstance(doc, dict) else None
    else:
        c = fuzz.check_model(contract.Contract.from_json, doc, "fuzz")
    if c is not None:
        again = contract_xml.from_element(domxml.parse(
            b"<domain><metadata>" + contract_xml.to_xml_text(c).encode() + b"</metadata></domain>").contract, "x")
        assert again == c and again.to_json() == c.to_json()
    # the same document through the XML form, mutated as bytes
    base = contract.Contract.from_json(rng.choice(CONTRACT_DOCS), "seed")
    xml = b"<domain><metadata>" + contract_xml.to_xml_text(base).encode() + b"</metadata></domain>"
    facts = fuzz.check_model(domxml.parse, fuzz.mutate_bytes(rng, xml, 2))
    if facts is not None and facts.contract is not None:
        fuzz.check_model(contract_xml.from_element, facts.contract, "fuzz")


def profile_case(seed: int) -> None:
    rng = random.Random(seed)
    doc = fuzz.mutate_json(rng, PROFILE_DOCS[rng.choice(list(PROFILE_DOCS))], rounds=2)
    if isinstance(doc, dict) and rng.random() < 0.9:
        try:
            doc["digest"] = profile.digest_of(doc)   # a valid digest over a broken inside
        except (TypeError, ValueError):
            return
    p = fuzz.check_model(profile.Profile.from_json, doc, "fuzz.json")
    if p is not None:
        fuzz.check_engine(p)


def view_case(seed: int, tmp: str) -> None:
    rng = random.Random(seed)
    path = os.path.join(tmp, "host-profile.json")
    if not os.path.exists(path + profile.HOOKVIEW_SUFFIX):
        profile.save(PROFILE_DOCS[fuzz.K72], path)
        with open(path + profile.HOOKVIEW_SUFFIX, "rb") as f:
            view_case.good = f.read()  # type: ignore[attr-defined]
    good = view_case.good  # type: ignore[attr-defined]
    with open(path + profile.HOOKVIEW_SUFFIX, "wb") as f:
        f.write(fuzz.mutate_bytes(rng, good, 2))
    got = profile.load_view(path)
    assert got is None or got.digest == PROFILE_DOCS[fuzz.K72]["digest"]
    assert profile.load_for_hook(path).digest == PROFILE_DOCS[fuzz.K72]["digest"]


def cli_case(seed: int, tmp: str) -> None:
    rng = random.Random(seed)
    doc = fuzz.mutate_json(rng, rng.choice(list(PROFILE_DOCS.values()) + CONTRACT_DOCS), rounds=2)
    if isinstance(doc, dict) and rng.random() < 0.7:
        try:
            if doc.get("format") == contract.FORMAT:
                doc["digest"] = contract.seal_json(doc).digest
            else:
                doc["digest"] = profile.digest_of(doc)
        except Exception:  # noqa: BLE001 - an unsealable document stays as it is
            pass
    path = os.path.join(tmp, f"in-{seed}.json")
    with open(path, "w") as f:
        f.write(json.dumps(doc) if rng.random() < 0.95 else json.dumps(doc)[:rng.randrange(200)])
    k72 = fuzz.P[fuzz.K72]
    argv = rng.choice([["check", "--from", path, "--to", k72], ["check", "--from", k72, "--to", path],
                       ["diff", path, k72], ["baseline", path, k72], ["check", "--json", "--from", path,
                                                                      "--to", k72]])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(argv)
    assert rc in (0, 1, 2), (argv, rc, err.getvalue()[-500:])
    assert "Traceback" not in err.getvalue(), err.getvalue()[-1500:]
    if rc == 2:
        assert err.getvalue().startswith("abiguard: "), err.getvalue()[:300]
    os.unlink(path)


# -- the short run: hypothesis, every test run ------------------------------------------------

@FAST
@given(st.integers(0, 2 ** 32), st.integers(0, 99), st.integers(0, 2), st.integers(0, 2))
def test_fuzz_hook(seed, xml_index, op, host):
    hook_case(seed, xml_index, op, host)


SHAPES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.mark.parametrize("case", [stamp_case, view_body_case, record_case, swap_case],
                         ids=["stamps claiming less", "hook view bodies", "pinned records", "contract swaps"])
@SHAPES
@given(seed=st.integers(0, 2 ** 32))
def test_fuzz_tamper_shapes(case, seed):
    """Issue 22's shapes, each its own campaign of SHAPES examples."""
    case(seed)


@FAST
@given(st.integers(0, 2 ** 32))
def test_fuzz_contracts(seed):
    contract_case(seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.integers(0, 2 ** 32))
def test_fuzz_profiles(seed):
    profile_case(seed)


@FAST
@given(st.integers(0, 2 ** 32))
def test_fuzz_hook_views(tmp_path_factory, seed):
    view_case(seed, str(tmp_path_factory.getbasetemp()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.integers(0, 2 ** 32))
def test_fuzz_cli_inputs(tmp_path_factory, seed):
    cli_case(seed, str(tmp_path_factory.getbasetemp()))


# -- the long run: >= 100,000 inputs in the full suite -----------------------------------------

#: inputs per class in the long run (the sum is the campaign's size)
LONG = {"hook": 65_000, "stamp": 2_000, "viewbody": 2_000, "record": 2_000, "swap": 1_000, "contract": 20_000,
        "view": 6_000, "profile": 1_500, "cli": 500}


@pytest.mark.slow
def test_fuzz_long_run():
    assert sum(LONG.values()) >= 100_000
    base = int(os.environ.get("ABIGUARD_FUZZ_SEED", "20261201"))
    timings = {}
    with tempfile.TemporaryDirectory(prefix="abiguard-fuzz-") as tmp:
        for name, count in LONG.items():
            t0 = time.monotonic()
            for i in range(count):
                seed = base * 1_000_003 + i
                try:
                    if name == "hook":
                        hook_case(seed, i, i // 7, i // 3)
                    elif name == "stamp":
                        stamp_case(seed)
                    elif name == "viewbody":
                        view_body_case(seed)
                    elif name == "record":
                        record_case(seed)
                    elif name == "swap":
                        swap_case(seed)
                    elif name == "contract":
                        contract_case(seed)
                    elif name == "profile":
                        profile_case(seed)
                    elif name == "view":
                        view_case(seed, tmp)
                    else:
                        cli_case(seed, tmp)
                except AssertionError as e:
                    raise AssertionError(f"fuzz {name} input {i} (seed {seed}): {e}") from None
            timings[name] = time.monotonic() - t0
    report = ", ".join(f"{n} {LONG[n]:,} in {t:.0f} s" for n, t in timings.items())
    sys.stderr.write(f"\nfuzz long run: {sum(LONG.values()):,} inputs: {report}\n")
