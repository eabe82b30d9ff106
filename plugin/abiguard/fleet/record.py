"""A fleet host record: ``hosts/<name>.json`` in the fleet directory.

JSON layout (version 1)::

    format    "abiguard-fleet-host"
    version   1
    name      the host's name, the file's own name without ``.json``
    profile   "sha256:<hex>": the profile the host published last (profiles/sha256-<hex>.json)
    previous  the profile it published before that one, or null: what ``fleet whatif``
              offers as the rollback, and what ``fleet baseline`` keeps the fleet able to
              roll back to
    seen      when it was published, UTC, "2026-12-01T23:38:28Z"
    uri       the libvirt URI its VMs are read through, or null
    via       how it arrived: "publish" (fleet publish), "probe", "daemon" (the daemon hook)
              or "pull" (fleet pull, over SSH)

Every member is checked on the way in (:meth:`HostRecord.from_json`): the directory is
shared, and a record is only as trustworthy as the least trustworthy host that can write
there. Members this version does not know are refused, so a record is never half-read.
"""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..model import address
from ..model.fields import Reader

FORMAT = "abiguard-fleet-host"
VERSION = 1
VIA = ("publish", "probe", "daemon", "pull")
#: no record of ours is this big
MAX_BYTES = 64 * 1024
_MEMBERS = frozenset({"format", "version", "name", "profile", "previous", "seen", "uri", "via"})


def is_timestamp(v: object) -> bool:
    """UTC as abiguard writes it: ``YYYY-MM-DDTHH:MM:SSZ``, exactly."""
    if not isinstance(v, str) or len(v) != 20 or not v.isascii():
        return False
    digits = v[0:4] + v[5:7] + v[8:10] + v[11:13] + v[14:16] + v[17:19]
    return digits.isdigit() and (v[4], v[7], v[10], v[13], v[16], v[19]) == ("-", "-", "T", ":", ":", "Z")


def now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class HostRecord:
    """One host of the fleet, as its record says."""

    __slots__ = ("name", "profile", "previous", "seen", "uri", "via")

    def __init__(self, name: str, profile: str, previous: str | None, seen: str, uri: str | None,
                 via: str) -> None:
        self.name = name
        self.profile = profile
        self.previous = previous
        self.seen = seen
        self.uri = uri
        self.via = via

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "name": self.name, "profile": self.profile,
                "previous": self.previous, "seen": self.seen, "uri": self.uri, "via": self.via}

    def render(self) -> str:
        import json

        return json.dumps(self.to_json(), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, doc: Any, source: str, name: str | None = None) -> HostRecord:
        """Check every member; raise InputError naming the file and the first wrong one.

        :param name: the name the file's own name gives; the record must agree (a record
            copied to another name would speak for a host it is not)
        """
        r = Reader(source, InputError)
        r.need(isinstance(doc, dict), "not an abiguard fleet host record (a JSON object): "
                                      "move it out of the fleet directory")
        r.need(doc.get("format") == FORMAT, f"member 'format' must be {FORMAT!r}: not an abiguard fleet host "
                                            "record; move it out of the fleet directory")
        version = doc.get("version")
        r.need(version == VERSION and not isinstance(version, bool),
               f"member 'version' must be {VERSION}: written by another abiguard; publish the host again")
        extra = set(doc) - _MEMBERS
        r.need(not extra, "unknown member(s) " + ", ".join(sorted(map(str, extra)))[:80])
        host = doc.get("name")
        if name is not None and host == name:
            pass                                # the file's name, checked when the directory was listed
        else:
            why = address.host_problem(host)
            r.need(why is None, f"member 'name' {why}")
            r.need(name is None, f"member 'name' says {host!r}, the file is named for {name!r}: a record "
                                 "speaks only for the host it is named after; remove it")
        assert isinstance(host, str)
        profile = r.digest(doc.get("profile"), "profile")
        previous = doc.get("previous")
        if previous is not None:
            previous = r.digest(previous, "previous")
        seen = doc.get("seen")
        r.need(is_timestamp(seen), "member 'seen' must be a UTC time such as 2026-12-01T23:38:28Z")
        assert isinstance(seen, str)
        uri = doc.get("uri")
        if uri is not None:
            why = address.uri_problem(uri)
            r.need(why is None, f"member 'uri' {why}")
        via = doc.get("via")
        if via not in VIA:                      # (one_of would format its message every time)
            via = r.one_of(via, "via", VIA)
        return cls(host, profile, previous, seen, uri, via)
