"""The node image: built once from its recipe with debootstrap, cached outside git.

The cache key is a hash of the recipe (build script + package list + mirror), so the
image is rebuilt only when the recipe changes. The finished root filesystem is kept as a
zstd tarball under ``/var/cache/aegis/images`` and imported into the lab's podman storage
with ``CMD /sbin/init`` and ``STOPSIGNAL SIGRTMIN+3``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .podman import image_exists, podman_env

log = logging.getLogger("aegis.lab.image")

RECIPE_DIR = Path(__file__).resolve().parent / "recipe"
CACHE_ROOT = Path(os.environ.get("AEGIS_CACHE", "/var/cache/aegis"))
IMAGE_REPO = "localhost/aegis-node"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class ImageBuildError(RuntimeError):
    """The node image could not be built or imported."""


@dataclass(frozen=True)
class NodeImage:
    ref: str
    tarball: Path
    recipe_hash: str
    built: bool = False
    imported: bool = False
    seconds: float = 0.0


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (so the image matches the host)."""
    override = os.environ.get("AEGIS_DEBIAN_MIRROR")
    if override:
        return override
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s+bookworm\b", text, re.M)
        if m:
            return m.group(1)
    return DEFAULT_MIRROR


def recipe_hash(mirror: str) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in RECIPE_DIR.iterdir() if p.is_file()):
        h.update(name.encode() + b"\0" + (RECIPE_DIR / name).read_bytes() + b"\0")
    h.update(mirror.encode())
    return h.hexdigest()[:12]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_image(progress=log.info) -> NodeImage:
    """Return the node image for the current recipe, building/importing only if needed."""
    started = time.monotonic()
    mirror = apt_mirror()
    digest = recipe_hash(mirror)
    images = CACHE_ROOT / "images"
    tarball = images / f"aegis-node-{digest}.tar.zst"
    ref = f"{IMAGE_REPO}:{digest}"
    built = imported = False
    with _locked(images / ".lock"):
        if not tarball.exists():
            if shutil.which("debootstrap") is None:
                raise ImageBuildError(
                    "debootstrap is not installed; run scripts/bootstrap.sh (it installs "
                    "the system packages the lab needs)"
                )
            workdir = CACHE_ROOT / "build" / digest
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            progress(f"building node image {digest} from {mirror} (about a minute)")
            try:
                proc = subprocess.run(
                    [str(RECIPE_DIR / "build-rootfs.sh"), str(workdir / "rootfs"), mirror,
                     str(tarball)],
                    capture_output=True, text=True, check=False,
                )
                if proc.returncode != 0:
                    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
                    raise ImageBuildError(
                        f"node image build failed (exit {proc.returncode}); last lines:\n{tail}"
                    )
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            # Older images of other recipes are dead weight.
            for old in images.glob("aegis-node-*.tar.zst"):
                if old != tarball:
                    old.unlink(missing_ok=True)
            built = True
        if not image_exists(ref):
            progress(f"importing node image {ref}")
            zstd = subprocess.Popen(["zstd", "-dc", str(tarball)], stdout=subprocess.PIPE)
            proc = subprocess.run(
                ["podman", "import", "--change", 'CMD ["/sbin/init"]',
                 "--change", "STOPSIGNAL SIGRTMIN+3", "-", ref],
                stdin=zstd.stdout, capture_output=True, text=True, env=podman_env(),
                check=False,
            )
            assert zstd.stdout is not None
            zstd.stdout.close()
            if zstd.wait() != 0 or proc.returncode != 0:
                raise ImageBuildError(f"podman import of {tarball} failed: {proc.stderr.strip()}")
            imported = True
    return NodeImage(ref, tarball, digest, built, imported, time.monotonic() - started)
