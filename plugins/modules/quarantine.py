#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: quarantine
short_description: Quarantine a node through its Aegis agent, and freeze its workloads
version_added: 0.1.0
description:
  - V(soft) puts the node's Aegis agent in quarantine over its control socket (the
    C(quarantine) verb of C(aegis-agent)), so the segmentation filter then passes only the
    management peers, both ways. The agent always keeps its controller among them, and the
    peers it has (the role adds the SSH source of the play that installed it) stay; peers
    given in O(management_peers) are added to them, never replace them, so the quarantine
    cannot cut the connection that applies it.
  - V(hard) does the same and freezes every active service of C(system.slice) that
    O(keep_units) does not keep, so the node's workloads stop where they are (nothing runs,
    nothing forks, memory stays for forensics) while the management path keeps working.
    With the unified cgroup hierarchy (cgroup v2) this is systemd's cgroup freezer
    (C(systemctl freeze), C(FreezerState=frozen)); systemd cannot freeze on a node with the
    legacy or hybrid hierarchy, and there every process of the unit's cgroup gets
    C(SIGSTOP) instead (RV(method) says which).
  - When the agent does not answer (an attacker may have stopped it), O(fallback=nftables)
    cuts the node off all the same with the project's own nftables table
    C(inet aegis_quarantine), which drops every packet in and out except loopback, the
    peers of O(management_peers) and the SSH connection the module runs over (so it cannot
    cut the connection that applies it), ahead of any other table's rules. RV(via) says
    which way the node was quarantined.
  - V(released) (O(state=absent)) thaws the frozen services of C(system.slice) and ends
    the agent's quarantine, and removes the fallback table if there is one. A rebuild-first fleet replaces a quarantined node instead; this
    is for a false alarm.
  - Idempotent, since a node already quarantined with the peers asked for, and with no
    service left to freeze, reports no change. A soft run on a hard-quarantined node thaws
    nothing.
options:
  mode:
    description: V(soft) cuts the network except the management path; V(hard) also freezes the workloads.
    type: str
    choices: [soft, hard]
    default: soft
  state:
    description: V(present) quarantines; V(absent) thaws and releases.
    type: str
    choices: [present, absent]
    default: present
  management_peers:
    description:
      - Peers to keep reachable in addition to those the agent has, as
        C(ADDRESS[/PREFIX] [PROTO/PORT]), for example C(192.0.2.10 tcp/22).
    type: list
    elements: str
    default: []
  keep_units:
    description:
      - Services of C(system.slice) that a hard quarantine keeps running (shell patterns; a
        pattern without a suffix also matches the C(.service)). What keeps the node
        manageable, that is its agent, SSH, dbus, journald and systemd's own services.
    type: list
    elements: str
    default: [aegis-agent.service, ssh.service, sshd.service, "systemd-*", dbus.service,
              dbus-broker.service, console-getty.service, "serial-getty@*", "getty@*"]
  reason:
    description: Why, recorded with the agent's quarantine event.
    type: str
    default: quarantined by aegis.fleet.quarantine
  socket:
    description: The agent's control socket.
    type: path
    default: /run/aegis/agent.sock
  fallback:
    description:
      - What to do when the agent does not answer on O(socket). V(nftables) quarantines
        with the table C(inet aegis_quarantine) (needs C(nft) on the node); V(none) fails.
    type: str
    choices: [nftables, none]
    default: nftables
attributes:
  check_mode:
    support: full
    description: Reports what would be quarantined and frozen, changes nothing.
  diff_mode:
    support: full
    description: Shows the quarantine state, the management peers and the frozen services before and after.
  platform:
    support: full
    platforms: posix
    description: Linux nodes with systemd and the Aegis agent (aegis.fleet.agent) running.
requirements:
  - the Aegis agent running on the node with segmentation on (C(segment.interface)), or C(nft) for the fallback
  - systemd on the node
notes:
  - The agent refuses a quarantine when its segmentation is off; the module then fails with the agent's reason.
  - The fallback keeps IPv4 management peers only, and not the peers the agent would have
    added itself (its controller), since without the agent nothing on the node talks to the controller.
seealso:
  - module: aegis.fleet.forensics_bundle
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Cut the node off, keep the management path
  aegis.fleet.quarantine:
    mode: soft

- name: Also freeze its workloads, keep a jump host reachable
  aegis.fleet.quarantine:
    mode: hard
    management_peers: ["192.0.2.10 tcp/22"]
    reason: incident 42
  register: aegis_quarantine

- name: Show what was frozen
  ansible.builtin.debug:
    var: aegis_quarantine.frozen
"""

RETURN = r"""
quarantined:
  description: Whether the agent's filter is in quarantine after the run (in check mode, as it would be).
  returned: always
  type: bool
  sample: true
management:
  description: The management peers the filter lets through (in check mode, as they would be).
  returned: always
  type: list
  elements: str
  sample: ["10.213.0.1 tcp/22", "10.213.0.1 tcp/8443"]
frozen:
  description: The services this run froze (O(state=present)) or thawed (O(state=absent)).
  returned: always
  type: list
  elements: str
  sample: [cron.service, app.service]
frozen_units:
  description: Every frozen service of C(system.slice) after the run.
  returned: always
  type: list
  elements: str
  sample: [app.service, cron.service]
kept:
  description: The active services of C(system.slice) the allow-list keeps running (hard mode and V(absent)).
  returned: always
  type: list
  elements: str
  sample: [aegis-agent.service, ssh.service, systemd-journald.service]
method:
  description: How workloads are frozen on this node, V(cgroup) (systemd's cgroup freezer) or V(sigstop).
  returned: always
  type: str
  sample: cgroup
via:
  description: V(agent), or V(nftables) when the agent did not answer and the fallback table cut the node off.
  returned: always
  type: str
  sample: agent
agent_error:
  description: Why the agent was not used (only with RV(via=nftables)).
  returned: when the fallback was used
  type: str
  sample: the agent is not running (no control socket at /run/aegis/agent.sock)
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.freezer import Freezer
from ansible_collections.aegis.fleet.plugins.module_utils.nft_quarantine import (
    NftQuarantine,
    ssh_source,
)
from ansible_collections.aegis.fleet.plugins.module_utils.recovery import (
    AgentError,
    agent_call,
    normal_peer,
)
from ansible_collections.aegis.fleet.plugins.module_utils.systemd import Systemd

KEEP_UNITS = ["aegis-agent.service", "ssh.service", "sshd.service", "systemd-*", "dbus.service",
              "dbus-broker.service", "console-getty.service", "serial-getty@*", "getty@*"]
ARGUMENT_SPEC = dict(
    mode=dict(type="str", default="soft", choices=["soft", "hard"]),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    management_peers=dict(type="list", elements="str", default=[]),
    keep_units=dict(type="list", elements="str", default=KEEP_UNITS),
    reason=dict(type="str", default="quarantined by aegis.fleet.quarantine"),
    socket=dict(type="path", default="/run/aegis/agent.sock"),
    fallback=dict(type="str", default="nftables", choices=["nftables", "none"]),
)


def render(quarantined, management, frozen):
    """The node's quarantine state as text, for the diff and ``changed``."""
    return "quarantine: %s\nmanagement:\n%sfrozen:\n%s" % (
        "on" if quarantined else "off",
        "".join("  - %s\n" % p for p in sorted(management)),
        "".join("  - %s\n" % u for u in sorted(frozen)))


def plan(policy, wanted_peers, state):
    """(quarantine after, management after, peers to send or None) from the agent's policy."""
    have = [normal_peer(p) for p in policy.get("management", [])]
    if state == "absent":
        return False, have, None
    missing = [p for p in wanted_peers if p not in have]
    after = have + missing
    return True, after, (after if missing else None)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    try:
        wanted = [normal_peer(peer) for peer in p["management_peers"]]
    except ValueError as e:
        module.fail_json(msg="management_peers: %s" % e)
    nft = NftQuarantine(module)
    extra = {}
    try:
        status = agent_call(p["socket"], "status")
    except AgentError as e:
        if p["fallback"] != "nftables":
            module.fail_json(msg=str(e))
        # the agent is gone (stopped, or killed by whoever it was to stop): nftables
        have = nft.peers()
        ssh = ssh_source()
        status = {"segment": {"quarantine": have is not None,
                              "management": sorted(set((have or []) + ([ssh] if ssh else [])))}}
        extra = {"agent_error": str(e)}
    via = "nftables" if extra else "agent"
    policy = status.get("segment")
    if not policy:
        module.fail_json(msg="the agent's segmentation is off (no segment.interface in /etc/aegis/agent.yaml): "
                             "it cannot quarantine this node; set agent_segment_interface in aegis.fleet.agent")
    # a fallback table left from a time the agent was down is released with the quarantine
    leftover = via == "agent" and p["state"] == "absent" and nft.peers() is not None

    systemd = Systemd(module)
    freezer = Freezer(module, systemd)
    services = freezer.services()
    frozen_before = sorted(n for n, u in services.items() if freezer.frozen(u))
    to_freeze, kept = freezer.split(services, p["keep_units"])
    if p["state"] == "absent":
        touch = frozen_before
        frozen_after = []
    elif p["mode"] == "hard":
        touch = [n for n in to_freeze if n not in frozen_before]
        frozen_after = sorted(set(frozen_before) | set(to_freeze))
    else:
        touch, frozen_after, kept = [], frozen_before, []

    quarantined, management, send = plan(policy, wanted, p["state"])
    before = render(bool(policy.get("quarantine")) or leftover,
                    [normal_peer(x) for x in policy.get("management", [])], frozen_before)
    after = render(quarantined, management, frozen_after)
    if before != after and not module.check_mode:
        try:
            if p["state"] == "present":
                args = {"level": p["mode"], "reason": p["reason"][:200]}
                if send is not None:
                    args["management"] = send
                if via == "nftables" and (send is not None or not policy.get("quarantine")):
                    nft.apply(management)
                elif send is not None or not policy.get("quarantine"):
                    result = agent_call(p["socket"], "quarantine", args)
                    management = [normal_peer(x) for x in result.get("management", management)]
                for name in touch:
                    freezer.freeze(services[name])
            else:
                for name in touch:
                    freezer.thaw(services[name])
                if policy.get("quarantine") and via == "agent":
                    agent_call(p["socket"], "release", {"reason": p["reason"][:200]})
                if via == "nftables" or leftover:
                    nft.remove()
        except AgentError as e:
            module.fail_json(msg=str(e), frozen=[])
        if p["state"] == "present":
            services = freezer.services()
            frozen_after = sorted(n for n, u in services.items() if freezer.frozen(u))
            left = [n for n in touch if n in services and n not in frozen_after]
            if left:
                module.fail_json(msg="these services did not freeze: %s" % ", ".join(left), frozen=touch)
    report(module, before, after, "quarantine of %s" % (status.get("node_id") or "this node"),
           quarantined=quarantined, management=management, frozen=touch, frozen_units=frozen_after,
           kept=kept, method=freezer.method, via=via, **extra)


if __name__ == "__main__":
    main()
