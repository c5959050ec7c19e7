"""Local stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test downloads get-pip from ci-files.testing.ansible.com, which is not reachable
here, and runs it for every fresh virtualenv it makes (each ``--venv`` run makes one).
This stand-in does the same job offline: pip from the wheel bundled with Python
(ensurepip), then the exact pip version ansible-test asks for from a local wheelhouse
($HOME/.ansible/test/wheels; scripts/sanity.sh points HOME at .state/ansible-test-home).
Only when the wheelhouse lacks that version is it downloaded from PyPI once, with the
system CA bundle passed explicitly (ansible-test runs pip with PIP_CONFIG_FILE=/dev/null).
scripts/sanity.sh puts this file where ansible-test looks for its cached copy.
"""

import ensurepip
import os
import ssl
import subprocess
import sys

ensurepip.bootstrap(upgrade=False)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
wheels = os.path.join(os.path.expanduser("~"), ".ansible", "test", "wheels")
pip = [sys.executable, "-m", "pip"]
offline = [*pip, "install", "--no-index", "--find-links", wheels, *args]
if os.path.isdir(wheels) and subprocess.call(offline, stderr=subprocess.DEVNULL) == 0:
    sys.exit(0)
os.makedirs(wheels, exist_ok=True)
cafile = ssl.get_default_verify_paths().cafile
cert = ["--cert", cafile] if cafile and os.path.exists(cafile) else []
wanted = [a for a in args if not a.startswith("-")]
download = [*pip, "download", *cert, "--only-binary", ":all:", "--no-deps", "--dest", wheels]
if subprocess.call([*download, *wanted]):
    sys.exit(f"get-pip stand-in: {' '.join(wanted)} is neither in {wheels} nor on PyPI")
sys.exit(subprocess.call(offline))
