"""The fleet's answers over real bundled profiles (pure tier): each distinct (contract,
stream, profile) judged once, status and whatif agreeing with the engine ``abiguard
check`` runs, the baseline over distinct profiles and previous ones, the matrix and its
picture, trait and label names, Kubernetes output, the Placement client's checks."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest

from abiguard.builtin import builtin_profiles
from abiguard.engine import baseline as engine_baseline, verdict
from abiguard.errors import UsageError
from abiguard.fleet import baseline, kube, matrix, names, placement, render, status, whatif
from abiguard.fleet.contracts import FleetContract, realised
from abiguard.fleet.judge import Judge
from abiguard.fleet.store import Store
from abiguard.fleet.vms import from_xml
from abiguard.model import contract, profile
from abiguard.xml.contract import to_xml_text
from abiguard.xml.edit import boot_stamp
from helpers.fleetgen import X86, distinct, make_fleet
from helpers.invalid import invalid
from helpers.run import abiguard
from lab.twohost import TwoHost

ARM = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
DOCS = {k: profile.load(p).doc for k, p in ARM.items()}


def model(key: str) -> profile.Profile:
    return profile.Profile.from_json(DOCS[key], key)


def pinned_xml(sealed: contract.Contract, name: str, stamp: bytes | None = None) -> bytes:
    meta = "<metadata>" + to_xml_text(sealed) + (stamp or boot_stamp(sealed)).decode() + "</metadata>"
    return TwoHost().render_guest("aarch64", name, metadata=meta, kernel="/boot/guest").encode()


@pytest.fixture
def fleet(tmp_path):
    """Six hosts of four real kernels; h61 ran 6.1 and is now on 7.2 (its previous is 6.1)."""
    store = Store(str(tmp_path))
    for name, key in (("h61", "6.1.0-50-arm64"), ("h72a", "7.2.13+deb14-arm64"), ("h72b", "7.2.13+deb14-arm64"),
                      ("h612", "6.12.117+deb13-arm64"), ("h510", "5.10.0-32-arm64"),
                      ("hA72", "7.2.13+deb14-arm64-cortex-a72")):
        store.publish(DOCS[key], key, name)
    store.publish(DOCS["6.1.0-50-arm64"], "6.1", "h61b")
    store.publish(DOCS["7.2.13+deb14-arm64"], "7.2", "h61b")       # upgraded: previous is 6.1
    return store


def test_status_agrees_with_check_and_judges_each_pair_once(fleet):
    records = fleet.records()
    profiles = fleet.profiles_of(records)
    c61 = contract.from_profile(model("6.1.0-50-arm64"))
    c72 = contract.from_profile(model("7.2.13+deb14-arm64"))
    vms = [from_xml("h61", f"a{i}", "running", pinned_xml(c61, f"a{i}")) for i in range(20)]
    vms += [from_xml("h72a", f"b{i}", "shut off", pinned_xml(c72, f"b{i}")) for i in range(20)]
    judge = Judge()
    doc = status.compute(records, profiles, vms, {}, judge)
    assert judge.checks == 2 * len(profiles), "one check per (contract, profile), whatever the VM count"
    for row in doc["vms"]:
        sealed = c61 if row["name"].startswith("a") else c72
        answers = doc["verdicts"][row["verdicts"]]
        for rec in records:
            v = verdict.check(sealed, profiles[rec.profile])
            j = answers[rec.profile]
            assert j["allow"] == v.allow
            assert j["reason"] == (v.problems[0].line() if v.problems else None)
        allowed = sum(1 for rec in records if rec.name != row["host"] and answers[rec.profile]["allow"])
        assert row["may_move_to"] == allowed and row["may_move_to"] + row["refused_by"] == len(records) - 1
    text = "\n".join(status.lines(doc))
    assert "a0 on h61 (running): may move to" in text and "REFUSE on h510" in text
    json.dumps(doc)


def test_status_says_what_the_hook_would_refuse_everywhere(fleet):
    records = fleet.records()
    c61 = contract.from_profile(model("6.1.0-50-arm64"))
    other = contract.from_profile(model("7.2.13+deb14-arm64"))
    vms = [from_xml("h61", "stamped-wrong", "running", pinned_xml(c61, "stamped-wrong", boot_stamp(other))),
           from_xml("h61", "unpinned", "running", TwoHost().render_guest("aarch64", "unpinned", kernel="/k").encode()),
           from_xml("h61", "broken", "running", b"<domain><name>broken</name>")]
    doc = status.compute(records, fleet.profiles_of(records), vms, {"h72a": "libvirt at x: no answer"}, Judge())
    rows = {r["name"]: r for r in doc["vms"]}
    assert "hop stamp belongs to another contract" in rows["stamped-wrong"]["problem"]
    assert rows["unpinned"]["contract"] is None and rows["unpinned"]["problem"] is None
    assert rows["broken"]["problem"] and rows["broken"]["may_move_to"] == 0
    assert doc["hosts"]["h72a"]["error"] == "libvirt at x: no answer"
    text = "\n".join(status.lines(doc))
    assert "host h72a: VMs not read" in text and "the hook would refuse it on every host" in text


def test_scale_10000_hosts_3_profiles_judged_once_each(tmp_path):
    docs = distinct(3)
    make_fleet(str(tmp_path), 10_000, docs)
    store = Store(str(tmp_path))
    records = store.records()
    profiles = store.profiles_of(records)
    assert len(records) == 10_000 and len(profiles) == 3
    c = contract.from_profile(profile.Profile.from_json(docs[1], "d1"))
    vms = [from_xml(records[i].name, f"vm{i}", "running", pinned_xml(c, f"vm{i}")) for i in range(200)]
    judge = Judge()
    doc = status.compute(records, profiles, vms, {}, judge)
    assert judge.checks == 3
    assert len(doc["verdicts"]) == 1 and len(json.dumps(doc)) < 2_000_000


def test_fleet_baseline_is_the_engine_baseline_over_distinct_and_previous_profiles(fleet):
    records = fleet.records()
    doc = baseline.compute(fleet, records, arch="aarch64")
    current = {r.profile for r in records}
    everyone = [p for d, p in fleet.profiles_of(records).items()]
    previous = {r.previous for r in records if r.previous and r.previous not in current}
    assert previous == {DOCS["6.1.0-50-arm64"]["digest"]} - current or previous == set()
    plain = engine_baseline.compute(everyone, [fleet.profile(d, "x") for d in previous], None, None)
    assert doc["contract"] == plain["contract"]
    assert sorted(h for hs in doc["fleet"]["hosts"].values() for h in hs) == sorted(r.name for r in records)
    assert doc["format"] == engine_baseline.FORMAT


def test_fleet_baseline_keeps_the_rollback(tmp_path):
    store = Store(str(tmp_path))
    store.publish(DOCS["7.2.13+deb14-arm64"], "x", "h1")
    store.publish(DOCS["6.12.117+deb13-arm64"], "x", "h2")
    store.publish(DOCS["7.2.13+deb14-arm64"], "x", "h2")     # h2 upgraded from 6.12
    records = store.records()
    with_rb = baseline.compute(store, records)
    without = baseline.compute(store, records, rollback=False)
    assert with_rb["fleet"]["rollback_of"] == {baseline.label(model("6.12.117+deb13-arm64")): ["h2"]}
    assert with_rb["contract"]["digest"] != without["contract"]["digest"]
    assert len(with_rb["hosts"]) == 2 and len(without["hosts"]) == 1


def test_fleet_baseline_wants_one_arch(tmp_path):
    store = Store(str(tmp_path))
    store.publish(DOCS["7.2.13+deb14-arm64"], "x", "arm1")
    store.publish(profile.load(X86[0]).doc, "x", "x1")
    invalid(baseline.compute, store, store.records(), error=UsageError, grep="pick one with --arch")
    assert baseline.compute(store, store.records(), arch="aarch64")["contract"]["arch"] == "aarch64"


def test_whatif_rollback_of_a_host(fleet):
    records = fleet.records()
    profiles = fleet.profiles_of(records)
    host = next(r for r in records if r.name == "h61b")
    c61 = contract.from_profile(model("6.1.0-50-arm64"))
    c72 = contract.from_profile(model("7.2.13+deb14-arm64"))
    vms = [from_xml("h61", "comes", "running", pinned_xml(c61, "comes")),
           from_xml("h72a", "native72", "running", pinned_xml(c72, "native72")),
           from_xml("h61b", "lives-here", "running", pinned_xml(c72, "lives-here"))]
    fleet_contracts = {c.digest: FleetContract(c, ["test"]) for c in (c61, c72)}
    new = fleet.profile(host.previous, "h61b")
    doc = whatif.whatif(host, new, records, profiles, vms, fleet_contracts, Judge())
    j = Judge()
    # a VM pinned to 7.2 can come to h61b now (7.2) and not once it runs 6.1 again
    assert {e["vm"] for e in doc["could_no_longer_come"]} == {
        vm.name for vm in vms if vm.host != "h61b"
        and j.judge(vm.contract, profiles[host.profile]).allow and not j.judge(vm.contract, new).allow}
    assert "native72" in {e["vm"] for e in doc["could_no_longer_come"]}
    assert [e["vm"] for e in doc["could_not_stay"]] == ["lives-here"]
    assert [e["contract"] for e in doc["stops_realising"]] == [c72.digest]
    # 7.2 does not realise the 6.1 contract (its guest read CTR_EL0 0x8444c004: 6.1 does not
    # trap it; 7.2 gives its guests 0x9444c004): rolling back to 6.1 starts realising it
    assert not j.judge(c61, profiles[host.profile]).allow and j.judge(c61, new).allow
    assert [e["contract"] for e in doc["starts_realising"]] == [c61.digest]
    assert whatif.harmful(doc)
    assert "contracts it would stop realising: 1" in "\n".join(whatif.lines(doc))
    # the other way round: h61, on 6.1, upgraded to 7.2 starts realising the 7.2 contract
    h61 = next(r for r in records if r.name == "h61")
    up = whatif.whatif(h61, model("7.2.13+deb14-arm64"), records, profiles, vms, fleet_contracts, Judge())
    assert [e["contract"] for e in up["starts_realising"]] == [c72.digest]
    assert [e["contract"] for e in up["stops_realising"]] == [c61.digest]     # CTR_EL0, as above


def test_whatif_cli_previous_and_exit_code(fleet):
    cp = abiguard("fleet", "whatif", "--fleet", fleet.root, "--host", "h61b", "--as", "previous", "--no-vms",
                  "--contract", ARM["7.2.13+deb14-arm64"], "--json")
    assert cp.returncode == 1, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["as"]["kernel"] == "6.1.0-50-arm64" and len(doc["stops_realising"]) == 1
    same = abiguard("fleet", "whatif", "--fleet", fleet.root, "--host", "h72a", "--as", ARM["7.2.13+deb14-arm64"],
                    "--no-vms")
    assert same.returncode == 0 and "none" in same.stdout
    bad = abiguard("fleet", "whatif", "--fleet", fleet.root, "--host", "h72a", "--as", "previous", "--no-vms")
    assert bad.returncode == 2 and "no previous one" in bad.stderr


def test_matrix_groups_hosts_by_profile_and_draws_every_reason(fleet, tmp_path):
    records = fleet.records()
    gs = matrix.groups(records, fleet.profiles_of(records))
    assert sum(len(g.hosts) for g in gs) == len(records) and len(gs) == 5
    table = matrix.cells(gs)
    for s in gs:
        for d in gs:
            c = table[(s.key, d.key)]
            if s is d:
                assert c["state"] == "same"
                continue
            v = verdict.check_pair(s.profile, d.profile)
            assert (c["state"] == "keeps") == v.allow
    picture = render.svg(gs, table, "test <fleet> & co")
    root = ET.fromstring(picture)
    ns = "{http://www.w3.org/2000/svg}"
    rects = [r for r in root.iter(f"{ns}rect") if r.get("class") == "cell"]
    assert len(rects) == len(gs) ** 2
    for r in rects:
        c = table[(r.get("data-from"), r.get("data-to"))]
        tip = r.find(f"{ns}title").text
        assert r.get("data-state") == c["state"]
        if c["state"] in ("cannot", "pin first"):
            assert c["reason"] in tip
    assert root.find(f"{ns}title").text == "test <fleet> & co"
    cp = abiguard("fleet", "matrix", "--fleet", fleet.root, "--svg", str(tmp_path / "m.svg"))
    assert cp.returncode == 0 and (tmp_path / "m.svg").read_text() == render.svg(
        gs, table, f"abiguard fleet matrix: {len(records)} hosts, {len(gs)} profiles")


def test_names_follow_placement_and_kubernetes_rules():
    c = contract.from_profile(model("6.1.0-50-arm64"))
    t = names.trait(c.digest)
    assert t == "CUSTOM_ABIGUARD_" + c.digest[7:39].upper() and names.is_custom_trait(t) and len(t) <= 255
    label = names.label(c.digest)
    prefix, _, name = label.partition("/")
    assert prefix == "abiguard.io" and len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()
    assert not names.is_custom_trait("CUSTOM_abc") and not names.is_custom_trait("HW_CPU_X86_AVX")
    assert names.is_node_name("node-1.example.com") and not names.is_node_name("Node1")
    assert not names.is_node_name("-x") and not names.is_node_name("a..b")


def test_labels_yaml_and_kubectl(fleet):
    records = fleet.records()
    c61 = contract.from_profile(model("6.1.0-50-arm64"))
    c72 = contract.from_profile(model("7.2.13+deb14-arm64"))
    fc = {c.digest: FleetContract(c, ["t"]) for c in (c61, c72)}
    held = realised(records, fleet.profiles_of(records), fc, Judge())
    nodes, skipped = kube.node_labels(held, list(fc))
    assert skipped == ["hA72"], "a node name is lowercase"
    # 7.2 cannot give 6.1's guest the CTR_EL0 it read there (guest view)
    assert nodes["h72a"] == {names.label(c61.digest): False, names.label(c72.digest): True}
    assert nodes["h510"] == {names.label(c61.digest): False, names.label(c72.digest): False}
    text = kube.yaml(nodes)
    assert f'    {names.label(c72.digest)}: "true"' in text and "name: h510\n  labels: {}" in text
    lines = kube.kubectl(nodes)
    # one word per fleet contract, in the order of the labels' names
    first, second = sorted((names.label(c61.digest), names.label(c72.digest)))
    assert f"kubectl label node h510 {first}- {second}- --overwrite" in lines
    cp = abiguard("fleet", "labels", "--fleet", fleet.root, "--no-vms", "--contract", ARM["6.1.0-50-arm64"],
                  "--kubectl")
    assert cp.returncode == 0 and "kubectl label node h61 " in cp.stdout and "not a Kubernetes node name" in cp.stderr


@pytest.mark.parametrize("url, ok", [
    ("http://127.0.0.1:8778", True), ("https://placement.example.com/placement/", True),
    ("ftp://x", False), ("http://user:pw@x:8778", False), ("http://x:8778?a=b", False), ("http://", False),
    ("http://x:99999", False), ("http://x\n:1", False), ("file:///etc/passwd", False),
])
def test_placement_urls(url, ok):
    if ok:
        assert placement.check_url(url) == url.rstrip("/")
    else:
        invalid(placement.check_url, url, error=UsageError, grep="--url")


def test_placement_unreachable_is_named(fleet):
    import socket

    with socket.socket() as s:           # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cp = abiguard("fleet", "publish-placement", "--fleet", fleet.root, "--no-vms", "--contract",
                  ARM["6.1.0-50-arm64"], "--url", f"http://127.0.0.1:{port}")
    assert cp.returncode == 1 and f"Placement at http://127.0.0.1:{port}" in cp.stderr and "no answer" in cp.stderr


def test_every_fleet_json_answer_names_a_schema_the_man_page_documents(fleet, tmp_path):
    """Each ``fleet`` subcommand's --json carries ``schema: abiguard-fleet-SUB/1``, and the
    man page's JSON OUTPUT section documents it (publish-placement: tests/test_fleet_lab.py,
    against a real Placement)."""
    from pathlib import Path

    man = (Path(__file__).resolve().parents[1] / "packaging/debian/abiguard.8").read_text().replace("\\-", "-")
    root = fleet.root
    runs = {"publish": ["publish", "--host", "hnew", ARM["6.1.0-50-arm64"]], "hosts": ["hosts"],
            "matrix": ["matrix", "--qemu", "7.2"], "status": ["status"],
            "whatif": ["whatif", "--host", "h61b", "--as", "previous", "--no-vms"],
            "labels": ["labels", "--no-vms", "--contract", ARM["6.1.0-50-arm64"]],
            "pull": ["pull", "--ssh-config", str(tmp_path / "ssh_config"), "--timeout", "5", "nobody"]}
    # a host nobody answers for (loopback, port 1): pull still answers, naming it
    (tmp_path / "ssh_config").write_text("Host nobody\n  HostName 127.0.0.1\n  Port 1\n  BatchMode yes\n")
    for name, args in runs.items():
        cp = abiguard("fleet", args[0], "--fleet", root, "--json", *args[1:])
        assert cp.returncode in (0, 1, 2) and cp.stdout.startswith("{"), (name, cp.returncode, cp.stderr)
        doc = json.loads(cp.stdout)
        assert doc["schema"] == f"abiguard-fleet-{name}/1", (name, doc.get("schema"))
        assert f"abiguard-fleet-{name}/1" in man, name
    assert "abiguard-fleet-publish-placement/1" in man
