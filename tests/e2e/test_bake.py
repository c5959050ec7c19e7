"""Golden images baked by the same roles (issue 14): ``aegis-lab image bake`` runs
playbooks/bake.yml (aegis.fleet.harden + the agent's install part) on a podman build
container and commits it with every per-node identity removed. A fleet booted from the
image gets its own machine-id and SSH host keys per node, holds no agent identity, and a
converge of the roles with the bake's variables changes nothing. A second bake of the
same roles and variables is a no-op. The baked image is kept (cached by its tag, like the
node image); the build container and the fleet go away.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lane import Job

from aegis_controller.playbook import PlayResult
from aegis_lab.bake import (
    BAKED_REPO,
    BakedImage,
    BakeError,
    bake_digest,
    bake_image,
    bake_variables,
    check_no_identity,
)
from aegis_lab.cleanup import leftovers
from aegis_lab.fleet import LocalFleet
from aegis_lab.image import ensure_image
from aegis_lab.playbook import ansible_playbook, ansible_results
from aegis_lab.podman import image_exists, podman
from conftest import sub_prefix
from harness import PATHS, local_fleet

pytestmark = pytest.mark.e2e

NODES = ("node1", "node2")
IDENTITY = ("cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub; "
            "ls -A /var/lib/aegis /etc/aegis; "
            "systemctl is-enabled aegis-agent.service || true")


def _bake_job() -> Job:
    prefix = sub_prefix()
    return Job("bake", lambda say: (prefix, bake_image(PATHS, prefix=prefix, progress=say)),
               order=15)


def lane_jobs(items: list[pytest.Item]) -> list[Job]:
    return [_bake_job()]


@pytest.fixture(scope="module")
def _bake(lane) -> tuple[str, BakedImage]:
    """The bake runs in the background lane from the start of the run."""
    return lane("bake", _bake_job)


@pytest.fixture(scope="module")
def bake_prefix(_bake: tuple[str, BakedImage]) -> str:
    return _bake[0]


@pytest.fixture(scope="module")
def baked(_bake: tuple[str, BakedImage]) -> BakedImage:
    return _bake[1]


@pytest.fixture(scope="module")
def fleet(baked: BakedImage) -> Iterator[LocalFleet]:
    # admin: the hardening role's mounts and scratch netns, as in test_harden
    with local_fleet(sub_prefix(), len(NODES), caps="admin", baked=True) as fleet:
        yield fleet


def _changed_tasks(result: PlayResult) -> list[str]:
    return [f"{e.host}: {e.task}" for e in result.results if e.status == "changed"]


def test_bake_leaves_no_identity_and_no_build_container(baked, bake_prefix):
    assert re.fullmatch(rf"{BAKED_REPO}:[0-9a-f]{{12}}", baked.ref)
    assert check_no_identity(baked.ref) == []
    label = podman("image", "inspect", "--format",
                   '{{ index .Labels "aegis.baked-from" }}', baked.ref).stdout.strip()
    assert label == baked.base
    assert leftovers(bake_prefix) == []


def test_nodes_make_their_own_identity(fleet, baked):
    assert fleet.info()["nodes"]["node1"]["container"]
    image = podman("inspect", "--format", "{{.ImageName}}",
                   fleet.info()["nodes"]["node1"]["container"]).stdout.strip()
    assert image == baked.ref
    res = ansible_results(fleet, "aegis_fleet", "ansible.builtin.shell", IDENTITY)
    seen: dict[str, tuple[str, str]] = {}
    pinned = {ln.split()[0]: " ".join(ln.split()[1:3])
              for ln in fleet.known_hosts.read_text().splitlines() if ln.strip()}
    for node in NODES:
        assert res[node]["rc"] == 0, res[node]
        lines = res[node]["stdout"].splitlines()
        machine_id, host_key = lines[0], " ".join(lines[1].split()[:2])
        assert re.fullmatch(r"[0-9a-f]{32}", machine_id), lines
        assert host_key.startswith("ssh-ed25519 ")
        assert pinned[fleet.info()["nodes"][node]["address"]] == host_key
        rest = lines[2:]
        # the golden record of the bake is there; no agent key, certificate, spool or
        # configuration (it names a node), and the agent waits for its enrollment
        assert "golden.json" in rest and "agent" not in rest and "spool" not in rest, rest
        assert "agent.yaml" not in rest and "controller-ca.pem" not in rest, rest
        assert rest[-1] == "disabled", rest
        seen[node] = (machine_id, host_key)
    assert len({m for m, _ in seen.values()}) == len(NODES)
    assert len({k for _, k in seen.values()}) == len(NODES)


def test_nodes_boot_with_the_baseline(fleet):
    """Before any converge: the firewall baseline loaded at boot, the node's own net
    sysctls applied (as systemd-sysctl does at a real machine's boot), sshd hardened."""
    res = ansible_results(fleet, "aegis_fleet", "ansible.builtin.shell",
                          "nft list tables; sysctl -n net.ipv4.conf.all.rp_filter "
                          "net.ipv4.conf.all.accept_redirects; sshd -T | grep -i '^maxauthtries'")
    for node in NODES:
        assert res[node]["rc"] == 0, res[node]
        out = res[node]["stdout"].splitlines()
        assert "table inet aegis_baseline" in out, out
        assert out[-3:] == ["1", "0", "maxauthtries 3"], out


def test_converge_on_a_baked_node_changes_nothing(fleet, baked):
    harden = ansible_playbook(fleet, PATHS.playbooks / "harden.yml",
                              extravars=baked.variables, timeout=1200)
    assert harden.ok, harden.tail(40)
    assert harden.changed == 0, _changed_tasks(harden)
    assert all(st.changed == 0 and st.ok > 0 for st in harden.stats.values()), harden.stats
    # the agent's install part (no enrollment) is in the image too
    agent = ansible_playbook(fleet, PATHS.playbooks / "agent.yml",
                             extravars={"agent_enroll": False}, timeout=900)
    assert agent.ok, agent.tail(40)
    assert agent.changed == 0, _changed_tasks(agent)


def test_second_bake_is_a_no_op(baked, bake_prefix):
    started = time.monotonic()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("aegis-lab")), "image", "bake",
         "--prefix", bake_prefix], capture_output=True, text=True, timeout=300, check=False)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["ref"] == baked.ref and out["built"] is False, out
    assert "is up to date" in proc.stderr
    assert seconds < 60, seconds
    assert leftovers(bake_prefix) == []


def test_a_failed_bake_says_why_and_leaves_nothing():
    prefix = sub_prefix()
    bad = {"harden_nftables_management_networks": []}
    with pytest.raises(BakeError, match=r"harden_nftables_management_networks must name"):
        bake_image(PATHS, prefix=prefix, variables=bad)
    assert leftovers(prefix) == []
    digest = bake_digest(PATHS, ensure_image().ref, bake_variables(bad))
    assert not image_exists(f"{BAKED_REPO}:{digest}")
