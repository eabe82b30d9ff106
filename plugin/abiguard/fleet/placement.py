"""``fleet publish-placement``: tell OpenStack Placement which compute nodes realise which
contracts, as one custom trait per contract (:func:`abiguard.fleet.names.trait`) on each
compute node's resource provider, so that a flavor asking
``trait:CUSTOM_ABIGUARD_<ID>=required`` is only ever offered hosts abiguard's hook accepts.

Why the Placement API and not a nova-compute provider config file
(``[compute] provider_config_location``): which contracts a host realises is a fleet fact
that changes whenever a host's profile changes or a VM is pinned to a new contract, and
nova-compute reads its provider config files only when it starts; the API changes the
traits now, from where the whole fleet is known, without a file on every compute node or
a restart of nova-compute.

The protocol (Placement API reference, microversion 1.6, the first with traits, which
every Placement since Pike serves):

- ``GET /resource_providers``: the compute nodes; a host record is matched to the provider
  of the same name (nova names a compute node's provider by its hypervisor hostname).
- ``PUT /traits/{name}``: create a custom trait (201; 204 when it exists).
- ``GET /resource_providers/{uuid}/traits``: a provider's traits and its generation.
- ``PUT /resource_providers/{uuid}/traits`` with that generation: replace them. Another
  writer (nova-compute, an operator) may have changed the provider meanwhile; Placement
  answers 409 and the update is made again on a fresh read. Traits not abiguard's are
  always written back as they were read.
- ``DELETE /traits/{name}``: an abiguard trait no provider has any more (409 while one
  does: left alone).

Every response is hostile input: size-capped, and each member read is checked.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import EXIT_REFUSE, AbiguardError, InputError, UsageError, printable
from ..model.fields import Reader
from . import names

if TYPE_CHECKING:
    from collections.abc import Callable

MICROVERSION = "1.6"
MAX_RESPONSE = 16 * 1024 * 1024
#: updates of one provider tried before giving up on it (each 409 means another writer won)
ATTEMPTS = 8
_UUID_CHARS = frozenset("0123456789abcdef-")


class PlacementError(AbiguardError):
    """Placement did not answer, or answered with an error: exit 1."""

    exit_code = EXIT_REFUSE


class Conflict(PlacementError):
    """409: the provider's generation moved (another writer was first)."""


def check_url(url: str) -> str:
    """The Placement endpoint: http(s)://host[:port][/path], nothing else."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url.isascii() or not url.isprintable() or " " in url or len(url) > 2048:
        raise UsageError(f"--url {printable(url, 120)!r}: expected http(s)://host[:port][/path]")
    try:
        parts = urlsplit(url)
        _ = parts.port                       # a malformed port raises here
    except ValueError:
        raise UsageError(f"--url {printable(url, 120)!r}: not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url {printable(url, 120)!r}: expected http(s)://host[:port][/path]")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise UsageError(f"--url {printable(url, 120)!r}: no credentials, query or fragment (give a token "
                         "with --token or OS_TOKEN)")
    return url.rstrip("/")


class Provider:
    """A resource provider as Placement lists it."""

    __slots__ = ("uuid", "name", "generation")

    def __init__(self, uuid: str, name: str, generation: int) -> None:
        self.uuid, self.name, self.generation = uuid, name, generation


def _uuid(r: Reader, v: object, where: str) -> str:
    r.need(isinstance(v, str) and len(v) == 36 and _UUID_CHARS.issuperset(v) and v.count("-") == 4,
           f"member '{where}' must be a UUID")
    assert isinstance(v, str)
    return v


class Client:
    """Placement over HTTP (urllib: no dependency beyond the standard library).

    :param url: the endpoint (:func:`check_url`)
    :param token: a Keystone token (X-Auth-Token), or None (a noauth Placement)
    """

    __slots__ = ("url", "token", "timeout", "requests")

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = check_url(url)
        if token is not None and (not token.isascii() or not token.isprintable() or len(token) > 8192):
            raise UsageError("the token must be printable ASCII")
        self.token = token
        self.timeout = timeout
        self.requests = 0

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One call: (status, JSON body or None). PlacementError for a transport failure
        or an error status (Conflict for 409)."""
        import json
        import urllib.error
        import urllib.request

        headers = {"Accept": "application/json", "OpenStack-API-Version": f"placement {MICROVERSION}"}
        if self.token is not None:
            headers["X-Auth-Token"] = self.token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        self.requests += 1
        where = f"Placement at {self.url}: {method} {path}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read(MAX_RESPONSE + 1)
        except urllib.error.HTTPError as e:
            raw = e.read(65536)
            detail = _error_detail(raw)
            cls = Conflict if e.code == 409 else PlacementError
            raise cls(f"{where}: HTTP {e.code}" + (f": {detail}" if detail else "")) from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise PlacementError(f"{where}: no answer ({printable(reason, 200)}): is the URL right and the "
                                 "service up?") from None
        if len(raw) > MAX_RESPONSE:
            raise InputError(where, f"answer larger than {MAX_RESPONSE} bytes: not Placement")
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except (ValueError, RecursionError):
            raise InputError(where, "answer is not JSON: is this a Placement endpoint?") from None

    # -- the calls ----------------------------------------------------------------------------
    def providers(self) -> list[Provider]:
        _, doc = self.request("GET", "/resource_providers")
        r = Reader(f"Placement at {self.url}: GET /resource_providers")
        items = r.lst(r.obj(doc, "(answer)").get("resource_providers"), "resource_providers", 1 << 20)
        out = []
        for i, item in enumerate(items):
            rp = r.obj(item, f"resource_providers[{i}]")
            out.append(Provider(_uuid(r, rp.get("uuid"), f"resource_providers[{i}].uuid"),
                                r.string(rp.get("name"), f"resource_providers[{i}].name", 200),
                                r.integer(rp.get("generation"), f"resource_providers[{i}].generation", 0)))
        return out

    def traits(self, uuid: str) -> tuple[list[str], int]:
        path = f"/resource_providers/{uuid}/traits"
        _, doc = self.request("GET", path)
        r = Reader(f"Placement at {self.url}: GET {path}")
        d = r.obj(doc, "(answer)")
        traits = [r.string(t, "traits[]", names.MAX_TRAIT) for t in r.lst(d.get("traits"), "traits", 1 << 16)]
        return traits, r.integer(d.get("resource_provider_generation"), "resource_provider_generation", 0)

    def put_traits(self, uuid: str, traits: list[str], generation: int) -> int:
        path = f"/resource_providers/{uuid}/traits"
        _, doc = self.request("PUT", path, {"traits": traits, "resource_provider_generation": generation})
        r = Reader(f"Placement at {self.url}: PUT {path}")
        return r.integer(r.obj(doc, "(answer)").get("resource_provider_generation"),
                         "resource_provider_generation", 0)

    def ensure_trait(self, name: str) -> None:
        assert names.is_custom_trait(name), name
        self.request("PUT", f"/traits/{name}")

    def our_traits(self) -> list[str]:
        _, doc = self.request("GET", f"/traits?name=startswith:{names.TRAIT_PREFIX}")
        r = Reader(f"Placement at {self.url}: GET /traits")
        return [t for t in (r.string(x, "traits[]", names.MAX_TRAIT)
                            for x in r.lst(r.obj(doc, "(answer)").get("traits"), "traits", 1 << 20))
                if names.is_ours(t)]

    def delete_trait(self, name: str) -> bool:
        """False when a provider still has it (409)."""
        try:
            self.request("DELETE", f"/traits/{name}")
        except Conflict:
            return False
        return True


def _error_detail(raw: bytes) -> str:
    """Placement's error document (``{"errors": [{"title", "detail"}]}``), one line."""
    import json

    try:
        doc = json.loads(raw)
        first = doc["errors"][0]
        return printable(f"{first.get('title', '')}: {first.get('detail', '')}".strip(": "), 300)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        return printable(raw.decode("utf-8", "replace"), 200)


class Change:
    """What publishing did to one provider."""

    __slots__ = ("provider", "added", "removed", "attempts")

    def __init__(self, provider: str, added: list[str], removed: list[str], attempts: int) -> None:
        self.provider, self.added, self.removed, self.attempts = provider, added, removed, attempts

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "added": self.added, "removed": self.removed, "attempts": self.attempts}


def update_provider(client: Client, rp: Provider, wanted: set[str],
                    before_put: Callable[[Provider, int], None] | None = None) -> Change:
    """Give ``rp`` exactly the abiguard traits in ``wanted``, keeping every other trait.

    :param before_put: called with the provider and the attempt number before each PUT
        (the tests let another writer in there, to see the 409 path taken)
    """
    for attempt in range(1, ATTEMPTS + 1):
        have, generation = client.traits(rp.uuid)
        keep = [t for t in have if not names.is_ours(t)]
        new = sorted(set(keep) | wanted)
        if set(new) == set(have):
            return Change(rp.name, [], [], attempt)
        if before_put is not None:
            before_put(rp, attempt)
        try:
            client.put_traits(rp.uuid, new, generation)
        except Conflict:
            continue                       # another writer moved the generation: read again
        return Change(rp.name, sorted(wanted - set(have)), sorted(t for t in have if names.is_ours(t)
                                                                  and t not in wanted), attempt)
    raise PlacementError(f"Placement at {client.url}: provider {printable(rp.name, 100)} changed under every "
                         f"one of {ATTEMPTS} updates (HTTP 409 each time): try again")


def publish(client: Client, realised: dict[str, list[str]],
            before_put: Callable[[Provider, int], None] | None = None) -> dict[str, Any]:
    """Make Placement's abiguard traits say what ``realised`` (host -> contract digests) says.

    Providers of fleet hosts get their contracts' traits; every other provider loses its
    abiguard traits (no record vouches for it any more); other traits stay as they are.
    """
    wanted = {host: {names.trait(d) for d in digests} for host, digests in realised.items()}
    for t in sorted(set().union(*wanted.values())) if wanted else ():
        client.ensure_trait(t)
    providers = client.providers()
    seen = {rp.name for rp in providers}
    changes = [update_provider(client, rp, wanted.get(rp.name, set()), before_put) for rp in providers]
    in_use = set().union(*wanted.values()) if wanted else set()
    deleted = [t for t in client.our_traits() if t not in in_use and client.delete_trait(t)]
    return {"url": client.url, "providers": [c.to_json() for c in changes if c.added or c.removed],
            "unchanged": sum(1 for c in changes if not (c.added or c.removed)),
            "hosts_without_provider": sorted(set(realised) - seen), "deleted_traits": deleted,
            "requests": client.requests}
