"""armfleet: abiguard's arm64 libvirt lab (three Debian arm64 hosts under TCG with EL2).

The command is tests/lab/armfleet.py; this package is its library (``from lab.armfleet
import Lab`` in the tests). Modules: fleet (the running lab: network, hosts, ssh, virsh,
consoles), rootfs + dpkgdb (base images from Debian's arm64 packages), machine (the outer
QEMU), guest (payload, domain XML, console parsing), migration (start/migrate/save/restore
records), groundtruth, facts. See tests/lab/README.md, section armfleet."""
from .fleet import Console, HostSpec, Lab

__all__ = ["Console", "HostSpec", "Lab"]
