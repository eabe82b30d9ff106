"""The fleet directory (abiguard.fleet.store, .record) and the [fleet] table of
abiguard.toml: content addressing, the previous profile, hostile files and names, two
writers at once. Pure tier: real files in a temporary directory, real bundled profiles."""
from __future__ import annotations

import ast
import hashlib
import json
import multiprocessing
import os
import sys

import pytest

from abiguard.builtin import builtin_profiles
from abiguard.errors import InputError, UsageError
from abiguard.fleet.record import HostRecord
from abiguard.fleet.store import Store
from abiguard.model import address, profile
from abiguard.model.config import Config
from helpers.invalid import invalid
from helpers.run import abiguard

ARM = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
P61, P72, P612 = (profile.load(ARM[k]).doc for k in ("6.1.0-50-arm64", "7.2.13+deb14-arm64",
                                                      "6.12.117+deb13-arm64"))


def snapshot(root) -> dict[str, str]:
    """Every file below root -> sha256 of its bytes."""
    out = {}
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_publish_is_content_addressed_and_keeps_the_previous_profile(tmp_path):
    store = Store(str(tmp_path))
    first = store.publish(P61, "p61", "h1", "qemu+ssh://h1/system")
    assert first.wrote_profile and first.record.previous is None
    path = tmp_path / "profiles" / ("sha256-" + P61["digest"][7:] + ".json")
    assert path.read_text() == profile.render(P61)
    second = store.publish(P61, "p61", "h2")          # the same kernel elsewhere: the same file
    assert not second.wrote_profile
    mtime = path.stat().st_mtime_ns
    upgraded = store.publish(P72, "p72", "h1")
    assert upgraded.record.previous == P61["digest"] and upgraded.record.profile == P72["digest"]
    assert upgraded.record.uri == "qemu+ssh://h1/system", "a publish without --uri keeps the recorded one"
    again = store.publish(P72, "p72", "h1")            # the same again: previous stays what it was
    assert again.record.previous == P61["digest"]
    assert path.stat().st_mtime_ns == mtime, "the previous profile is never rewritten"
    assert sorted(os.listdir(tmp_path / "profiles")) == sorted(
        f"sha256-{d['digest'][7:]}.json" for d in (P61, P72))
    records = Store(str(tmp_path)).records()
    assert [(r.name, r.profile) for r in records] == [("h1", P72["digest"]), ("h2", P61["digest"])]
    assert json.loads((tmp_path / "hosts" / "h1.json").read_text())["format"] == "abiguard-fleet-host"


def test_each_distinct_profile_is_read_once(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    for i in range(30):
        store.publish((P61, P72, P612)[i % 3], "doc", f"host{i:02d}")
    reads = []
    real = profile.loads
    monkeypatch.setattr(profile, "loads", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    fresh = Store(str(tmp_path))
    got = fresh.profiles_of(fresh.records())
    assert len(got) == 3 and len(reads) == 3


@pytest.mark.parametrize("name, content, grep", [
    ("notes.txt", b"hello", "is not an abiguard host record"),
    ("Bad Name.json", b"{}", "is not an abiguard host record"),
    ("h9.json", b"{not json", "not valid JSON"),
    ("h9.json", json.dumps({"format": "something-else"}).encode(), "not an abiguard fleet host record"),
    ("h9.json", json.dumps({"format": "abiguard-fleet-host", "version": 1, "name": "other",
                            "profile": "sha256:" + "0" * 64, "previous": None, "seen": "2026-12-01T00:00:00Z",
                            "uri": None, "via": "publish"}).encode(), "speaks only for the host it is named after"),
    ("h9.json", json.dumps({"format": "abiguard-fleet-host", "version": 1, "name": "h9",
                            "profile": "sha256:" + "0" * 64, "previous": None, "seen": "yesterday",
                            "uri": None, "via": "publish"}).encode(), "member 'seen'"),
    ("h9.json", json.dumps({"format": "abiguard-fleet-host", "version": 1, "name": "h9",
                            "profile": "sha256:" + "0" * 64, "previous": None, "seen": "2026-12-01T00:00:00Z",
                            "uri": "qemu+ext:///system?command=/tmp/evil", "via": "publish"}).encode(),
     "ext transport runs a program"),
    ("h9.json", json.dumps({"format": "abiguard-fleet-host", "version": 1, "name": "h9",
                            "profile": "sha256:" + "0" * 64, "previous": None, "seen": "2026-12-01T00:00:00Z",
                            "uri": "qemu+ssh://h9/system?netcat=/tmp/evil", "via": "publish"}).encode(),
     "has the parameter 'netcat'"),
    ("h9.json", b"[" * 60000, "nested too deeply"),
    ("h9.json", b" " * (70 * 1024), "larger than"),
])
def test_a_foreign_or_corrupt_file_is_named_and_nothing_is_rewritten(tmp_path, name, content, grep):
    store = Store(str(tmp_path))
    store.publish(P61, "p61", "h1")
    (tmp_path / "hosts" / name).write_bytes(content)
    before = snapshot(tmp_path)
    e = invalid(Store(str(tmp_path)).records, error=InputError, grep=grep)
    assert str(tmp_path / "hosts") in str(e)
    assert snapshot(tmp_path) == before
    cp = abiguard("fleet", "hosts", "--fleet", str(tmp_path))
    assert cp.returncode == 2 and grep in cp.stderr and str(tmp_path / "hosts") in cp.stderr, cp.stderr
    assert cp.stderr.startswith("abiguard: ") and "Traceback" not in cp.stderr
    assert snapshot(tmp_path) == before


def test_hidden_files_are_writers_temporaries_and_not_read(tmp_path):
    store = Store(str(tmp_path))
    store.publish(P61, "p61", "h1")
    (tmp_path / "hosts" / ".abiguard-x1y2z3").write_bytes(b"half a recor")
    (tmp_path / "hosts" / ".nfs0000000001").write_bytes(b"\0\0")
    assert [r.name for r in store.records()] == ["h1"]


def test_a_symlink_or_fifo_is_refused_not_followed_or_opened(tmp_path):
    store = Store(str(tmp_path))
    store.publish(P61, "p61", "h1")
    os.symlink("/etc/passwd", tmp_path / "hosts" / "h2.json")
    invalid(store.records, error=InputError, grep="is a symbolic link")
    os.unlink(tmp_path / "hosts" / "h2.json")
    os.mkfifo(tmp_path / "hosts" / "h3.json")       # opening it for reading would block forever
    invalid(store.records, error=InputError, grep="is not a regular file")


def test_a_record_pointing_at_a_missing_profile_names_the_record(tmp_path):
    store = Store(str(tmp_path))
    store.publish(P61, "p61", "h1")
    os.unlink(store.profile_path(P61["digest"]))
    records = store.records()
    e = invalid(store.profiles_of, records, error=InputError, grep="which the fleet directory does not hold")
    assert str(e).startswith(f"abiguard: {store.record_path('h1')}: ")
    cp = abiguard("fleet", "matrix", "--fleet", str(tmp_path))
    assert cp.returncode == 2 and store.record_path("h1") in cp.stderr


@pytest.mark.parametrize("damage, grep", [
    (lambda text: text.replace('"kernel_release": "6.1.0-50-arm64"', '"kernel_release": "6.1.0-99-arm64"'),
     "does not match its digest"),
    (lambda text: text[: len(text) // 2], "not valid JSON"),
])
def test_a_damaged_profile_file_is_refused_and_a_publish_repairs_it(tmp_path, damage, grep):
    store = Store(str(tmp_path))
    store.publish(P61, "p61", "h1")
    path = store.profile_path(P61["digest"])
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(damage(text))
    invalid(Store(str(tmp_path)).profile, P61["digest"], "h1", error=InputError, grep=grep)
    done = Store(str(tmp_path)).publish(P61, "p61", "h2")
    assert done.repaired and open(path).read() == profile.render(P61)


def test_a_profile_under_another_digests_name_is_refused(tmp_path):
    store = Store(str(tmp_path))
    store.publish(P61, "p61", "h1")
    store.publish(P72, "p72", "h2")
    os.replace(store.profile_path(P72["digest"]), store.profile_path(P61["digest"]))
    invalid(Store(str(tmp_path)).profile, P61["digest"], "h1", error=InputError, grep="not the one its name says")


def _publisher(root: str, name: str, docs: list[dict], rounds: int) -> None:
    store = Store(root)
    for i in range(rounds):
        store.publish(docs[i % len(docs)], "doc", name)


def test_two_hosts_publishing_at_once_lose_nothing(tmp_path):
    root = str(tmp_path)
    Store(root).publish(P612, "p612", "bystander")
    bystander = snapshot(tmp_path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_publisher, args=(root, name, docs, 40))
             for name, docs in (("h1", [P61, P72]), ("h2", [P72, P61]), ("h1x", [P61]))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = Store(root)
    records = {r.name: r for r in store.records()}
    assert set(records) == {"bystander", "h1", "h2", "h1x"}
    assert records["h1"].profile == P72["digest"] and records["h1"].previous == P61["digest"]
    assert records["h2"].profile == P61["digest"] and records["h2"].previous == P72["digest"]
    assert len(store.profiles_of(list(records.values()))) == 3
    leftovers = [f for d in ("hosts", "profiles") for f in os.listdir(tmp_path / d) if f.startswith(".")]
    assert leftovers == [], "every temporary was renamed into place"
    now = snapshot(tmp_path)
    assert {k: now[k] for k in bystander} == bystander, "a host publishing never touches another's files"


def test_the_fleet_directory_must_exist(tmp_path):
    invalid(Store.open, str(tmp_path / "not-mounted"), error=UsageError, grep="does not exist")
    invalid(Store.open, None, str(tmp_path / "no.toml"), error=UsageError, grep="no fleet directory")


@pytest.mark.parametrize("name, ok", [
    ("h1", True), ("host-01.example.com", True), ("a_b", True), ("x" * 253, True),
    ("", False), ("-oProxyCommand=evil", False), (".hidden", False), ("a..b", False), ("a/b", False),
    ("a b", False), ("x" * 254, False), ("h\n1", False), ("é", False),
])
def test_host_names(name, ok):
    assert (address.host_problem(name) is None) is ok


@pytest.mark.parametrize("uri, ok", [
    ("qemu+ssh://root@h1.example.com/system", True), ("qemu+tcp://169.254.77.2/system", True),
    ("qemu:///system", True), ("qemu+tls://[fe80::1]:16514/system", True),
    ("qemu+unix:///system?socket=/var/tmp/lab/a/run/libvirt-sock", True), ("qemu+ssh://h1/session?no_tty=1", True),
    ("qemu+ext:///system?command=/bin/sh", False), ("qemu+ssh://h1/system?command=/tmp/ssh", False),
    ("qemu+ssh://h1/system?netcat=/tmp/nc", False), ("qemu+unix://h1/system", False),
    ("xen:///system", False), ("qemu+ssh://h1/embed?root=/tmp", False), ("qemu+ssh://-oProxy/system", False),
    ("qemu+ssh://h1/system#x", False), ("qemu+ssh://h1:99999/system", False), ("qemu+ssh://h1/system\n", False),
    ("qemu+unix:///system?socket=../../etc", False), ("qemu+ssh://h1/system?socket=/x", False),
])
def test_libvirt_uris_a_record_may_carry(uri, ok):
    assert (address.uri_problem(uri) is None) is ok, address.uri_problem(uri)


def test_config_fleet_table(tmp_path):
    cfg = tmp_path / "abiguard.toml"
    cfg.write_text('[policy]\nunpinned = "refuse"\n[fleet]\ndir = "/srv/fleet"\nhost = "h1"\n'
                   'uri = "qemu+ssh://h1.example.com/system"\n')
    c = Config.parse(str(cfg))
    assert (c.unpinned, c.fleet_dir, c.fleet_host, c.fleet_uri) == ("refuse", "/srv/fleet", "h1",
                                                                    "qemu+ssh://h1.example.com/system")


@pytest.mark.parametrize("text, grep", [
    ('[fleet]\ndirr = "/srv/fleet"\n', "unknown setting 'fleet.dirr'"),
    ('[fleets]\ndir = "/srv/fleet"\n', "unknown table or setting 'fleets'"),
    ('fleet = "x"\n', "[fleet] must be a table"),
    ('[fleet]\ndir = "relative/dir"\n', "[fleet] dir must be an absolute path"),
    ('[fleet]\ndir = "/srv/fleet"\nuri = "qemu+ext:///system?command=/bin/sh"\n', "[fleet] uri"),
    ('[fleet]\nhost = "-oProxyCommand=x"\n', "[fleet] host"),
])
def test_config_refuses_unknown_or_bad_fleet_settings(tmp_path, text, grep):
    cfg = tmp_path / "abiguard.toml"
    cfg.write_text(text)
    e = invalid(Config.parse, str(cfg), error=InputError, grep=grep)
    assert str(e).startswith(f"abiguard: {cfg}: ")
    root = tmp_path / "root"
    os.makedirs(root / "etc/abiguard")
    (root / "etc/abiguard/abiguard.toml").write_text(text)
    cp = abiguard("fleet", "hosts", env_extra={"ABIGUARD_ROOT": str(root)})
    assert cp.returncode == 2 and grep in cp.stderr and "abiguard.toml" in cp.stderr, cp.stderr


def test_config_cache_keeps_the_fleet_settings(tmp_path, monkeypatch):
    from abiguard import state
    from abiguard.model import config as config_mod

    monkeypatch.setattr(state, "STATE", str(tmp_path / "state"))
    cfg = tmp_path / "abiguard.toml"
    cfg.write_text('[fleet]\ndir = "/srv/fleet"\nhost = "h1"\n')
    first = Config.load(str(cfg))
    assert os.path.exists(tmp_path / "state" / "config.cache")
    monkeypatch.setattr(Config, "parse", classmethod(lambda cls, p: pytest.fail("the cache was not used")))
    again = config_mod.Config.load(str(cfg))
    assert (again.fleet_dir, again.fleet_host, again.fleet_uri) == (first.fleet_dir, "h1", None)


def _static_closure(root: str) -> dict[str, ast.Module]:
    """module name -> parsed source, for every abiguard module ``root`` can import (at
    module level or inside a function) and the packages those modules are in."""
    import abiguard

    base = os.path.dirname(abiguard.__file__)

    def source(name: str) -> tuple[str, bool] | None:
        if name != "abiguard" and not name.startswith("abiguard."):
            return None
        path = os.path.join(base, *name.split(".")[1:])
        if os.path.isfile(os.path.join(path, "__init__.py")):
            return os.path.join(path, "__init__.py"), True
        return (path + ".py", False) if os.path.isfile(path + ".py") else None

    trees: dict[str, ast.Module] = {}
    wanted = [root]
    while wanted:
        name = wanted.pop()
        found = source(name)
        if name in trees or found is None:
            continue
        path, is_package = found
        with open(path) as f:
            trees[name] = tree = ast.parse(f.read(), path)
        package = name if is_package else name.rpartition(".")[0]
        wanted += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (parent, node.module or "") if p)
                wanted += [module, *(f"{module}.{a.name}" for a in node.names)]
    return trees


def test_the_hook_path_never_imports_the_fleet_package(tmp_path):
    """Statically: of the hook's static import closure (every abiguard module that
    abiguard.hook.protocol can import, wherever the import statement sits, with the packages
    they are in: the daemon hook's included), only the daemon hook names the fleet package,
    and it does so lazily; at run time: a judged operation with a [fleet] table configured
    loads none of it."""
    import subprocess

    naming = set()
    for module, tree in _static_closure("abiguard.hook.protocol").items():
        if module.startswith("abiguard.fleet"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "fleet" in node.module.split("."):
                naming.add(module)
                assert node not in tree.body, f"{module} imports the fleet package at import time"
    assert naming == {"abiguard.hook.daemon"}
    root = tmp_path / "root"
    os.makedirs(root / "etc/abiguard")
    os.makedirs(root / "var/lib/abiguard")
    (root / "etc/abiguard/abiguard.toml").write_text(f'[fleet]\ndir = "{tmp_path}"\n')
    profile.save(P72, str(root / "var/lib/abiguard/host-profile.json"))
    code = ("import sys; from abiguard.hook.protocol import run; "
            "rc, out, err = run(['x', 'vm', 'migrate', 'begin', '-'], "
            "b\"<domain type='kvm'><name>vm</name><uuid>6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10</uuid>"
            "<os><type arch='aarch64' machine='virt'>hvm</type></os></domain>\"); "
            "print(rc, sorted(m for m in sys.modules if m.startswith('abiguard.fleet')))")
    from helpers.run import env

    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                        env=dict(env(), ABIGUARD_ROOT=str(root)))
    assert cp.stdout.strip() == "0 []", cp.stdout + cp.stderr


def test_a_record_round_trips():
    rec = HostRecord("h1", "sha256:" + "a" * 64, "sha256:" + "b" * 64, "2026-12-01T23:38:28Z",
                     "qemu+tcp://h1/system", "daemon")
    again = HostRecord.from_json(json.loads(rec.render()), "h1.json", "h1")
    assert again.to_json() == rec.to_json()
