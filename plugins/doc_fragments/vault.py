# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How the aegis.fleet.vault_* modules reach the Vault-compatible server."""

    DOCUMENTATION = r"""
options:
  url:
    description:
      - Address of the Vault or OpenBao server, for example C(https://vault.example.com:8200).
      - Defaults to the environment variable E(BAO_ADDR), then E(VAULT_ADDR).
      - Plain C(http://) is accepted only for a loopback address.
    type: str
  token:
    description:
      - Token the module acts with; it needs to write policies, mounts and roles (an
        operator or root token). Never logged or returned.
      - Defaults to the environment variable E(BAO_TOKEN), then E(VAULT_TOKEN).
    type: str
  ca_cert:
    description:
      - PEM file of the CA that signed the server's certificate, for an C(https://) O(url).
      - Defaults to E(BAO_CACERT), then E(VAULT_CACERT), then the system's CAs.
    type: path
  timeout:
    description:
      - Seconds to wait for each answer of the server.
    type: int
    default: 10
attributes:
  platform:
    support: full
    platforms: posix
    description: Runs where C(hvac) is installed, usually the control node (C(delegate_to) it there).
requirements:
  - hvac >= 2.0 (on the host the module runs on, usually the control node)
notes:
  - Before it changes anything the module checks that the server answers, is initialized and
    unsealed, and that O(token) is valid; each failure names what to fix and changes nothing.
"""
