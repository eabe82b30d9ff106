"""The fleet's VMs, read through each host's libvirt (the URI its record names).

Each domain's XML is read as the hook reads it on a destination (:mod:`abiguard.xml.domain`
and :mod:`abiguard.xml.vm`): the contract, the hop stamp and the register stream the
VM carries now, and whatever would make the hook refuse it anywhere (a contract that does
not parse, a stamp of another contract, a machine type that is not the contract's), so
``fleet status`` answers what the hook would.

Hosts are read in parallel, each on its own connection, against one deadline: a host
that does not answer is reported by name and the rest are answered. The threads are
daemon threads, so a hung connection never keeps the command from exiting.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import AbiguardError, printable

if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..xml.domain import DomainFacts, Element
    from .record import HostRecord

#: hosts read at once: libvirt calls release the GIL, so a slow host costs only its thread
WORKERS = 16
#: a libvirt connection to a host that accepts and then never answers ends here
DEFAULT_TIMEOUT = 60.0


class FleetVm:
    """One domain on one fleet host.

    :param contract: its contract (None: unpinned, or ``problem`` says why it has none we trust)
    :param stream: the register stream its stamp says it carries (arm64), None for the contract's
    :param problem: why the hook would refuse it on any host (None: judged host by host)
    :param seen: an unpinned VM abiguard saw boot: where, and whether a move changed its ABI
    """

    __slots__ = ("host", "name", "state", "contract", "stream", "problem", "seen")

    def __init__(self, host: str, name: str, state: str, contract: Contract | None,
                 stream: tuple[int, ...] | None, problem: str | None, seen: str | None = None) -> None:
        self.seen = seen
        self.host = host
        self.name = name
        self.state = state
        self.contract = contract
        self.stream = stream
        self.problem = problem


#: contract element (its whole content, as a tuple) -> the contract it reads as: a fleet has
#: few contracts and many VMs, and checking and sealing an arm64 contract costs more than
#: parsing the rest of its domain XML. Only contracts that read well are kept: a failure
#: is read again for each VM, so that its message names that VM.
_CONTRACTS: dict[tuple[object, ...], Contract] = {}
_MAX_CONTRACTS = 1024


def _shape(el: Element) -> tuple[object, ...]:
    """Everything :func:`abiguard.xml.contract.from_element` reads of an element."""
    if not el.children:
        return (el.tag, tuple(el.attrib.items()), el.text)
    return (el.tag, tuple(el.attrib.items()), el.text, tuple([_shape(c) for c in el.children]))


#: (contract, what the stamp says of its contract and stream) -> the stream it carries:
#: VMs of one contract on one kind of host carry the same stream, and reading ~250 register
#: ids and their checksum once is enough. The nonce and time do not count (they differ per
#: VM and the hook's check does not read them).
_STREAMS: dict[tuple[str, str | None, str | None, str | None], tuple[int, ...] | None] = {}


def _stream_of(facts: DomainFacts, sealed: Contract, name: str) -> tuple[int, ...] | None:
    from ..arch import get
    from ..model.names import STAMP_NS
    from ..xml import vm

    if not get(sealed.arch).carries_register_stream:
        vm.stamp_of(facts, sealed, name)     # what the hook checks (x86: cheap)
        return None
    el = facts.stamp
    stream_el = el.find(f"{{{STAMP_NS}}}stream") if el is not None else None
    key = (sealed.digest, el.get("contract") if el is not None else None,
           el.get("stream-sum") if el is not None else None, stream_el.text if stream_el is not None else None)
    if el is not None and key in _STREAMS:
        return _STREAMS[key]
    stamp = vm.stamp_of(facts, sealed, name)
    stream = stamp.stream if stamp is not None else None
    if len(_STREAMS) >= _MAX_CONTRACTS:
        _STREAMS.clear()
    _STREAMS[key] = stream
    return stream


def _contract_of(facts: DomainFacts, name: str) -> Contract | None:
    from ..xml import vm

    if facts.contract is None:
        return None
    key = _shape(facts.contract)
    got = _CONTRACTS.get(key)
    if got is None:
        got = vm.contract_of(facts, name)
        assert got is not None
        if len(_CONTRACTS) >= _MAX_CONTRACTS:
            _CONTRACTS.clear()
        _CONTRACTS[key] = got
    return got


def from_xml(host: str, name: str, state: str, xml: bytes) -> FleetVm:
    """What the hook would read from this domain XML."""
    from ..model.contract import SEEN
    from ..xml import domain, vm

    shown = printable(name, 100)
    try:
        facts = domain.parse(xml, f"domain '{shown}' on {host}")
        sealed = _contract_of(facts, shown)
        if sealed is None:
            return FleetVm(host, shown, state, None, None, None)
        if sealed.origin.kind == SEEN:
            return FleetVm(host, shown, state, None, None, None, vm.seen_note(facts, sealed))
        vm.check_domain_matches(facts, sealed, shown)
        stream = _stream_of(facts, sealed, shown)
    except AbiguardError as e:
        return FleetVm(host, shown, state, None, None, str(e).removeprefix("abiguard: "))
    return FleetVm(host, shown, state, sealed, stream, None)


def _read_host(record: HostRecord) -> list[FleetVm]:
    import os

    import libvirt

    from ..connection import connect

    assert record.uri is not None
    # the migratable XML of a running domain needs a read-write connection (as abiguard status)
    conn = connect(record.uri, readonly=os.geteuid() != 0)
    try:
        out = []
        for dom in conn.listAllDomains():
            active = dom.isActive()
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE if active else libvirt.VIR_DOMAIN_XML_INACTIVE)
            out.append(from_xml(record.name, dom.name(), "running" if active else "shut off", xml.encode()))
        return out
    finally:
        conn.close()


def collect(records: list[HostRecord], timeout: float = DEFAULT_TIMEOUT) -> tuple[list[FleetVm], dict[str, str]]:
    """Every VM of every host whose record names a libvirt URI.

    :returns: the VMs (sorted by host, then name) and host name -> why it could not be read
    """
    import queue
    import threading
    import time

    todo = [r for r in records if r.uri is not None]
    jobs: queue.Queue[HostRecord] = queue.Queue()
    for r in todo:
        jobs.put(r)
    done: queue.Queue[tuple[str, list[FleetVm] | None, str | None]] = queue.Queue()

    def worker() -> None:
        while True:
            try:
                rec = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((rec.name, _read_host(rec), None))
            except AbiguardError as e:
                done.put((rec.name, None, str(e).removeprefix("abiguard: ")))
            except Exception as e:  # libvirt errors mid-listing: the host, not the command, failed
                done.put((rec.name, None, f"libvirt at {rec.uri}: {printable(e, 300)}"))

    for _ in range(min(WORKERS, len(todo))):
        threading.Thread(target=worker, daemon=True).start()
    vms: list[FleetVm] = []
    errors: dict[str, str] = {}
    answered: set[str] = set()
    deadline = time.monotonic() + timeout
    for _ in todo:
        try:
            name, got, error = done.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        answered.add(name)
        if got is not None:
            vms += got
        else:
            errors[name] = error or "unknown error"
    for r in todo:
        if r.name not in answered:
            errors[r.name] = f"libvirt at {r.uri} did not answer within {timeout:.0f} s"
    vms.sort(key=lambda v: (v.host, v.name))
    return vms, errors
