"""Every XML namespace and environment variable name abiguard writes or reads, once."""
from __future__ import annotations

#: abiguard's contract element inside the domain's <metadata>
CONTRACT_NS = "urn:abiguard:contract:1"
#: the stamp the hook writes on each allowed hop (host, profile, the stream it carries now)
STAMP_NS = "urn:abiguard:stamp:1"
#: libvirt's QEMU namespace (<qemu:commandline>, <qemu:env>)
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
#: prefixes abiguard uses for its own elements
CONTRACT_PREFIX = "abiguard"
STAMP_PREFIX = "abiguard-stamp"
QEMU_PREFIX = "abiguard-q"
#: the environment variable that loads the preload library into QEMU
LD_PRELOAD = "LD_PRELOAD"
