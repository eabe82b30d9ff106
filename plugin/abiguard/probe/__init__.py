"""Reading a host: the KVM ioctls (:mod:`.kvm`), the generic probe (:mod:`.host`) and
QEMU/libvirt (:mod:`.stack`). Arch-specific probing lives in each arch plugin."""
