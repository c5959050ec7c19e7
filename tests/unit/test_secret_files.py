"""The sink's file primitives: where it may write (tmpfs only, read from mountinfo), the
atomic write with owner and mode set before the content, and the wipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aegis_agent.secrets.tmpfs import (
    SinkDirError,
    check_tmpfs,
    filesystem_of,
    ids,
    wipe_file,
    wipe_leftovers,
    write_secret,
)

pytestmark = pytest.mark.unit

MOUNTINFO = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:21 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755
90 25 0:50 / /run/aegis/secrets rw,nosuid,nodev,noexec - tmpfs tmpfs rw,size=4096k,mode=711
91 22 0:51 / /srv/with\\040space rw - ramfs ramfs rw
"""


@pytest.mark.parametrize(("path", "fstype"), [
    ("/run/aegis/secrets", "tmpfs"), ("/run/aegis/secrets/deeper", "tmpfs"),
    ("/run/aegis", "tmpfs"), ("/var/lib/aegis", "ext4"), ("/run/aegis/secretsX", "tmpfs"),
    ("/srv/with space/x", "ramfs"), ("/srv/with", "ext4"),
])
def test_filesystem_of_reads_mountinfo(tmp_path: Path, path: str, fstype: str) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_of(Path(path), info) == fstype


def test_only_tmpfs_is_accepted(tmp_path: Path, tmpfs_dir: Path) -> None:
    check_tmpfs(tmpfs_dir)
    with pytest.raises(SinkDirError, match=r"is on ext4, not tmpfs.*mount -t tmpfs"):
        check_tmpfs(tmp_path)
    with pytest.raises(SinkDirError, match="does not exist: mount a tmpfs"):
        check_tmpfs(tmp_path / "nope")


def test_write_sets_owner_and_mode_and_replaces_atomically(tmpfs_dir: Path) -> None:
    write_secret(tmpfs_dir, "db", b"first", 65534, 65534, 0o440)
    st = (tmpfs_dir / "db").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o440, 65534, 65534)
    # a consumer that opened the old file reads zeros afterwards, the path the new content
    with (tmpfs_dir / "db").open("rb") as old:
        write_secret(tmpfs_dir, "db", b"second", 0, 0, 0o400)
        assert old.read() == b"\0" * len(b"first")
    assert (tmpfs_dir / "db").read_bytes() == b"second"
    assert (tmpfs_dir / "db").stat().st_mode & 0o777 == 0o400
    assert sorted(p.name for p in tmpfs_dir.iterdir()) == ["db"]  # no temporary file left


def test_wipe_zeroes_then_unlinks(tmpfs_dir: Path) -> None:
    write_secret(tmpfs_dir, "k", b"value", 65534, 65534, 0o400)
    with (tmpfs_dir / "k").open("rb") as held:
        assert wipe_file(tmpfs_dir / "k") is True
        assert held.read() == b"\0\0\0\0\0"
    assert not (tmpfs_dir / "k").exists() and wipe_file(tmpfs_dir / "k") is False
    os.symlink("/etc/passwd", tmpfs_dir / "link")
    assert wipe_file(tmpfs_dir / "link") and Path("/etc/passwd").stat().st_size > 0
    (tmpfs_dir / ".aegis-secret.x.1").write_bytes(b"half")
    wipe_leftovers(tmpfs_dir)
    assert list(tmpfs_dir.iterdir()) == []


def test_ids_name_what_is_unknown() -> None:
    assert ids("root", "root") == (0, 0) and ids(65534, 65534) == (65534, 65534)
    with pytest.raises(KeyError, match="no user 'no-such-user-x'"):
        ids("no-such-user-x", "root")
    with pytest.raises(KeyError, match="no group 'no-such-group-x'"):
        ids("root", "no-such-group-x")


# What the agent's unit grants it with a secret sink (aegis-agent.service + the role's
# secrets.conf drop-in): uid 0 without root's implicit capabilities, CAP_CHOWN and
# CAP_FOWNER only, so no CAP_DAC_OVERRIDE: it cannot write a file it does not own.
AGENT_CAPS = ["setpriv", "--securebits", "+noroot,+noroot_locked,+no_setuid_fixup",
              "--bounding-set", "-all,+chown,+fowner", "--inh-caps", "-all,+chown,+fowner",
              "--ambient-caps", "-all,+chown,+fowner"]
AS_AGENT = """
import os, sys
from pathlib import Path
from aegis_agent.secrets.tmpfs import write_secret, wipe_file
d, uid = Path(sys.argv[1]), int(sys.argv[2])
write_secret(d, "db.env", b"first", uid, uid, 0o400)
write_secret(d, "db.env", b"second", uid, uid, 0o400)   # a rotation
os.chmod(d / "db.env", 0o400)
assert (d / "db.env").stat().st_uid == uid
assert wipe_file(d / "db.env")
print(sorted(os.listdir(d)))
"""


def test_rotation_and_wipe_work_with_only_the_agent_units_capabilities(tmpfs_dir: Path) -> None:
    """Found on a real node: the replaced copy of a consumer's 0400 file could not be
    overwritten (chmod 0200 gave the *consumer* write access, not the agent), the render
    failed and the files were left mode 0200, unreadable for the consumer."""
    nobody = 65534
    proc = subprocess.run([*AGENT_CAPS, sys.executable, "-c", AS_AGENT, str(tmpfs_dir),
                           str(nobody)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
