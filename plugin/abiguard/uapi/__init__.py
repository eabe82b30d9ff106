"""Linux's KVM user API as abiguard speaks it, below everything that probes with it:
every ioctl (:mod:`.kvm`) and the arm64 ONE_REG register id layout (:mod:`.arm64`, which
the hook reads without loading the ioctls). Standard library only: it runs inside the arm64
lab's initramfs."""
