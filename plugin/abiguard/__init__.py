"""abiguard: keep a VM's guest ABI identical across live migration and rollback."""
__version__ = "0.1.0"
