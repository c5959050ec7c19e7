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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .podman import image_exists, podman_env

log = logging.getLogger("aegis.lab.image")

RECIPE_DIR = Path(__file__).resolve().parent / "recipe"
CACHE_ROOT = Path(os.environ.get("AEGIS_CACHE", "/var/cache/aegis"))
IMAGE_REPO = "localhost/aegis-node"
#: the node image without the packages a role brings (:func:`ensure_image` ``without``)
BARE_REPO = "localhost/aegis-bare"
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


@dataclass(frozen=True)
class RootfsRecipe:
    """A root filesystem image built by a debootstrap script of ``recipe/``: the node
    image and the execution environment's base image (:mod:`aegis_lab.ee`) both go
    through :func:`ensure_rootfs_image`."""

    name: str              # tarball name prefix, e.g. ``aegis-node``
    repo: str              # podman image repository, e.g. ``localhost/aegis-node``
    script: Path           # build script: SCRIPT ROOTFS_DIR MIRROR OUTPUT_TARBALL
    digest: str            # the recipe hash (cache key and image tag)
    changes: tuple[str, ...]  # ``podman import --change`` instructions
    what: str              # for progress and errors, e.g. ``node image``
    stream: bool = False   # hand each line of the build's output to ``progress`` as it comes
    env: tuple[tuple[str, str], ...] = ()  # extra environment of the build script


def stream_lines(cmd: list[str], progress, prefix: str, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run ``cmd``, handing each line of its output (stdout and stderr) to ``progress``
    with ``prefix`` as it comes; returns the exit code and the last 30 lines."""
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            if line.strip():
                progress(f"{prefix}{line}")
                tail = [*tail[-29:], line]
    return proc.returncode, tail


def _build(recipe: RootfsRecipe, cmd: list[str], progress) -> tuple[int, list[str]]:
    """Run a build script; returns its exit code and its output's last lines."""
    env = {**os.environ, **dict(recipe.env)} if recipe.env else None
    if recipe.stream:
        return stream_lines(cmd, progress, f"{recipe.name} | ", env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    return proc.returncode, (proc.stderr or proc.stdout).strip().splitlines()[-30:]


#: tarballs kept per recipe: checkouts of different versions on one machine (a worktree,
#: a CI clone) each keep theirs instead of rebuilding the other's away
KEEP_TARBALLS = 3


def prune_tarballs(images: Path, name: str, keep: int = KEEP_TARBALLS) -> list[Path]:
    """Remove all but the ``keep`` most recently used tarballs of recipe ``name``; returns
    what it removed."""
    tarballs = sorted(images.glob(f"{name}-*.tar.zst"), key=lambda p: p.stat().st_mtime,
                      reverse=True)
    for old in tarballs[keep:]:
        old.unlink(missing_ok=True)
    return tarballs[keep:]


def ensure_rootfs_image(recipe: RootfsRecipe, mirror: str, progress=log.info) -> NodeImage:
    """Return the image of ``recipe``, building its tarball (cached under
    ``/var/cache/aegis/images`` by recipe hash) and importing it only if needed."""
    started = time.monotonic()
    digest = recipe.digest
    images = CACHE_ROOT / "images"
    tarball = images / f"{recipe.name}-{digest}.tar.zst"
    ref = f"{recipe.repo}:{digest}"
    built = imported = False
    with _locked(images / ".lock"):
        if not tarball.exists():
            if shutil.which("debootstrap") is None:
                raise ImageBuildError(
                    "debootstrap is not installed; run scripts/bootstrap.sh (it installs "
                    "the system packages the lab needs)"
                )
            workdir = CACHE_ROOT / "build" / f"{recipe.name}-{digest}"
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            progress(f"building {recipe.what} {digest} from {mirror} (about a minute)")
            try:
                rc, lines = _build(recipe, [str(recipe.script), str(workdir / "rootfs"),
                                            mirror, str(tarball)], progress)
                if rc != 0:
                    tail = "\n".join(lines[-15:])
                    raise ImageBuildError(
                        f"{recipe.what} build failed (exit {rc}); last lines:\n{tail}"
                    )
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            built = True
        else:
            tarball.touch()  # used: kept by prune_tarballs
        prune_tarballs(images, recipe.name)
        if not image_exists(ref):
            progress(f"importing {recipe.what} {ref}")
            zstd = subprocess.Popen(["zstd", "-dc", str(tarball)], stdout=subprocess.PIPE)
            change_args = [arg for change in recipe.changes for arg in ("--change", change)]
            proc = subprocess.run(
                ["podman", "import", *change_args, "-", ref],
                stdin=zstd.stdout, capture_output=True, text=True, env=podman_env(),
                check=False,
            )
            assert zstd.stdout is not None
            zstd.stdout.close()
            if zstd.wait() != 0 or proc.returncode != 0:
                raise ImageBuildError(f"podman import of {tarball} failed: {proc.stderr.strip()}")
            imported = True
    return NodeImage(ref, tarball, digest, built, imported, time.monotonic() - started)


def ensure_image(progress=log.info, without: Sequence[str] = ()) -> NodeImage:
    """Return the node image for the current recipe, building/importing only if needed.

    ``without`` names packages of the recipe to leave out: a bare variant (its own name
    and tag) for measuring a node before a role that needs those packages, e.g. the
    Lynis index of a plain Debian node before ``aegis.fleet.harden``."""
    mirror = apt_mirror()
    left_out = sorted(set(without))
    unknown = [p for p in left_out if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", p)]
    if unknown:
        raise ImageBuildError(f"not a Debian package name: {', '.join(unknown)}")
    digest = recipe_hash(mirror)
    if left_out:
        digest = hashlib.sha256(f"{digest} {' '.join(left_out)}".encode()).hexdigest()[:12]
    recipe = RootfsRecipe(
        name="aegis-bare" if left_out else "aegis-node",
        repo=BARE_REPO if left_out else IMAGE_REPO, script=RECIPE_DIR / "build-rootfs.sh",
        digest=digest, changes=('CMD ["/sbin/init"]', "STOPSIGNAL SIGRTMIN+3"),
        what="bare node image" if left_out else "node image",
        env=(("AEGIS_IMAGE_WITHOUT", " ".join(left_out)),) if left_out else (),
    )
    return ensure_rootfs_image(recipe, mirror, progress)
