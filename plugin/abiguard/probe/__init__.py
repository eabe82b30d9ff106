"""Reading a host: the generic probe (:mod:`.host`) and QEMU/libvirt (:mod:`.stack`).
Arch-specific probing lives in each arch plugin; both read KVM through
:mod:`abiguard.uapi.kvm`, below the plugins."""
