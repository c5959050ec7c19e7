# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File digests for the aegis.fleet modules: what the golden record holds (hardening_facts
writes it, forensics_bundle compares with it), computed the same way by both."""

from __future__ import annotations

import hashlib


def sha256_file(path):
    """SHA-256 of a file, or None when it is missing or not a file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(65536), b""):
                digest.update(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return digest.hexdigest()
