"""Users from an OIDC issuer: the controller accepts a JSON Web Token signed by the one
issuer it is configured with (``serve --oidc-issuer URL --oidc-audience AUD``).

The issuer's keys (JWKS) are found through its discovery document
(``<issuer>/.well-known/openid-configuration``) and cached; a token whose key id is not in
the cache makes the controller fetch the keys again — at most once per
``refetch_interval`` seconds, so a flood of tokens with made-up key ids cannot turn into a
flood of fetches — which is how a rotated key is picked up. The checks, each refusal
naming what was wrong: the token's shape, the issuer (before any key is fetched), the
algorithm (asymmetric only), the key id, the signature, ``exp``, ``nbf``, ``iat``, ``aud``
and ``iss``, with at most ``leeway`` seconds of clock skew either way (bounded by
:data:`MAX_LEEWAY`).

The user is the token's ``sub``, a display name (``name``, else ``preferred_username``,
else ``sub``) and its groups claim (``groups`` by default), which the access policy maps
to access roles.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Unauthenticated, Unavailable

if TYPE_CHECKING:
    import jwt

log = logging.getLogger(__name__)

#: Signature algorithms accepted: asymmetric only (never ``none`` or an HMAC, whose "key"
#: would be public).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")
#: The most clock skew the configuration may allow, in seconds.
MAX_LEEWAY = 120


class OidcConfigError(ValueError):
    """The OIDC settings are unusable; the message says which one."""


@dataclass(frozen=True)
class User:
    """Who a verified token names."""

    sub: str
    name: str
    groups: tuple[str, ...]

    def ledger(self) -> dict[str, Any]:
        return {"sub": self.sub, "name": self.name, "groups": list(self.groups)}

    @property
    def actor(self) -> str:
        return f"user:{self.name}"[:255]


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    ca_file: str | None = None
    leeway: int = 30
    groups_claim: str = "groups"
    refetch_interval: float = 30.0  # seconds between two fetches caused by unknown key ids
    cache_ttl: float = 3600.0  # seconds the keys are used before they are fetched again

    def __post_init__(self) -> None:
        if not self.issuer.startswith(("https://", "http://")):
            raise OidcConfigError(f"--oidc-issuer {self.issuer!r}: give the issuer's URL, "
                                  "e.g. https://bao.example:8200/v1/identity/oidc")
        if not self.audience:
            raise OidcConfigError("--oidc-audience: give the audience (client id) the "
                                  "issuer puts in the tokens' aud claim")
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise OidcConfigError(f"--oidc-leeway {self.leeway}: allowed clock skew is 0 to "
                                  f"{MAX_LEEWAY} seconds")

    @classmethod
    def resolve(cls, issuer: str | None, audience: str | None, ca_file: str | None = None,
                leeway: int | None = None, groups_claim: str | None = None,
                refetch_interval: float | None = None) -> OidcSettings | None:
        """From the options, else ``AEGIS_OIDC_ISSUER`` / ``AEGIS_OIDC_AUDIENCE`` /
        ``AEGIS_OIDC_CA_FILE``; None when no issuer is configured (access requests off)."""
        issuer = issuer or os.environ.get("AEGIS_OIDC_ISSUER")
        if not issuer:
            return None
        return cls(issuer=issuer.rstrip("/"),
                   audience=audience or os.environ.get("AEGIS_OIDC_AUDIENCE", ""),
                   ca_file=ca_file or os.environ.get("AEGIS_OIDC_CA_FILE") or None,
                   leeway=30 if leeway is None else leeway,
                   groups_claim=groups_claim or "groups",
                   refetch_interval=30.0 if refetch_interval is None else refetch_interval)


@dataclass
class _Keys:
    by_kid: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # monotonic
    fetches: int = 0


class TokenVerifier:
    """Verifies users' tokens against the configured issuer (thread-safe)."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._keys = _Keys()
        self._jwks_uri: str | None = None
        self._lock = threading.Lock()

    @property
    def fetches(self) -> int:
        """How many times the keys were fetched (for the log and tests)."""
        return self._keys.fetches

    def verify(self, token: str) -> User:
        import jwt  # only serve verifies tokens: the command line stays quick

        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"Authorization: malformed token ({e}): send the JSON Web "
                                  "Token from your identity provider as 'Bearer TOKEN'"
                                  ) from None
        issuer = claims.get("iss")
        if issuer != s.issuer:
            raise Unauthenticated(f"token iss: issuer {issuer!r} is not the issuer this "
                                  f"controller trusts ({s.issuer!r})")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(f"token alg: {alg!r} is not accepted (one of "
                                  f"{', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token kid: the token names no key id")
        key = self._key(kid)
        try:
            verified = jwt.decode(
                token, key=key, algorithms=[alg], audience=s.audience, issuer=s.issuer,
                leeway=s.leeway, options={"require": ["exp", "iat", "sub", "aud", "iss"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"token exp: the token expired at {claims.get('exp')} "
                                  f"(now {int(time.time())}): get a new one") from None
        except jwt.ImmatureSignatureError as e:
            raise Unauthenticated(f"token nbf/iat: {e} (now {int(time.time())}, "
                                  f"{s.leeway} s of clock skew allowed)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"token aud: audience {claims.get('aud')!r} is not this "
                                  f"controller's ({s.audience!r})") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(f"token signature: does not verify with the issuer's key "
                                  f"{kid!r}") from None
        except jwt.MissingRequiredClaimError as e:
            raise Unauthenticated(f"token {e.claim}: the claim is missing") from None
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"token: {e}") from None
        iat = verified.get("iat")
        if not isinstance(iat, int | float) or iat > time.time() + s.leeway:
            raise Unauthenticated(f"token iat: issued at {iat!r}, in the future beyond the "
                                  f"{s.leeway} s of clock skew allowed")
        return self._user(verified)

    def _user(self, claims: dict[str, Any]) -> User:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise Unauthenticated("token sub: missing or not a string of 1 to 255 characters")
        name = claims.get("name") or claims.get("preferred_username") or sub
        groups = claims.get(self.settings.groups_claim, [])
        if groups is None:
            groups = []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise Unauthenticated(f"token {self.settings.groups_claim}: expected a list of "
                                  "group names")
        return User(sub=sub, name=str(name)[:255], groups=tuple(sorted(set(groups))))

    # -- keys -----------------------------------------------------------------------------
    def _key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            now = time.monotonic()
            stale = now - self._keys.fetched_at > self.settings.cache_ttl
            unknown = kid not in self._keys.by_kid
            if stale or (unknown and now - self._keys.fetched_at
                         >= self.settings.refetch_interval):
                self._fetch(now)
            key = self._keys.by_kid.get(kid)
        if key is None:
            raise Unauthenticated(f"token kid: {kid!r} is not a key of the issuer (keys "
                                  "fetched again at most every "
                                  f"{self.settings.refetch_interval:g} s)")
        return key

    def _fetch(self, now: float) -> None:
        import httpx  # see verify
        import jwt

        verify: str | bool = self.settings.ca_file or True
        try:
            with httpx.Client(verify=verify, timeout=5, follow_redirects=False) as client:
                if self._jwks_uri is None:
                    doc = client.get(f"{self.settings.issuer}/.well-known/openid-configuration")
                    doc.raise_for_status()
                    uri = doc.json().get("jwks_uri")
                    if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                        raise ValueError(f"the discovery document's jwks_uri is {uri!r}")
                    self._jwks_uri = uri
                answer = client.get(self._jwks_uri)
                answer.raise_for_status()
                keyset = jwt.PyJWKSet.from_dict(answer.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as e:
            self._keys.fetched_at = now  # a failing issuer is not asked again at once
            log.warning("issuer keys not fetched", extra={"issuer": self.settings.issuer,
                                                          "why": str(e)})
            raise Unavailable(f"the identity provider's keys could not be fetched from "
                              f"{self.settings.issuer} ({e}): try again shortly") from None
        self._keys = _Keys(by_kid={k.key_id: k for k in keyset.keys if k.key_id},
                           fetched_at=now, fetches=self._keys.fetches + 1)
        log.info("issuer keys fetched", extra={"issuer": self.settings.issuer,
                                               "kids": sorted(self._keys.by_kid)})
