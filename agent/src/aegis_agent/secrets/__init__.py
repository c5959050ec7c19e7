"""Leased secrets on tmpfs (the secret sink): :mod:`.vault_session` talks to Vault,
:mod:`.tmpfs` writes and wipes the files, :mod:`.sink` holds the state and renews."""

from .sink import SecretsError, SecretSink
from .tmpfs import SinkDirError

__all__ = ["SecretSink", "SecretsError", "SinkDirError"]
