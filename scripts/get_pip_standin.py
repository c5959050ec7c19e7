"""Local stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test downloads get-pip from ci-files.testing.ansible.com, which is not reachable
here. This stand-in does the same job with what is: the pip wheel bundled with Python
(ensurepip), then the exact versions ansible-test asked for from PyPI. ansible-test
runs pip with PIP_CONFIG_FILE=/dev/null, so the system CA bundle (which a TLS-inspecting
proxy's CA is added to) is passed explicitly; the pip it installs (>= 24.2) uses the
system trust store by itself. scripts/sanity.sh puts this file where ansible-test looks
for its cached copy.
"""

import ensurepip
import os
import ssl
import subprocess
import sys

ensurepip.bootstrap(upgrade=False)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
cafile = ssl.get_default_verify_paths().cafile
if cafile and os.path.exists(cafile):
    args = ["--cert", cafile, *args]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
