"""The execution environment (EE): the container image AWX and ansible-runner's container
mode run the aegis.fleet playbooks in, built here without any registry.

Two images, each built only when what it is made of changed:

* ``aegis-ee-base`` — Debian bookworm minbase + Python 3 and pip, from
  ``recipe/ee/build-ee-base.sh`` with debootstrap, through the node image's machinery
  (:func:`aegis_lab.image.ensure_rootfs_image`: recipe hash, tarball cache under
  ``/var/cache/aegis/images``, ``podman import``).
* ``aegis-ee`` — ``ansible-builder build`` of ``execution-environment.yml`` on that base
  (podman, the lab's engine settings), with aegis.fleet built from this checkout by
  ``ansible-galaxy collection build`` and installed from the tarball (Galaxy is
  unreachable). Tagged ``aegis-ee:<hash>`` and ``aegis-ee:latest``; the hash covers the
  EE definition, the base image's recipe hash, the collection's content (the checksum of
  its ``FILES.json``, which lists every file's SHA-256) and ansible-builder's version.

The build's output is streamed line by line with a prefix while it runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from pathlib import Path

import yaml

from .image import (
    CACHE_ROOT,
    RECIPE_DIR,
    ImageBuildError,
    RootfsRecipe,
    _locked,
    apt_mirror,
    ensure_rootfs_image,
    stream_lines,
)
from .paths import Paths
from .podman import image_exists, podman, podman_env

log = logging.getLogger("aegis.lab.ee")

EE_RECIPE_DIR = RECIPE_DIR / "ee"
BASE_REPO = "localhost/aegis-ee-base"
EE_REPO = "localhost/aegis-ee"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
#: image labels the build sets (read back by tests and by ``ee build``'s report)
LABEL_HASH = "org.aegis.ee.hash"
LABEL_VERSION = "org.aegis.collection.version"
LABEL_FILES = "org.aegis.collection.files-sha256"

Progress = Callable[[str], None]


class EEBuildError(ImageBuildError):
    """The execution environment could not be built."""


@dataclass(frozen=True)
class Collection:
    """The aegis.fleet tarball built from the checkout and what identifies its content."""

    tarball: Path
    version: str
    files_sha256: str  # MANIFEST.json's checksum of FILES.json (every file's SHA-256)


@dataclass(frozen=True)
class EEImage:
    ref: str          # localhost/aegis-ee:<hash>
    latest: str       # localhost/aegis-ee:latest
    digest: str
    base_ref: str
    collection: Collection
    built: bool
    base_built: bool
    seconds: float

    def as_dict(self) -> dict:
        return {"ref": self.ref, "latest": self.latest, "hash": self.digest,
                "base": self.base_ref, "collection_version": self.collection.version,
                "collection_files_sha256": self.collection.files_sha256,
                "built": self.built, "base_built": self.base_built,
                "seconds": round(self.seconds, 2)}


def base_recipe(mirror: str) -> RootfsRecipe:
    """The base image's recipe: its script and package list, the mirror, and the build
    host's local CAs (which the script copies in, so pip in the build trusts the same
    HTTPS proxies and company CAs as this host)."""
    h = hashlib.sha256()
    inputs = sorted(p for p in EE_RECIPE_DIR.iterdir() if p.is_file())
    inputs += sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []
    for path in inputs:
        h.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(mirror.encode())
    return RootfsRecipe(
        name="aegis-ee-base", repo=BASE_REPO, script=EE_RECIPE_DIR / "build-ee-base.sh",
        digest=h.hexdigest()[:12],
        changes=("ENV DEBIAN_FRONTEND=noninteractive", "ENV LANG=C.UTF-8",
                 'CMD ["/bin/bash"]'),
        what="EE base image", stream=True,
    )


def ensure_base(progress: Progress = log.info) -> tuple[str, bool]:
    """The base image for the current recipe (built/imported if needed), also tagged
    ``aegis-ee-base:latest`` — the name execution-environment.yml gives."""
    mirror = apt_mirror()
    img = ensure_rootfs_image(base_recipe(mirror), mirror, progress)
    podman("tag", img.ref, f"{BASE_REPO}:latest")
    return img.ref, img.built


def _definition(paths: Paths) -> tuple[Path, dict]:
    path = paths.repo_root / "execution-environment.yml"
    if not path.is_file():
        raise EEBuildError(f"{path} not found: the EE definition is part of the checkout")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or data.get("version") != 3:
        raise EEBuildError(f"{path} is not an ansible-builder schema version 3 definition "
                           "(`version: 3` at the top)")
    return path, data


def _collection_src(definition: dict, version: str) -> str:
    """Where execution-environment.yml expects the collection tarball (the ``src`` of its
    additional_build_files entry), checked against galaxy.yml's version."""
    wanted = f"aegis-fleet-{version}.tar.gz"
    for entry in definition.get("additional_build_files") or []:
        src = str(entry.get("src", ""))
        if src.endswith(".tar.gz") and "aegis-fleet-" in src:
            if Path(src).name != wanted:
                raise EEBuildError(
                    f"execution-environment.yml installs {Path(src).name} but galaxy.yml's "
                    f"version makes {wanted}: update additional_build_files and "
                    "dependencies.galaxy in execution-environment.yml to the new version")
            return src
    raise EEBuildError("execution-environment.yml has no additional_build_files entry for "
                       "the aegis-fleet tarball (src: .state/ee/aegis-fleet-<version>.tar.gz)")


def build_collection(paths: Paths, out_dir: Path) -> Collection:
    """``ansible-galaxy collection build`` of the checkout into ``out_dir``."""
    galaxy = yaml.safe_load((paths.repo_root / "galaxy.yml").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("ansible-galaxy", path=str(Path(sys.executable).parent)) or "ansible-galaxy"
    proc = subprocess.run(
        [exe, "collection", "build", "--force", "--output-path", str(out_dir),
         str(paths.repo_root)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    tarball = out_dir / f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    if proc.returncode != 0 or not tarball.is_file():
        raise EEBuildError(f"ansible-galaxy collection build failed: "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return Collection(tarball, str(galaxy["version"]), manifest_files_sha256(tarball))


def manifest_files_sha256(tarball: Path) -> str:
    """The SHA-256 of FILES.json recorded in the collection's MANIFEST.json."""
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("MANIFEST.json")
        if member is None:
            raise EEBuildError(f"{tarball} has no MANIFEST.json")
        manifest = json.load(member)
    return str(manifest["file_manifest_file"]["chksum_sha256"])


def ee_hash(definition_text: str, base_ref: str, collection: Collection) -> str:
    h = hashlib.sha256()
    for part in (definition_text, base_ref, collection.files_sha256,
                 dist_version("ansible-builder")):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def ensure_ee(paths: Paths, progress: Progress = log.info, *, force: bool = False) -> EEImage:
    """Build (if anything it is made of changed) and return the execution environment."""
    started = time.monotonic()
    base_ref, base_built = ensure_base(progress)
    definition_path, definition = _definition(paths)
    root = paths.state_root / "ee"
    # one build per checkout at a time (its staging dirs), one ansible-builder per machine
    with _locked(root / ".lock"):
        shutil.rmtree(root / "collection", ignore_errors=True)
        collection = build_collection(paths, root / "collection")
        src = _collection_src(definition, collection.version)
        text = definition_path.read_text()
        digest = ee_hash(text, base_ref, collection)
        ref, latest = f"{EE_REPO}:{digest}", f"{EE_REPO}:latest"
        with _locked(CACHE_ROOT / "images" / ".ee.lock"):
            built = force or not image_exists(ref)
            if built:
                work = root / "build"
                shutil.rmtree(work, ignore_errors=True)
                (work / src).parent.mkdir(parents=True)
                shutil.copy2(collection.tarball, work / src)
                (work / "execution-environment.yml").write_text(text)
                _builder_build(work, ref, latest, base_ref, collection, progress)
                shutil.rmtree(work, ignore_errors=True)
                # EEs and base images of older hashes are dead weight (most of a GB each)
                _prune(EE_REPO, {ref, latest}, newest=2)
                _prune(BASE_REPO, {base_ref, f"{BASE_REPO}:latest"})
            else:
                progress(f"EE {ref} is up to date (definition, base and collection unchanged)")
                podman("tag", ref, latest)
    return EEImage(ref, latest, digest, base_ref, collection, built, base_built,
                   time.monotonic() - started)


def _builder_build(work: Path, ref: str, latest: str, base_ref: str, collection: Collection,
                   progress: Progress) -> None:
    """``ansible-builder build`` in ``work`` (the definition and the tarball it names),
    its output streamed."""
    labels = {LABEL_HASH: ref.rsplit(":", 1)[1], LABEL_VERSION: collection.version,
              LABEL_FILES: collection.files_sha256}
    # host network: pip in the build reaches the package index like this host does
    extra = ["--network=host", *(f"--label={k}={v}" for k, v in labels.items())]
    exe = shutil.which("ansible-builder", path=str(Path(sys.executable).parent))
    cmd = [exe or "ansible-builder", "build", "-v3", "--container-runtime", "podman",
           "-f", "execution-environment.yml", "--context", str(work / "context"),
           "--tag", ref, "--tag", latest, "--build-arg", f"EE_BASE_IMAGE={base_ref}",
           "--extra-build-cli-args", " ".join(extra)]
    progress(f"building EE {ref} on {base_ref} with ansible-builder (minutes)")
    rc, tail = stream_lines(cmd, progress, "ee-build | ", cwd=work,
                            env=podman_env({**os.environ, "NO_COLOR": "1"}))
    if rc != 0:
        raise EEBuildError(f"ansible-builder build failed (exit {rc}); last lines:\n"
                           + "\n".join(tail[-15:]))


def _prune(repo: str, keep: set[str], newest: int = 0) -> None:
    """Remove the images of ``repo`` none of whose names is in ``keep``, except the
    ``newest`` most recent (other checkouts on this machine build their own hashes into
    the same storage). Best effort: an image a container or a child image uses stays."""
    out = podman("images", "--format", "json", "--filter", f"reference={repo}",
                 check=False).stdout
    images = sorted(json.loads(out or "[]") or [], key=lambda i: i.get("Created", 0),
                    reverse=True)
    spared = 0
    for image in images:
        names = set(image.get("Names") or [])
        ours = {n for n in names if n.startswith(f"{repo}:")}
        if not ours or ours != names or names & keep:
            continue
        if spared < newest:
            spared += 1
            continue
        podman("rmi", image["Id"], check=False)


def image_labels(ref: str) -> dict[str, str]:
    out = podman("image", "inspect", "--format", "{{json .Labels}}", ref).stdout
    return json.loads(out or "{}") or {}
