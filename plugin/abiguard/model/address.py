"""Where fleet hosts are: their names and the libvirt URIs that reach them, as a fleet
record, a ``[fleet]`` table of abiguard.toml or a command line carries them.

Both are hostile input. A host name becomes a file name in the fleet directory
(``hosts/<name>.json``) and an ``ssh`` destination, so it is one DNS-style name and never
starts with ``-`` or ``.``. A libvirt URI is handed to ``virConnectOpen`` on the operator's
machine, and some of libvirt's URIs run programs there: the ``ext`` transport runs
``?command=``, the ssh transports take ``?command=`` (the ssh binary) and ``?netcat=``
(run on the far side) (libvirt docs/uri.rst, "Extra parameters"). A record written by a
compromised host must not make ``abiguard fleet status`` run its program, so only
``qemu`` URIs over unix, tcp, tls and the ssh transports pass, with a ``/system`` or
``/session`` path and no parameter but ``socket`` (unix), ``mode`` and ``no_tty``.

Standard library only and no ``re``: :mod:`abiguard.model.config` validates its
``[fleet]`` table with these, and the config module is on the hook's path.
"""
from __future__ import annotations

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_HOST_CHARS = _ALNUM | frozenset("-_.")
_PATH_CHARS = _ALNUM | frozenset("/._+-")
#: the transports a fleet record may name (qemu is the only driver abiguard judges)
TRANSPORTS = ("", "unix", "tcp", "tls", "ssh", "libssh", "libssh2")
PATHS = ("/system", "/session")
#: parameters that only say where or how to connect, never what to run
PARAMETERS = {"socket": ("unix",), "mode": TRANSPORTS, "no_tty": TRANSPORTS}
MAX_URI = 1024
MAX_HOST = 253


def host_problem(name: object) -> str | None:
    """Why ``name`` is not a fleet host name (None: it is one): 1 to 253 characters of
    letters, digits, ``-``, ``_`` and ``.``, starting with a letter or digit, no empty
    dot-separated part."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_HOST:
        return f"must be a host name of 1 to {MAX_HOST} characters"
    if not _HOST_CHARS.issuperset(name):
        return "may hold only letters, digits, '-', '_' and '.'"
    if name[0] not in _ALNUM:
        return "must start with a letter or a digit"
    if ".." in name or name.endswith("."):
        return "has an empty part between dots"
    return None


def ssh_problem(dest: object) -> str | None:
    """Why ``dest`` is not an ssh destination ``[user@]host`` (None: it is one)."""
    if not isinstance(dest, str):
        return "must be a string"
    user, _, host = dest.rpartition("@")
    if user and host_problem(user) is not None:
        return "has a user name that is not letters, digits, '-', '_' and '.'"
    problem = host_problem(host)
    return None if problem is None else f"host {problem}"


def _path_ok(path: str) -> bool:
    return path.startswith("/") and ".." not in path.split("/") and _PATH_CHARS.issuperset(path)


def is_path(path: object, max_len: int = 4096) -> bool:
    """An absolute path of plain characters (letters, digits, ``/._+-``), no ``..`` part."""
    return isinstance(path, str) and 0 < len(path) <= max_len and _path_ok(path)


def uri_problem(uri: object) -> str | None:
    """Why ``uri`` is not a libvirt URI a fleet may record (None: it is one)."""
    if not isinstance(uri, str) or not 0 < len(uri) <= MAX_URI or not uri.isascii() or not uri.isprintable():
        return f"must be a libvirt URI of at most {MAX_URI} printable ASCII characters"
    if any(c in uri for c in " \"'\\<>`#"):
        return "holds a blank, a quote, a backslash, markup or a fragment"
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "must look like qemu+ssh://host/system"
    driver, _, transport = scheme.partition("+")
    if driver != "qemu" or transport not in TRANSPORTS:
        return (f"must use the qemu driver over {', '.join(t for t in TRANSPORTS if t)} "
                "(the ext transport runs a program: refused)")
    where, _, query = rest.partition("?")
    slash = where.find("/")
    authority, path = (where, "") if slash < 0 else (where[:slash], where[slash:])
    if path not in PATHS:
        return f"must name the path {' or '.join(PATHS)}"
    if authority:
        user, _, hostport = authority.rpartition("@")
        host, port = hostport, ""
        if hostport.startswith("["):            # [IPv6]:port
            end = hostport.find("]")
            host, port = hostport[1:end], hostport[end + 1:].removeprefix(":")
            if end < 0 or not host or not frozenset("0123456789abcdefABCDEF:.").issuperset(host):
                return "has a malformed [IPv6] address"
        elif ":" in hostport:
            host, _, port = hostport.partition(":")
            if host_problem(host) is not None:
                return "has a host that is not a host name"
        elif host_problem(host) is not None:
            return "has a host that is not a host name"
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            return "has a port that is not 1 to 65535"
        if user and host_problem(user) is not None:
            return "has a user name that is not letters, digits, '-', '_' and '.'"
        if transport == "unix":
            return "names a host, but a unix socket is local"
    for item in query.split("&") if query else ():
        key, eq, value = item.partition("=")
        allowed = PARAMETERS.get(key)
        if allowed is None:
            return (f"has the parameter {key[:40]!r}: a fleet record may carry only "
                    f"{', '.join(sorted(PARAMETERS))} (command= and netcat= run programs)")
        if transport not in allowed:
            return f"has the parameter {key!r}, which only the {', '.join(allowed)} transport takes"
        if not eq or (key == "socket" and not _path_ok(value)) or (key != "socket" and not value.isalnum()):
            return f"has a malformed value for {key!r}"
    return None
