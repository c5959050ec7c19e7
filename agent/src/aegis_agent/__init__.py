"""Aegis node agent: the eBPF data plane and monitors (bpf), the daemon, its durable spool,
local policy, control socket and CLI.

Modules, one job each (above ``bpf/``, the kernel layer):

- ``enforcement``: every enforcement verb once (kernel call, one event with its source,
  one result), whoever asks: control socket, developer CLI, signed order or policy;
- ``control`` (client and line format) and ``control_server`` (the daemon's socket);
- ``orders``: verify, run (as enforcement verbs) and acknowledge signed orders;
- ``policy``: rules that turn events into decisions, carried out through ``enforcement``;
- ``daemon``: start-up, ring readers, periodic tasks and shutdown;
- ``cli`` (``aegis-agent``) and ``segment_tool`` (``aegis-agent segment``, no daemon);
- ``config``, ``spool``, ``uplink``, ``identity``, ``tls_pair``, ``measure``,
  ``inventory``, ``unwrap``, ``watchdog``, ``notify``: configuration, durable events, the
  controller link and the node's own state.
"""

__version__ = "0.1.0"
