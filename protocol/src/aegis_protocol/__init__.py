"""The Aegis wire protocol, shared by the node agent and the controller.

Every message that crosses the wire (or the agent's spool) is a pydantic model defined
here, and everything that is signed is signed over :func:`aegis_protocol.signing.canonical`
bytes, so both sides agree on what a signature covers.
"""

PROTOCOL_VERSION = 1
