"""Register pins and the preload library's configuration.

A pin is a register value abiguard_pin.so writes with KVM_SET_ONE_REG after each guest
vCPU's KVM_ARM_VCPU_INIT, before it runs (:mod:`abiguard.preload`), or a QEMU ``-cpu``
property where QEMU has one. Which pins a contract needs on a host is planned by the
arch (:meth:`abiguard.arch.base.Arch.plan_pins`) from the verdict it judged, never
judged a second time; this module renders them: ``ABIGUARD_PINS`` and the libvirt
``<qemu:commandline>`` that loads the library.
"""
from __future__ import annotations

from ..errors import EnforceError
from ..preload import ENV_PINS, LIBRARY_NAME, LIBRARY_PATH, MAX_ENV_CHARS
from .names import QEMU_NS

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from collections.abc import Iterable


class Pin:
    """One register value to realise on a host.

    :param how: ``preload`` (ABIGUARD_PINS), ``cpu-property`` (``props``: -cpu
        property -> value), ``impl-cpu``: not a register but one CPU the library answers
        to the guest's errata discovery (``props``: midr, revidr, aidr; ``id``: -1 - its index),
        or ``hide``: a register the library leaves out of QEMU's KVM_GET_REG_LIST so the VM's
        stream stays its contract's (``value`` unused)
    :param why: one phrase for ``abiguard status`` and ``pin``
    """

    __slots__ = ("id", "name", "value", "how", "why", "props", "stream")

    def __init__(self, id: int, name: str, value: int, how: str = "preload", why: str = "",
                 props: dict[str, int] | None = None, stream: int | None = None) -> None:
        self.id, self.name, self.value, self.how, self.why = id, name, value, how, why
        self.props = props
        #: preload: the value QEMU reads and writes instead of ``value`` (None: the same);
        #: KVM holds ``value``, what the guest reads
        self.stream = stream

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pin) and (self.id, self.value, self.how, self.props, self.stream) == (
            other.id, other.value, other.how, other.props, other.stream)

    def __repr__(self) -> str:
        return f"Pin({self.name}={self.value:#x} via {self.how})"


def env_value(pins: Iterable[Pin]) -> str:
    """ABIGUARD_PINS for the library: the preload pins in id order, then the
    implementation CPUs (``cpu=MIDR/REVIDR/AIDR``) in the order the guest is told them."""
    pins = list(pins)
    items = [f"{p.id:#018x}={p.value:#x}" + ("" if p.stream is None else f"/{p.stream:#x}")
             for p in sorted(pins, key=lambda p: p.id) if p.how == "preload"]
    if items:
        items += [f"cpu={p.props['midr']:#x}/{p.props['revidr']:#x}/{p.props['aidr']:#x}"
                  for p in sorted(pins, key=lambda p: -p.id) if p.how == "impl-cpu" and p.props]
    items += [f"hide={p.id:#018x}" for p in sorted(pins, key=lambda p: p.id) if p.how == "hide"]
    text = ",".join(items)
    if len(text) > MAX_ENV_CHARS:
        raise EnforceError("this host", [(f"{ENV_PINS} would be {len(text)} characters (the library reads "
                                          f"{MAX_ENV_CHARS})")])
    return text


def parse_env(text: str) -> dict[int, int]:
    """ABIGUARD_PINS back into id -> value (for ``status``; the cpu= items are
    :func:`parse_env_cpus`'); ValueError when malformed."""
    out: dict[int, int] = {}
    for item in text.split(",") if text else []:
        if item.startswith(("cpu=", "hide=")):
            continue
        rid, _, value = item.partition("=")
        value = value.partition("/")[0]        # /0xS: what QEMU sees instead (the guest's is the pin)
        if not (rid.startswith("0x") and value.startswith("0x")):
            raise ValueError(f"not REGISTER_ID=VALUE: {item[:40]!r}")
        out[int(rid, 16)] = int(value, 16)
    return out


def parse_env_cpus(text: str) -> list[tuple[int, int, int]]:
    """The ``cpu=MIDR/REVIDR/AIDR`` items of ABIGUARD_PINS; ValueError when malformed."""
    out = []
    for item in text.split(",") if text else []:
        if item.startswith("cpu="):
            parts = item[4:].split("/")
            if len(parts) != 3 or not all(x.startswith("0x") for x in parts):
                raise ValueError(f"not cpu=MIDR/REVIDR/AIDR: {item[:60]!r}")
            out.append((int(parts[0], 16), int(parts[1], 16), int(parts[2], 16)))
    return out


def _attr(v: str) -> str:
    return v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def commandline_xml(pins: Iterable[Pin], library: str = LIBRARY_PATH, prefix: str = "qemu") -> str:
    """The libvirt ``<qemu:commandline>`` element that loads the library with these pins;
    empty when nothing needs the library (off unless a contract asks for it)."""
    value = env_value(pins)
    if not value:
        return ""
    return (f'<{prefix}:commandline xmlns:{prefix}="{QEMU_NS}">\n'
            f'  <{prefix}:env name="LD_PRELOAD" value="{_attr(library)}"/>\n'
            f'  <{prefix}:env name="{ENV_PINS}" value="{_attr(value)}"/>\n'
            f'</{prefix}:commandline>')


def cpu_properties(pins: Iterable[Pin]) -> dict[str, int]:
    """``-cpu host`` properties for the pins a native QEMU property realises."""
    out: dict[str, int] = {}
    for p in pins:
        if p.how == "cpu-property" and p.props:
            out.update(p.props)
    return out


def describe(pins: Iterable[Pin]) -> list[str]:
    """One line per pin, for ``abiguard status`` and ``pin``."""
    return [f"{p.name} = {p.props['midr']:#x}/{p.props['revidr']:#x}/{p.props['aidr']:#x} "
            f"(MIDR/REVIDR/AIDR) via LD_PRELOAD {LIBRARY_NAME}: {p.why}" if p.how == "impl-cpu" and p.props else
            f"{p.name} ({p.id:#x}) hidden from QEMU's register list via LD_PRELOAD {LIBRARY_NAME}: {p.why}"
            if p.how == "hide" else
            f"{p.name} ({p.id:#x}) = {p.value:#x}"
            + ("" if p.stream is None else f" (QEMU's stream carries {p.stream:#x})") + " via "
            f"{'LD_PRELOAD ' + LIBRARY_NAME if p.how == 'preload' else '-cpu ' + ','.join(p.props or {})}: {p.why}"
            for p in pins]
