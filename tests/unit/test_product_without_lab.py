"""The product packages (aegis-protocol, aegis-agent, aegis-controller) import without the
lab: every one of their modules is imported in a fresh interpreter whose path holds only
their sources and the third-party site-packages (no ``.pth`` files, so no editable
``aegis_lab``); a product module importing ``aegis_lab`` makes this fail."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig

import pytest

from harness import REPO

pytestmark = pytest.mark.unit

PRODUCT = {"aegis_protocol": "protocol", "aegis_agent": "agent",
           "aegis_controller": "controller"}

PROBE = r"""
import importlib, importlib.util, json, pkgutil, sys
packages = json.loads(sys.argv[1])
assert importlib.util.find_spec("aegis_lab") is None, "aegis_lab is importable here"
imported, failed = [], {}
for name in packages:
    pkg = importlib.import_module(name)
    imported.append(name)
    for mod in pkgutil.walk_packages(pkg.__path__, name + "."):
        if mod.name.endswith(".__main__"):
            continue
        try:
            importlib.import_module(mod.name)
            imported.append(mod.name)
        except BaseException as exc:
            failed[mod.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"imported": imported, "failed": failed,
                  "lab_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "aegis_lab")}))
"""


def test_every_product_module_imports_without_the_lab() -> None:
    paths = [str(REPO / src / "src") for src in PRODUCT.values()]
    paths.append(sysconfig.get_paths()["purelib"])
    # -S: no site module, so no .pth file can put the lab (or anything else) on the path
    code = f"import sys; sys.path[:0] = {paths!r}; sys.argv[1:] = [{json.dumps(list(PRODUCT))!r}]\n"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code + PROBE], capture_output=True,
                          text=True, timeout=120, check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}, out["failed"]
    assert out["lab_loaded"] == []
    assert "aegis_controller.playbook" in out["imported"]
    assert len(out["imported"]) > 30, out["imported"]
