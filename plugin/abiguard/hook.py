"""The libvirt qemu hook: veto or stamp incoming migrations and restores, refuse to boot a
VM whose contract this host cannot realise.

libvirt runs ``/etc/libvirt/hooks/qemu.d/abiguard DOMAIN OP SUBOP EXTRA`` with the domain
XML on stdin (docs/hooks.rst). ``migrate begin`` and ``restore begin`` run on the
destination before QEMU starts and before any RAM moves; their stdout replaces the XML
(empty output keeps it). A non-zero exit aborts the operation and libvirt hands our
stderr to the ``virsh`` user, so a refusal is one line starting ``abiguard:``.

Fail closed: any error refuses, with the traceback in the log. Never hang: stdin is read
with a size cap and a deadline, nothing touches the network, nothing calls back into
libvirt (the daemon is waiting for us). Imports stay lazy: this runs on the migration path.
"""
from __future__ import annotations

import os
import sys
import time

MAX_STDIN = 4 * 1024 * 1024
STDIN_DEADLINE = 10.0
# ABIGUARD_ROOT moves every path below a directory, for tests and benchmarks; libvirt runs
# hooks with a cleared environment (vircommand.c virCommandAddEnvPassCommon), so it never
# reaches a hook that libvirt started
_ROOT = os.environ.get("ABIGUARD_ROOT", "/")
ETC = os.path.join(_ROOT, "etc/abiguard")
STATE = os.path.join(_ROOT, "var/lib/abiguard")
LOGDIR = os.path.join(_ROOT, "var/log/abiguard")
CONFIG = os.path.join(ETC, "abiguard.toml")
PROFILE = os.path.join(STATE, "host-profile.json")
INCOMING = os.path.join(STATE, "incoming")
LOG = os.path.join(LOGDIR, "hook.log")
LOG_MAX = 1024 * 1024
#: a migrate/restore marker older than this does not make a later start "incoming"
MARKER_TTL = 600.0


class Refusal(Exception):
    """The hook says no; ``str()`` is the line the virsh user reads."""


def read_stdin(fd: int = 0) -> bytes:
    import select

    chunks, size = [], 0
    deadline = time.monotonic() + STDIN_DEADLINE
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise Refusal("abiguard: timed out reading the domain XML from libvirt")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_STDIN:
            raise Refusal(f"abiguard: domain XML larger than {MAX_STDIN} bytes: refusing it")
        chunks.append(chunk)


def log(line: str) -> None:
    try:
        os.makedirs(LOGDIR, mode=0o750, exist_ok=True)
        if os.path.exists(LOG) and os.path.getsize(LOG) > LOG_MAX:
            os.replace(LOG, LOG + ".1")
        with open(LOG, "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line.rstrip("\n") + "\n")
    except OSError:
        pass  # logging must never turn an answer into a failure


class Config:
    """/etc/abiguard/abiguard.toml; a missing file means the defaults."""

    UNPINNED = ("allow", "warn", "refuse")

    def __init__(self, unpinned: str = "warn", allow_widening: bool = False) -> None:
        self.unpinned = unpinned
        self.allow_widening = allow_widening

    @classmethod
    def load(cls, path: str = CONFIG) -> "Config":
        """Parsed with tomllib when the file changed; a marshal cache keyed by the file's
        size and mtime spares every other hook run tomllib's import of re."""
        import marshal

        try:
            st = os.stat(path)
        except FileNotFoundError:
            return cls()
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cache = os.path.join(STATE, "config.cache")
        try:
            with open(cache, "rb") as f:
                cached_key, unpinned, widening = marshal.loads(f.read(4096))
            if tuple(cached_key) == key:
                return cls(unpinned, widening)
        except (OSError, EOFError, ValueError, TypeError):
            pass
        config = cls._parse(path)
        try:
            from .profile import atomic_write
            os.makedirs(STATE, mode=0o755, exist_ok=True)
            atomic_write(cache, marshal.dumps((key, config.unpinned, config.allow_widening)), 0o600)
        except OSError:
            pass  # a read-only state directory only costs speed
        return config

    @classmethod
    def _parse(cls, path: str) -> "Config":
        with open(path, "rb") as f:
            raw = f.read(65536)
        import tomllib

        from .errors import InputError

        try:
            doc = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise InputError(path, f"not valid TOML ({e}): fix or remove the file") from None
        policy = doc.get("policy", {})
        unknown = set(policy) - {"unpinned", "allow_widening"}
        if unknown or set(doc) - {"policy"}:
            raise InputError(path, f"unknown setting(s) {sorted(unknown | (set(doc) - {'policy'}))}: "
                             "abiguard knows [policy] unpinned and allow_widening")
        unpinned = policy.get("unpinned", "warn")
        widening = policy.get("allow_widening", False)
        if unpinned not in cls.UNPINNED or not isinstance(widening, bool):
            raise InputError(path, "[policy] unpinned must be allow, warn or refuse; "
                             "allow_widening must be true or false")
        return cls(unpinned, widening)


def _load_profile() -> dict:
    from . import profile
    from .errors import ProfileError

    try:
        return profile.load_for_hook(PROFILE)
    except ProfileError as e:
        raise Refusal(f"{e} (refresh it: 'abiguard probe -o {PROFILE}', or restart libvirtd)") from None


def _unpinned(config: Config, dom: str, op: str) -> int:
    if config.unpinned == "refuse":
        log(f"{op} {dom}: no contract; policy refuse: REFUSE")
        raise Refusal(f"abiguard: VM '{dom}' has no guest ABI contract and this host refuses unpinned "
                      f"VMs ({CONFIG}); pin it first: abiguard pin {dom}")
    log(f"{op} {dom}: no contract; policy {config.unpinned}: allowed")
    if config.unpinned == "warn":
        print(f"abiguard: warning: VM '{dom}' has no guest ABI contract; its ABI is not checked", file=sys.stderr)
    return 0


def _contract(facts, dom: str) -> dict | None:
    from . import contract
    from .errors import ContractError

    if facts.contract is None:
        return None
    try:
        return contract.from_element(facts.contract, f"contract of '{dom}'")
    except ContractError as e:
        raise Refusal(f"{e}: the VM's metadata is not a contract abiguard can trust; re-pin it on the "
                      "source (abiguard pin)") from None


def _stamp_stream(facts, sealed: dict, dom: str) -> list[str] | None:
    """The register stream the VM carries now: the stamp of its last hop, if it has one."""
    from .contract import MAX_REGISTERS, is_arm64_reg

    stamp = facts.stamp
    if stamp is None or sealed["arch"] != "aarch64":
        return None
    if stamp.get("contract") != sealed["digest"]:
        raise Refusal(f"abiguard: VM '{dom}': its hop stamp belongs to another contract "
                      f"({stamp.get('contract')}); re-pin the VM on its source")
    el = stamp.find("{urn:abiguard:stamp:1}stream")
    ids = (el.text if el is not None else "").split()
    if len(ids) > MAX_REGISTERS or not all(is_arm64_reg(i) for i in ids):
        raise Refusal(f"abiguard: VM '{dom}': its hop stamp lists an invalid register stream")
    return ids


def _check_domain_matches(facts, sealed: dict, dom: str) -> None:
    if facts.arch and facts.arch != sealed["arch"]:
        raise Refusal(f"abiguard: VM '{dom}' is {facts.arch} but its contract is for {sealed['arch']}")
    want = sealed.get("machine_type")
    if want and facts.machine and facts.machine != want:
        raise Refusal(f"abiguard: VM '{dom}' runs machine type {facts.machine} but its contract pins {want}; "
                      "re-pin it (abiguard pin) before moving it")
    model = (sealed.get("x86_64") or {}).get("cpu_model")
    if model and facts.cpu_model != model:
        raise Refusal(f"abiguard: VM '{dom}' runs CPU model {facts.cpu_model or facts.cpu_mode} but its contract "
                      f"pins {model}; re-pin it (abiguard pin) before moving it")


def _stamp(profile: dict, sealed: dict, nonce: str) -> bytes:
    from . import domxml

    attrs = {"host": os.uname().nodename[:64], "kernel": profile["host"]["kernel_release"][:64],
             "profile": profile["digest"], "contract": sealed["digest"], "nonce": nonce,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    qemu = ((profile.get("stack") or {}).get("qemu") or {}).get("version")
    if qemu:
        attrs["qemu"] = qemu
    stream = None
    if sealed["arch"] == "aarch64":
        config = sealed["aarch64"]["config"]
        stream = sorted(profile["kvm"]["aarch64"]["configs"][config]["registers"], key=lambda r: int(r, 16))
    return domxml.stamp_xml(attrs, stream)


def _refuse(op: str, dom: str, problems: list) -> None:
    more = len(problems) - 1
    log(f"{op} {dom}: REFUSE " + " | ".join(p.line() for p in problems))
    raise Refusal(f"abiguard: refusing {op} of '{dom}' to this host: {problems[0].line()}"
                  + (f" (+{more} more: abiguard check)" if more else ""))


def incoming(dom: str, op: str, data: bytes) -> int:
    """migrate begin / restore begin: allow (and stamp) or refuse."""
    from . import domxml, verdict

    facts = domxml.parse(data, f"domain XML of '{dom}'")
    config = Config.load()
    sealed = _contract(facts, dom)
    if sealed is None:
        return _unpinned(config, dom, op)
    _check_domain_matches(facts, sealed, dom)
    stream = _stamp_stream(facts, sealed, dom)
    profile = _load_profile()
    v = verdict.check(sealed, profile, verdict.Policy(allow_widening=config.allow_widening), stream)
    # registers this host adds and the stream lacks widen the ABI unless they are pinned off
    # here; anything else refuses at once
    widen = [p for p in v.problems if p.kind == "widen"]
    hard = [p for p in v.problems if p.kind != "widen"]
    if hard:
        _refuse(op, dom, hard + widen)
    pins = None
    if sealed["arch"] == "aarch64":
        # pin what this host has and the incoming stream lacks (kept off), and the contract's
        # firmware/ID values so that every reset here re-applies them (abiguard_pin.so)
        from . import enforce

        try:
            planned = enforce.plan(sealed, profile, stream, carried=True)
        except enforce.EnforceError as e:
            log(f"{op} {dom}: REFUSE " + " | ".join(e.problems))
            raise Refusal(f"abiguard: refusing {op} of '{dom}' to this host: {e.problems[0]}"
                          + (f" (+{len(e.problems) - 1} more)" if len(e.problems) > 1 else "")) from None
        pinned = {f"{p.id:#x}" for p in planned}
        widen = [p for p in widen if p.reg_id not in pinned]
        pins = enforce.env_value(planned)
        if pins and not os.path.exists(os.path.join(_ROOT, enforce.LIBRARY_PATH.lstrip("/"))):
            raise Refusal(f"abiguard: refusing {op} of '{dom}' to this host: its contract needs register "
                          f"pins and {enforce.LIBRARY_PATH} is missing (abiguard install builds it)")
    if widen:
        _refuse(op, dom, widen)
    nonce = os.urandom(8).hex()
    _mark_incoming(facts.uuid, nonce)
    out = domxml.with_stamp(data, facts, _stamp(profile, sealed, nonce), pins)
    log(f"{op} {dom}: allow, contract {sealed['digest'][:19]}, notes: {'; '.join(v.notes) or '-'}")
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0


def _marker(uuid: str) -> str:
    if not (32 <= len(uuid) <= 36 and all(c in "0123456789abcdefABCDEF-" for c in uuid)):
        raise Refusal(f"abiguard: domain UUID {uuid!r} is not a UUID")
    return os.path.join(INCOMING, uuid.lower())


def _mark_incoming(uuid: str | None, nonce: str) -> None:
    if not uuid:
        raise Refusal("abiguard: domain XML has no <uuid>")
    os.makedirs(INCOMING, mode=0o700, exist_ok=True)
    with open(_marker(uuid), "w") as f:
        f.write(nonce)


def _was_incoming(facts) -> bool:
    """prepare runs for plain starts too: only a fresh marker from migrate/restore begin
    with the same nonce as the stamp makes this start an incoming one."""
    if not facts.uuid or facts.stamp is None:
        return False
    path = _marker(facts.uuid)
    try:
        with open(path) as f:
            nonce = f.read(64)
        fresh = time.time() - os.stat(path).st_mtime < MARKER_TTL
        os.unlink(path)
    except FileNotFoundError:
        return False
    return fresh and nonce == facts.stamp.get("nonce")


def prepare(dom: str, op: str, data: bytes) -> int:
    """prepare begin: a plain start must realise the contract exactly on this host."""
    from . import domxml, verdict

    facts = domxml.parse(data, f"domain XML of '{dom}'")
    config = Config.load()
    sealed = _contract(facts, dom)
    if sealed is None:
        return _unpinned(config, dom, op) if config.unpinned == "refuse" else 0
    if _was_incoming(facts):
        log(f"{op} {dom}: incoming, checked at migrate/restore begin")
        return 0
    _check_domain_matches(facts, sealed, dom)
    profile = _load_profile()
    pinned: dict[int, int] = {}
    if sealed["arch"] == "aarch64":
        from . import enforce

        try:
            planned = enforce.plan(sealed, profile)
            want = enforce.env_value(planned)
        except enforce.EnforceError as e:
            log(f"{op} {dom}: REFUSE start " + " | ".join(e.problems))
            raise Refusal(f"abiguard: this host cannot start '{dom}' with its contract: {e.problems[0]}"
                          + (f" (+{len(e.problems) - 1} more)" if len(e.problems) > 1 else "")) from None
        have = facts.qemu_env.get(domxml.PIN_ENV, ("", None))[0]
        if want and (have != want or facts.qemu_env.get("LD_PRELOAD", ("", None))[0] != enforce.LIBRARY_PATH):
            raise Refusal(f"abiguard: '{dom}' needs {domxml.PIN_ENV}={want} on this host and its definition "
                          f"has {have or 'none'}: run abiguard pin {dom} here")
        if want and not os.path.exists(os.path.join(_ROOT, enforce.LIBRARY_PATH.lstrip("/"))):
            raise Refusal(f"abiguard: '{dom}' needs register pins and {enforce.LIBRARY_PATH} is missing "
                          "(abiguard install builds it)")
        pinned = {p.id: p.value for p in planned if p.how == "preload"}
    gaps = verdict.realise(sealed, profile, pinned)
    if gaps:
        log(f"{op} {dom}: REFUSE start " + " | ".join(p.line() for p in gaps))
        raise Refusal(f"abiguard: this host cannot start '{dom}' with its contract: {gaps[0].line()}"
                      + (f" (+{len(gaps) - 1} more)" if len(gaps) > 1 else ""))
    log(f"{op} {dom}: start realises contract {sealed['digest'][:19]}")
    return 0


HANDLERS = {("migrate", "begin"): incoming, ("restore", "begin"): incoming, ("prepare", "begin"): prepare}


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("abiguard: usage: qemu-hook DOMAIN OPERATION SUBOPERATION [EXTRA] (run by libvirt)",
              file=sys.stderr)
        return 2
    dom, op, sub = argv[1], argv[2], argv[3]
    handler = HANDLERS.get((op, sub))
    try:
        data = read_stdin()
        if handler is None:
            return 0
        return handler(dom, op, data)
    except Refusal as e:
        print(str(e), file=sys.stderr)
        return 1
    except Exception as e:  # fail closed
        import traceback

        from .errors import AbiguardError
        if isinstance(e, AbiguardError):
            log(f"{op} {dom}: REFUSE {e}")
            print(f"{e}", file=sys.stderr)
            return 1
        log(f"{op} {dom}: internal error\n" + traceback.format_exc())
        print(f"abiguard: internal error ({type(e).__name__}: {e}); refusing {op} of '{dom}'; "
              f"details in {LOG}", file=sys.stderr)
        return 1


def daemon_main(argv: list[str]) -> int:
    """/etc/libvirt/hooks/daemon.d/abiguard: refresh the host profile when libvirtd starts.

    The probe asks libvirt for domain capabilities, which would deadlock while the daemon
    waits for this hook, so the refresh runs detached and waits for the daemon to answer.
    """
    if len(argv) < 3 or argv[2] not in ("start", "reload"):
        return 0
    pid = os.fork()
    if pid:
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        from . import profile, probe

        time.sleep(2.0)  # let the daemon finish starting before it is asked for capabilities
        doc = probe.probe_host(with_stack=True)
        os.makedirs(STATE, mode=0o755, exist_ok=True)
        profile.save(doc, PROFILE)
        log(f"daemon {argv[2]}: host profile refreshed ({doc['digest'][:19]})")
    except Exception as e:  # a failed refresh leaves the previous profile in place
        log(f"daemon {argv[2]}: profile refresh failed: {e}")
    os._exit(0)
