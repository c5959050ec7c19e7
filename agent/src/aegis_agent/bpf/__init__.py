"""The agent's eBPF side. Modules, one job each:

- ``syscall``: direct bpf(2) calls; ``libbpf``: the ctypes loader over libbpf.so.1
- ``bpffs``: the BPF filesystem and ``PIN_ROOT``; ``objects``: where the built .bpf.o are
- ``layout``: every kernel struct, map and program name shared with bpf/*.h
- ``pinned``: one object's lifecycle (load + pin, reopen with every map checked, unpin)
- ``ring``: a ring-buffer reader that hands each decoded record to a sink once
- ``segment``: the micro-segmentation filter, with its edge syntax (``edges``)
- ``monitors``: the exec and connect monitors

Nothing here speaks the wire protocol: ``aegis_agent.events`` turns records into events.
"""

from .edges import Edge, EdgeSpecError, Peer
from .layout import ConnectRecord, DropRecord, ExecRecord
from .objects import ObjectMissingError
from .pinned import PinMismatchError, PinnedObject
from .segment import AttachError, AttachInfo, EdgeState, SegmentFilter
from .syscall import BpfError

__all__ = ["AttachError", "AttachInfo", "BpfError", "ConnectRecord", "DropRecord", "Edge",
           "EdgeSpecError", "EdgeState", "ExecRecord", "ObjectMissingError", "Peer",
           "PinMismatchError", "PinnedObject", "SegmentFilter"]
