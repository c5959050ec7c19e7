"""The agent's eBPF side: a ctypes loader over libbpf.so.1 and direct bpf() calls
(``libbpf``, ``syscall``), pins on bpffs (``bpffs``), and the micro-segmentation
filter (``segment``) with its edge syntax (``edges``)."""

from .edges import Edge, EdgeSpecError, Peer
from .objects import ObjectMissingError
from .segment import AttachError, AttachInfo, DropEvent, EdgeState, SegmentFilter
from .syscall import BpfError

__all__ = ["AttachError", "AttachInfo", "BpfError", "DropEvent", "Edge", "EdgeSpecError",
           "EdgeState", "ObjectMissingError", "Peer", "SegmentFilter"]
