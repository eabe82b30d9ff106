"""``fleet pull HOST...``: fetch hosts' profiles over SSH, for fleets without a shared
filesystem, and publish them into the fleet directory as those hosts.

``ssh HOST cat /var/lib/abiguard/host-profile.json``, with the operator's own ssh set-up
(``~/.ssh/config``, agents, jump hosts; ``--ssh-config FILE`` for another one), in batch
mode so that a host asking for a password fails instead of waiting. The destination is
checked before it reaches ssh (``[user@]host``, never an option), the command is an argv
list (no local shell), and the remote path is plain characters (ssh hands the command to
the remote shell as one line).

What comes back is hostile: read with a size cap (a host that sends more is cut off and
refused, not read to its end), then checked as any profile is. Hosts are fetched a few at
a time, each within its own timeout; one that cannot be reached is named with ssh's own
words, and the others are published.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import AbiguardError, printable
from ..model import address

if TYPE_CHECKING:
    from .store import Published, Store

REMOTE_PROFILE = "/var/lib/abiguard/host-profile.json"
AT_ONCE = 8
DEFAULT_TIMEOUT = 30.0


class PullResult:
    """One host's pull: published, unreachable (``error``) or bad input (``bad``)."""

    __slots__ = ("dest", "name", "published", "error", "bad")

    def __init__(self, dest: str, name: str, published: Published | None = None, error: str | None = None,
                 bad: bool = False) -> None:
        self.dest, self.name, self.published, self.error, self.bad = dest, name, published, error, bad


def ssh_argv(dest: str, path: str = REMOTE_PROFILE, ssh_config: str | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """The ssh command line for one host (checked arguments only)."""
    why = address.ssh_problem(dest)
    if why is not None:
        raise ValueError(f"ssh destination {printable(repr(dest), 80)} {why}")
    if not address.is_path(path, 1024):
        raise ValueError(f"remote path {printable(repr(path), 80)} must be an absolute path of plain characters")
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(timeout))}",
            "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=2"]
    if ssh_config is not None:
        argv += ["-F", ssh_config]
    return argv + ["--", dest, "cat", path]


def run_capped(argv: list[str], cap: int, timeout: float) -> tuple[int | None, bytes, bytes, str | None]:
    """Run ``argv`` (a new session, so it and only it is killed): (exit code, stdout,
    stderr, why it was stopped). stdout beyond ``cap`` bytes stops it."""
    import os
    import selectors
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    err: list[bytes] = []
    sizes = {"out": 0, "err": 0}
    stopped = None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        while sel.get_map() and stopped is None:
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = f"no answer within {timeout:.0f} s"
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                sizes[key.data] += len(chunk)
                if key.data == "out":
                    out.append(chunk)
                    if sizes["out"] > cap:
                        stopped = f"sent more than {cap} bytes: not an abiguard profile"
                elif sizes["err"] < 65536:
                    err.append(chunk)
    if stopped is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)    # the session we started for it
        except ProcessLookupError:
            pass
    rc = proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return (None if stopped else rc), b"".join(out), b"".join(err), stopped


def fetch(dest: str, path: str, ssh_config: str | None, timeout: float) -> bytes:
    """One host's profile bytes; PullError naming the host when ssh fails."""
    from ..model.profile import MAX_BYTES

    try:
        rc, out, err, stopped = run_capped(ssh_argv(dest, path, ssh_config, timeout), MAX_BYTES, timeout + 5)
    except OSError as e:
        raise PullError(dest, f"cannot run ssh: {e.strerror}") from None
    if stopped is not None:
        raise PullError(dest, f"ssh {stopped}")
    if rc != 0:
        said = " ".join(err.decode("utf-8", "replace").split())
        raise PullError(dest, f"ssh failed (exit {rc}): {printable(said, 300) or 'no message'}")
    return out


class PullError(AbiguardError):
    """A host that could not be read (exit 1)."""

    exit_code = 1

    def __init__(self, dest: str, detail: str) -> None:
        super().__init__(f"fleet pull: host {dest}: {detail}")
        self.dest = dest
        self.detail = detail


def pull(store: Store, dests: list[str], path: str = REMOTE_PROFILE, ssh_config: str | None = None,
         uri: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[PullResult]:
    """Fetch every host (a few at once), then publish each good one as the host it came from.

    :param uri: the libvirt URI to record, ``{host}`` standing for the host's name (None:
        keep what its record says)
    """
    import threading

    from ..errors import InputError, UsageError
    from ..model import profile

    for d in dests:
        why = address.ssh_problem(d)
        if why is not None:
            raise UsageError(f"fleet pull: {printable(repr(d), 80)} {why}")
    if not address.is_path(path, 1024):
        raise UsageError(f"--path {printable(repr(path), 80)} must be an absolute path of plain characters")
    why = None if uri is None else address.uri_problem(uri.replace("{host}", "host"))
    if why is not None:
        raise UsageError(f"--uri {printable(repr(uri), 120)} {why}")
    names = {d: d.rpartition("@")[2] for d in dests}
    got: dict[str, bytes | PullError] = {}
    lock = threading.Lock()
    todo = list(dict.fromkeys(dests))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                dest = todo.pop(0)
            try:
                result: bytes | PullError = fetch(dest, path, ssh_config, timeout)
            except PullError as e:
                result = e
            with lock:
                got[dest] = result

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(AT_ONCE, len(todo)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = []
    for dest in dict.fromkeys(dests):
        name, data = names[dest], got[dest]
        if isinstance(data, PullError):
            results.append(PullResult(dest, name, error=data.detail))
            continue
        source = f"{dest}:{path} (over ssh)"
        try:
            doc = profile.parse_json(data, source, InputError)
            record_uri = uri.replace("{host}", name) if uri is not None else None
            results.append(PullResult(dest, name, store.publish(doc, source, name, record_uri, "pull")))
        except InputError as e:
            results.append(PullResult(dest, name, error=str(e).removeprefix("abiguard: "), bad=True))
    return results
