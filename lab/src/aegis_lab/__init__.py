"""The Aegis development lab: local fleets of podman nodes through Terraform, VM nodes,
the demo. A development and test tool, not part of the product; it depends on
``aegis-controller`` (the Terraform and ansible-runner drivers, and the
``aegis-controller`` command for a fleet's controller), never the other way round.

Modules, one job each:

- ``paths``: the one ``Paths(repo_root, state_root)``, made by the CLI and passed down
- ``naming``: prefixes, node names, the fleet's /24, node address and MAC (the one owner)
- ``fleet``: ``LocalFleet``, a fleet driven through ``terraform/fleets/local``
- ``cleanup``: ``leftovers``/``sweep``/``down`` by prefix (above fleet and controller)
- ``controller``: ``aegis-controller serve`` on a fleet's bridge
- ``node``, ``network``, ``podman``, ``image``: one node, its links (pyroute2), podman
  with the lab's own settings, the node image
- ``vm``: QEMU VM nodes for kernel-level checks
- ``playbook``: Ansible on a fleet through ``aegis_controller.playbook``
- ``wheels``: the agent's wheelhouse for the nodes
- ``demo``: ``aegis-lab demo``; ``cli``: ``aegis-lab``
"""
