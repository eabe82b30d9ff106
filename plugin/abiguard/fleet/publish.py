"""A host publishing its own profile: what ``abiguard fleet publish`` does by default, and
what the daemon hook and ``abiguard probe`` do by themselves when ``[fleet] dir`` is set.

The name a host publishes as is ``--host``, else ``[fleet] host``, else its node name; the
URI is ``--uri``, else ``[fleet] uri``, else what its record already says.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import AbiguardError, UsageError, printable

if TYPE_CHECKING:
    from ..model.config import Config
    from .store import Published, Store


def this_host(config: Config, option: str | None = None) -> str:
    """The name this host publishes as."""
    import os

    from ..model import address

    name = option or config.fleet_host or os.uname().nodename
    why = address.host_problem(name)
    if why is not None:
        raise UsageError(f"this host's name {printable(repr(name), 80)} {why}: set [fleet] host in "
                         "abiguard.toml, or give --host")
    return name


def publish(store: Store, doc: dict[str, Any], source: str, config: Config, host: str | None = None,
            uri: str | None = None, via: str = "publish") -> Published:
    return store.publish(doc, source, this_host(config, host), uri or config.fleet_uri, via)


def publish_configured(doc: dict[str, Any], source: str, via: str, config_path: str | None = None) -> str | None:
    """Publish to the configured fleet directory, if one is configured; never raises.

    :returns: the line to report (None: no fleet directory is configured)
    """
    from ..model.config import Config
    from .store import Store

    try:
        config = Config.load(config_path)
        if config.fleet_dir is None:
            return None
        store = Store.open(config.fleet_dir)
        done = publish(store, doc, source, config, via=via)
    except AbiguardError as e:
        return f"not published to the fleet directory: {str(e).removeprefix('abiguard: ')}"
    except OSError as e:
        return f"not published to the fleet directory: {printable(e, 200)}"
    rec = done.record
    return (f"published to the fleet directory {store.root} as {rec.name} ({rec.profile[:19]}"
            + (", profile new there" if done.wrote_profile else "") + ")")
