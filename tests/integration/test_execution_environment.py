"""The execution environment definition: ansible-builder writes its build context offline
from execution-environment.yml and the collection tarball, and the built collection
carries what ansible-builder reads for its Python and system needs. Building the image
and running playbooks in it: tests/e2e/test_execution_environment_run.py."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import REPO, VENV_BIN

pytestmark = pytest.mark.integration

EE_REQUIREMENTS = REPO / "meta" / "ee-requirements.txt"

# import name -> distribution name, where they differ
DISTRIBUTION = {
    "yaml": "pyyaml",
    "dateutil": "python-dateutil",
    "OpenSSL": "pyopenssl",
    "jwt": "pyjwt",
}
# provided by the EE itself: ansible-core and its own dependencies (by distribution name)
PROVIDED = {"ansible", "ansible_collections", "jinja2", "pyyaml", "cryptography", "packaging"}
# the project's own controller package, not on any index: the audit callback imports it
# optionally (without it, or without the ledger's key, it warns once and the play goes on)
NOT_IN_EE = {"aegis_controller"}


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, check=False, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return names


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of execution-environment.yml beside the collection tarball it names."""
    work = tmp_path_factory.mktemp("ee")
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    src = ee["additional_build_files"][0]["src"]
    (work / src).parent.mkdir(parents=True)
    _run(
        [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "build",
            "--force",
            "--output-path",
            str((work / src).parent),
            str(REPO),
        ],
        cwd=work,
    )
    assert (work / src).is_file(), f"ansible-galaxy did not write {src}"
    (work / "execution-environment.yml").write_text(
        (REPO / "execution-environment.yml").read_text()
    )
    return work


def test_builder_writes_the_context_offline(built: Path) -> None:
    context = built / "context"
    _run(
        [
            str(VENV_BIN / "ansible-builder"),
            "create",
            "-f",
            "execution-environment.yml",
            "--context",
            str(context),
        ],
        cwd=built,
    )
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="aegis-ee-base:latest"' in containerfile
    assert "ansible-core==2.19.14 ansible-runner==2.4.3" in containerfile
    # the collection goes in from the tarball, without Galaxy resolving dependencies
    assert 'ANSIBLE_GALAXY_CLI_COLLECTION_OPTS="--no-deps"' in containerfile
    assert (
        "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml"
        in containerfile
    )
    galaxy = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    entry = galaxy["collections"][0]
    assert entry["type"] == "file"
    assert (context / "_build" / entry["name"]).is_file(), (
        "the tarball the galaxy stage installs is in the context"
    )
    # Debian base (aegis-ee-base): apt-get for bindep's packages, Debian's pip rather than
    # ensurepip (which Debian disables for its system Python)
    assert 'ARG PKGMGR="/usr/bin/apt-get"' in containerfile
    assert "pip_install" not in containerfile.replace("skip_pip_install", "")
    # the collections' requirements are gathered (introspect) and installed (assemble, bindep)
    assert "introspect.py introspect" in containerfile
    assert "/output/scripts/assemble" in containerfile
    assert "/output/scripts/install-from-bindep" in containerfile


def test_built_collection_declares_its_requirements(built: Path, tmp_path: Path) -> None:
    """What the builder stage's introspect finds in the installed collection."""
    tarball = next((built / ".state" / "ee").glob("aegis-fleet-*.tar.gz"))
    _run(
        [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--no-deps",
            # --force: under the test env the source tree is on ANSIBLE_COLLECTIONS_PATH, and
            # galaxy would call aegis.fleet installed already and put nothing in tmp_path
            "--force",
            "-p",
            str(tmp_path),
            str(tarball),
        ],
        cwd=tmp_path,
    )
    installed = tmp_path / "ansible_collections" / "aegis" / "fleet"
    assert not (installed / "execution-environment.yml").exists(), (
        "the project's EE file is not collection content"
    )
    assert not (installed / "requirements.txt").exists(), (
        "the dev venv's pins stay out of the collection"
    )
    out = _run(
        [str(VENV_BIN / "ansible-builder"), "introspect", "--sanitize", str(tmp_path)], cwd=tmp_path
    ).stdout
    data = yaml.safe_load(out.split("\n", 1)[1])
    python = {re.split(r"[<>=]", line, maxsplit=1)[0] for line in data["python"]}
    assert python == _requirement_names(EE_REQUIREMENTS) == {"hvac", "pyrage", "requests"}
    assert any(line.startswith("openssh-client [platform:dpkg]") for line in data["system"])


def test_ee_requirements_list_every_third_party_import() -> None:
    imported: dict[str, set[str]] = {}
    for path in sorted((REPO / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                dist = DISTRIBUTION.get(top, top).lower()
                if (
                    top not in sys.stdlib_module_names
                    and top != "__future__"
                    and dist not in PROVIDED | NOT_IN_EE
                ):
                    imported.setdefault(dist, set()).add(str(path.relative_to(REPO)))
    listed = _requirement_names(EE_REQUIREMENTS)
    missing = {name: sorted(files) for name, files in imported.items() if name not in listed}
    assert not missing, f"imported under plugins/ but not in {EE_REQUIREMENTS.name}: {missing}"
    assert {"hvac", "requests"} <= set(imported), "the scan sees the vault plugins' imports"
