"""What this host's QEMU and libvirt offer a guest: versions, machine types and the
host CPU model expansion.

libvirt is asked through libvirt-python when a daemon answers (read-only connection);
QEMU is asked over QMP (``qemu.qmp``) on ``qemu-system-<arch> -machine none -accel kvm``,
which needs no libvirt at all. Every step is bounded in time; what fails is recorded
under the profile's ``unavailable`` list, never guessed.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from typing import Any

from ..model.stack import host_model_cpu_xml
from ..uapi.kvm import note

#: how long any QEMU start or QMP exchange may take before it counts as unavailable
QMP_TIMEOUT = 15.0

#: where the Debian/RPM packages put QEMU's qemu.qmp library, which the distributions do
#: not package (yet); a pip install finds it in site-packages instead
VENDOR_DIR = "/usr/share/abiguard/vendor"


def _qmp_class() -> Any:
    try:
        from qemu.qmp.legacy import QEMUMonitorProtocol
    except ImportError:
        import sys

        if VENDOR_DIR in sys.path or not os.path.isdir(VENDOR_DIR):
            raise
        sys.path.append(VENDOR_DIR)
        from qemu.qmp.legacy import QEMUMonitorProtocol
    return QEMUMonitorProtocol


def _qmp_session(binary: str, commands: list[tuple[str, str, dict[str, Any] | None]]
                 ) -> dict[str, Any]:
    """Run QMP commands (label, command, arguments) against a throw-away ``-machine none
    -accel kvm`` QEMU; the answers by label."""
    QEMUMonitorProtocol = _qmp_class()

    with tempfile.TemporaryDirectory(prefix="abiguard-qmp-") as tmp:
        sock = os.path.join(tmp, "qmp.sock")
        monitor = QEMUMonitorProtocol(sock, server=True)
        proc = subprocess.Popen(
            [binary, "-machine", "none", "-accel", "kvm", "-nodefaults", "-no-user-config",
             "-display", "none", "-qmp", f"unix:{sock}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        answers: dict[str, Any] = {}
        try:
            monitor.accept(timeout=QMP_TIMEOUT)
            monitor.settimeout(QMP_TIMEOUT)
            for label, name, args in commands:
                answers[label] = monitor.cmd_raw(name, args)
            try:
                monitor.cmd_raw("quit")
            except Exception:  # QEMU may close the socket before its reply arrives
                pass
        except Exception as e:
            err = b""
            if proc.poll() is not None and proc.stderr:
                err = proc.stderr.read(2000)
            raise RuntimeError(f"{e} {err.decode(errors='replace').strip()}".strip()) from e
        finally:
            try:
                monitor.close()
            except EOFError:  # the bottom half saw QEMU hang up after "quit": expected
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stderr:
                proc.stderr.close()
        return answers


def _unwrap(answer: Any, what: str) -> Any:
    if not isinstance(answer, dict) or "return" not in answer:
        detail = answer.get("error", {}).get("desc") if isinstance(answer, dict) else repr(answer)
        raise RuntimeError(f"{what}: {detail}")
    return answer["return"]


def probe_qemu(machine: str, unavailable: list[dict[str, Any]]) -> dict[str, Any] | None:
    from ..arch import PLUGINS, get

    binary_name = get(machine).qemu_binary if machine in PLUGINS else None
    binary = shutil.which(binary_name) if binary_name else None
    if binary is None:
        note(unavailable, f"QEMU ({binary_name or machine})", errno.ENOENT, "no QEMU binary for this host")
        return None
    named = get(machine).qemu_named_model if machine in PLUGINS else None
    commands: list[tuple[str, str, dict[str, Any] | None]] = [
        ("query-version", "query-version", None),
        ("query-machines", "query-machines", None),
        ("query-cpu-model-expansion", "query-cpu-model-expansion", {"type": "full", "model": {"name": "host"}}),
        ("query-cpu-definitions", "query-cpu-definitions", None),
    ]
    if named:
        commands.append(("named", "query-cpu-model-expansion", {"type": "full", "model": {"name": named}}))
    try:
        answers = _qmp_session(binary, commands)
    except Exception as e:  # QEMU or QMP failed: recorded, the rest of the profile stands
        note(unavailable, f"QMP on {binary} -machine none -accel kvm", errno.EIO, str(e)[:500])
        return {"binary": binary}
    out: dict[str, Any] = {"binary": binary}
    version = _unwrap(answers["query-version"], "query-version")
    q = version["qemu"]
    out["version"] = f"{q['major']}.{q['minor']}.{q['micro']}"
    out["package"] = version.get("package", "").strip()
    out["machines"] = sorted(
        ({"name": m["name"], **({"alias": m["alias"]} if m.get("alias") else {}),
          **({"default": True} if m.get("is-default") else {}),
          **({"deprecated": True} if m.get("deprecated") else {})}
         for m in _unwrap(answers["query-machines"], "query-machines")),
        key=lambda m: m["name"])
    try:
        expansion = _unwrap(answers["query-cpu-model-expansion"], "query-cpu-model-expansion")
        out["host_cpu_expansion"] = {"model": expansion["model"]["name"],
                                     "props": dict(sorted(expansion["model"].get("props", {}).items()))}
    except RuntimeError as e:
        note(unavailable, "query-cpu-model-expansion host", errno.EIO, str(e))
    if named:
        try:
            expansion = _unwrap(answers["named"], f"query-cpu-model-expansion {named}")
            out["named_cpu_expansion"] = {"model": expansion["model"]["name"],
                                          "props": dict(sorted(expansion["model"].get("props", {}).items()))}
        except RuntimeError as e:
            note(unavailable, f"query-cpu-model-expansion {named}", errno.EIO, str(e))
    try:
        defs = _unwrap(answers["query-cpu-definitions"], "query-cpu-definitions")
        out["cpu_definitions"] = {d["name"]: sorted(d.get("unavailable-features", []))
                                  for d in sorted(defs, key=lambda d: d["name"])}
    except RuntimeError as e:
        note(unavailable, "query-cpu-definitions", errno.EIO, str(e))
    return out


def _domcaps_summary(xml: str) -> tuple[dict[str, Any], Any]:
    """The guest-ABI parts of ``virsh domcapabilities``: host-model CPU and machine (and
    the parsed document, for the arch's own questions)."""
    from lxml import etree

    root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False, no_network=True))
    out: dict[str, Any] = {"machine": root.findtext("machine"), "emulator": root.findtext("path")}
    host_model = root.find("cpu/mode[@name='host-model']")
    if host_model is not None and host_model.get("supported") == "yes":
        model = host_model.find("model")
        out["host_model"] = {
            "model": model.text if model is not None else None,
            "vendor": host_model.findtext("vendor"),
            "features": {f.get("name"): f.get("policy") for f in host_model.findall("feature")},
        }
        out["host_model_xml"] = host_model_cpu_xml(host_model)
    out["cpu_modes"] = sorted(m.get("name") or "" for m in root.findall("cpu/mode")
                              if m.get("supported") == "yes")
    custom = root.find("cpu/mode[@name='custom']")
    if custom is not None and custom.get("supported") == "yes":
        blockers = {b.get("model"): sorted(f.get("name") or "" for f in b.findall("feature"))
                    for b in custom.findall("blockers")}
        out["custom_models"] = {m.text: {"usable": m.get("usable", "unknown"), "blockers": blockers.get(m.text, [])}
                                for m in sorted(custom.findall("model"), key=lambda m: m.text or "") if m.text}
    return out, root


def probe_libvirt(machine: str, unavailable: list[dict[str, Any]], uri: str = "qemu:///system"
                  ) -> dict[str, Any] | None:
    try:
        import libvirt
    except ImportError:
        note(unavailable, "libvirt-python", errno.ENOENT, "python3-libvirt is not installed")
        return None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        # domain capabilities need a read-write connection; fall back for non-root callers
        conn = libvirt.open(uri) if os.geteuid() == 0 else libvirt.openReadOnly(uri)
    except libvirt.libvirtError as e:
        note(unavailable, f"libvirt {uri}", errno.ECONNREFUSED, str(e))
        return None
    try:
        hv = conn.getVersion()
        out: dict[str, Any] = {
            "uri": uri,
            "version": _libvirt_version(conn.getLibVersion()),
            "hypervisor_version": _libvirt_version(hv),
            "host_uuid": _host_uuid(conn),
        }
        virttype = "kvm" if os.path.exists("/dev/kvm") else "qemu"
        try:
            out["domcapabilities"], root = _domcaps_summary(
                conn.getDomainCapabilities(None, machine, None, virttype, 0))
        except libvirt.libvirtError as e:
            note(unavailable, f"domcapabilities {machine} {virttype}", errno.EIO, str(e))
        else:
            from ..arch import PLUGINS, get

            if machine in PLUGINS:
                out.update(get(machine).probe_libvirt(conn, root, unavailable))
        return out
    finally:
        conn.close()


def _host_uuid(conn: Any) -> str | None:
    from lxml import etree

    caps = etree.fromstring(conn.getCapabilities().encode(),
                            etree.XMLParser(resolve_entities=False, no_network=True))
    return caps.findtext("host/uuid")


def _libvirt_version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def probe_stack(machine: str, unavailable: list[dict[str, Any]]) -> dict[str, Any]:
    return {"qemu": probe_qemu(machine, unavailable), "libvirt": probe_libvirt(machine, unavailable)}
