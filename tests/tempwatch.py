"""Watch directories (recursively, with inotify) for any file whose content holds a secret.

Standalone, standard library only: it runs on the control node and, through
``podman exec -i NODE python3 -c "$(cat tempwatch.py)" DIR...``, on a lab node.

Protocol: the secret is the first line on stdin (it never becomes an argument or a file);
the script prints ``ready`` once every directory is watched, then reads each file as it is
created, written, closed or moved in, and when stdin reaches EOF prints one JSON line:
``{"hits": [paths holding the secret], "seen": number of files it read}``.
Files are read as soon as they are closed after writing, so a temporary file that is
removed a moment later is still caught.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import struct
import sys

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
IN_ISDIR, IN_NONBLOCK, IN_CLOEXEC = 0x40000000, 0o4000, 0o2000000
MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
EVENT = struct.Struct("iIII")


class Watch:
    def __init__(self, secret: bytes) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.secret = secret
        self.dirs: dict[int, str] = {}
        self.hits: set[str] = set()
        self.seen: set[str] = set()

    def add_tree(self, top: str) -> None:
        """Watch ``top`` and every directory below it, then read what is already there
        (a file created before its directory's watch existed is not missed)."""
        wd = self.libc.inotify_add_watch(self.fd, top.encode(), MASK)
        if wd < 0:
            return  # gone already
        self.dirs[wd] = top
        try:
            entries = list(os.scandir(top))
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                self.add_tree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                self.check(entry.path)

    def check(self, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            return
        self.seen.add(path)
        if self.secret in data:
            self.hits.add(path)

    def drain(self) -> None:
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(buf):
                wd, mask, _cookie, length = EVENT.unpack_from(buf, offset)
                name = buf[offset + EVENT.size:offset + EVENT.size + length].rstrip(b"\0")
                offset += EVENT.size + length
                parent = self.dirs.get(wd)
                if parent is None or not name:
                    continue
                path = os.path.join(parent, name.decode(errors="surrogateescape"))
                if mask & IN_ISDIR:
                    if mask & (IN_CREATE | IN_MOVED_TO):
                        self.add_tree(path)
                else:
                    self.check(path)


def main() -> None:
    secret = sys.stdin.buffer.readline().rstrip(b"\n")
    if len(secret) < 8:
        sys.exit("tempwatch: the secret on stdin is too short to search for")
    watch = Watch(secret)
    for top in sys.argv[1:]:
        os.makedirs(top, exist_ok=True)
        watch.add_tree(top)
    print("ready", flush=True)
    stdin = sys.stdin.buffer.fileno()
    while True:
        ready, _, _ = select.select([watch.fd, stdin], [], [])
        if watch.fd in ready:
            watch.drain()
        if stdin in ready and not os.read(stdin, 4096):
            watch.drain()
            break
    print(json.dumps({"hits": sorted(watch.hits), "seen": len(watch.seen)}), flush=True)


if __name__ == "__main__":
    main()
