"""The fleet directory: content-addressed host profiles and one record per host.

Layout::

    DIR/profiles/sha256-<hex>.json   a host profile, named by its own digest
    DIR/hosts/<name>.json            a host record (:mod:`abiguard.fleet.record`)

Each file has one writer at a time and is replaced whole (write to a hidden temporary in
the same directory, fsync, rename), so a reader on any host sees the old file or the new
one. A profile file is immutable once written: its name is its content's digest, so two
hosts publishing the same kernel and QEMU write the same file, and the one that comes
second finds it there and leaves it alone. A record belongs to the host it is named after;
publishing moves the profile it named to ``previous`` and never removes a profile file,
so what a host ran before stays readable (``fleet whatif --as previous``). No locks: on a
shared filesystem (NFS, CephFS, GlusterFS, ``/etc/pve``) rename is the operation all of
them make atomic, where locks are the part each does differently.

Reading is hostile-input reading: every name in ``hosts/`` must be ``<host name>.json``,
every file a regular file (not a symbolic link, a FIFO or a device: opening a FIFO would
hang the reader), size-capped, and every profile is verified against its name on the way
in. Hidden files (the writers' temporaries, NFS's ``.nfsXXXX``) are not read. Anything
else stops the command with exit 2 naming the file and what to do; nothing in the
directory is ever rewritten by a reader.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import InputError, UsageError, printable
from ..model import address
from .record import MAX_BYTES as MAX_RECORD, HostRecord, now

if TYPE_CHECKING:
    from ..model.profile import Profile

PROFILES = "profiles"
HOSTS = "hosts"
_SUFFIX = ".json"
_PREFIX = "sha256-"


def _read(path: str, cap: int) -> bytes:
    """A regular file's bytes, at most ``cap`` of them; FileNotFoundError if absent."""
    import errno
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise
        if e.errno == errno.ELOOP:
            raise InputError(path, "is a symbolic link; the fleet directory holds only files abiguard "
                                   "wrote: remove it") from None
        raise InputError(path, f"cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(path, "is not a regular file; the fleet directory holds only files abiguard "
                                   "wrote: remove it")
        if st.st_size > cap:
            raise InputError(path, f"is larger than {cap} bytes: not an abiguard file; move it out of "
                                   "the fleet directory")
        chunks, size = [], 0
        while chunk := os.read(fd, max(st.st_size + 1, 65536)):   # to its end, even if it grew
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise InputError(path, f"is larger than {cap} bytes: not an abiguard file")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _json(data: bytes, path: str) -> Any:
    import json

    try:
        return json.loads(data)
    except RecursionError:
        raise InputError(path, "nested too deeply: not an abiguard file; move it out of the fleet "
                               "directory") from None
    except ValueError as e:
        raise InputError(path, f"not valid JSON ({printable(e, 120)}): damaged or not abiguard's; publish "
                               "the host again, or move the file out of the fleet directory") from None


class Published:
    """What one publish did.

    :param wrote_profile: the profile file was new (False: the same profile was there)
    :param repaired: a damaged file of that name was replaced by the good content
    :param replaced_bad_record: the host's own record was unreadable and is now replaced
    """

    __slots__ = ("record", "wrote_profile", "repaired", "replaced_bad_record")

    def __init__(self, record: HostRecord, wrote_profile: bool, repaired: bool, replaced_bad_record: bool) -> None:
        self.record = record
        self.wrote_profile = wrote_profile
        self.repaired = repaired
        self.replaced_bad_record = replaced_bad_record


class Store:
    """One fleet directory.

    :param root: the directory; it must exist (an unmounted share must not quietly become
        a local directory that nobody else reads)
    """

    __slots__ = ("root", "_profiles")

    def __init__(self, root: str) -> None:
        self.root = root
        #: digest -> profile, each read and verified once per command
        self._profiles: dict[str, Profile] = {}

    @classmethod
    def open(cls, option: str | None, config_path: str | None = None) -> Store:
        """The directory ``--fleet`` names, else the configured one (``[fleet] dir``)."""
        root = option
        if root is None:
            from ..model.config import Config

            root = Config.load(config_path).fleet_dir
            if root is None:
                from .. import state

                raise UsageError(f"no fleet directory: give --fleet DIR, or set [fleet] dir in "
                                 f"{config_path or state.CONFIG}")
        if not os.path.isdir(root):
            raise UsageError(f"fleet directory {printable(root, 200)} does not exist or is not a directory: "
                             "create it, or mount the shared filesystem there")
        return cls(root)

    # -- paths ------------------------------------------------------------------------------
    def profile_path(self, digest: str) -> str:
        return os.path.join(self.root, PROFILES, _PREFIX + digest[len("sha256:"):] + _SUFFIX)

    def record_path(self, name: str) -> str:
        return os.path.join(self.root, HOSTS, name + _SUFFIX)

    # -- reading ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every host name in ``hosts/``, sorted; InputError for a file that is not a record's."""
        directory = os.path.join(self.root, HOSTS)
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise InputError(directory, f"cannot list: {e.strerror}") from None
        names = []
        for entry in entries:
            if entry.startswith("."):
                continue
            stem = entry[:-len(_SUFFIX)] if entry.endswith(_SUFFIX) else None
            if stem is None or address.host_problem(stem) is not None:
                raise InputError(os.path.join(directory, printable(entry, 200)),
                                 "is not an abiguard host record (hosts/ holds only <host>.json files that "
                                 "abiguard fleet publish writes): move it out of the fleet directory")
            names.append(stem)
        return sorted(names)

    def record(self, name: str) -> HostRecord | None:
        path = self.record_path(name)
        try:
            data = _read(path, MAX_RECORD)
        except FileNotFoundError:
            return None
        return HostRecord.from_json(_json(data, path), path, name)

    def records(self) -> list[HostRecord]:
        """Every host record, sorted by name; InputError naming the first bad file."""
        out = []
        for name in self.names():
            record = self.record(name)
            if record is not None:          # removed since the listing: gone, not bad
                out.append(record)
        return out

    def profile(self, digest: str, wanted_by: str) -> Profile:
        """The profile of that digest, read and verified once.

        :param wanted_by: the file that names it (a record), for the message when it is missing
        """
        got = self._profiles.get(digest)
        if got is not None:
            return got
        from ..model import profile as profile_mod

        path = self.profile_path(digest)
        try:
            data = _read(path, profile_mod.MAX_BYTES)
        except FileNotFoundError:
            raise InputError(wanted_by, f"names profile {digest}, which the fleet directory does not hold "
                                        f"({path} is missing): publish that host again (abiguard fleet "
                                        "publish on it), or remove the record") from None
        loaded = profile_mod.loads(data, path)
        if loaded.digest != digest:
            raise InputError(path, f"holds profile {loaded.digest}, not the one its name says: it was "
                                   "copied or renamed by hand; remove it and publish the hosts again")
        self._profiles[digest] = loaded
        return loaded

    def profiles_of(self, records: list[HostRecord]) -> dict[str, Profile]:
        """digest -> profile for every record's current profile: each distinct one read once."""
        out: dict[str, Profile] = {}
        for rec in records:
            if rec.profile not in out:
                out[rec.profile] = self.profile(rec.profile, self.record_path(rec.name))
        return out

    # -- writing ----------------------------------------------------------------------------
    def publish(self, doc: dict[str, Any], source: str, name: str, uri: str | None = None,
                via: str = "publish", when: str | None = None) -> Published:
        """Store a host's profile document and point its record at it.

        :param source: where the document came from (for messages)
        :param uri: the host's libvirt URI; None keeps the one its record has
        """
        from ..model import profile as profile_mod
        from ..model.profile import atomic_write

        why = address.host_problem(name)
        if why is not None:
            raise UsageError(f"host name {printable(repr(name), 80)} {why}")
        why = None if uri is None else address.uri_problem(uri)
        if why is not None:
            raise UsageError(f"libvirt URI {printable(repr(uri), 120)} {why}")
        model = profile_mod.Profile.from_json(doc, source)
        for sub in (PROFILES, HOSTS):
            try:
                os.makedirs(os.path.join(self.root, sub), mode=0o755, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create {os.path.join(self.root, sub)}: {e.strerror}") from None
        path = self.profile_path(model.digest)
        wrote = repaired = False
        try:
            self.profile(model.digest, source)
        except InputError:
            # missing (the usual case) or damaged: its name says exactly what it must hold
            repaired = os.path.lexists(path)
            try:
                atomic_write(path, profile_mod.render(doc))
            except OSError as e:
                raise UsageError(f"cannot write {path}: {e.strerror}") from None
            wrote = True
        replaced_bad = False
        try:
            old = self.record(name)
        except InputError:
            old, replaced_bad = None, True      # this host's own record, unreadable: replaced
        previous = None
        if old is not None:
            previous = old.profile if old.profile != model.digest else old.previous
        record = HostRecord(name, model.digest, previous, when or now(),
                            uri if uri is not None else (old.uri if old is not None else None), via)
        try:
            atomic_write(self.record_path(name), record.render())
        except OSError as e:
            raise UsageError(f"cannot write {self.record_path(name)}: {e.strerror}") from None
        return Published(record, wrote, repaired, replaced_bad)
