"""Users' tokens from the real OpenBao (its OIDC identity tokens, users and groups from
userpass) checked by the controller's TokenVerifier: the user and groups come through; an
expired token, another audience, another issuer, a key the issuer never had or a forged
signature are each refused with the claim named; a rotated key is picked up by one
refetch, and unknown key ids cannot make the verifier fetch more than once per interval."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from harness_idp import Idp, make_idp, stand_in_token

from aegis_controller.access.identity import OidcConfigError, OidcSettings, TokenVerifier
from aegis_controller.errors import Unauthenticated
from conftest import sub_prefix
from harness import OpenBao

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def idp(openbao: OpenBao) -> Iterator[Idp]:
    yield make_idp(openbao, sub_prefix(), {"dana": ["dev"], "eve": ["sales", "dev"]})


def _verifier(idp: Idp, **kw: object) -> TokenVerifier:
    return TokenVerifier(OidcSettings(issuer=idp.issuer, audience=idp.audience, **kw))  # type: ignore[arg-type]


def test_openbao_token_names_the_user_and_groups(idp: Idp) -> None:
    user = _verifier(idp).verify(idp.token("dana"))
    assert user.name == f"{idp.tag}-dana" and user.groups == (idp.group("dev"),)
    eve = _verifier(idp).verify(idp.token("eve"))
    assert set(eve.groups) == {idp.group("dev"), idp.group("sales")} and eve.sub != user.sub


def test_bad_tokens_are_refused_naming_the_claim(idp: Idp) -> None:
    v = _verifier(idp, leeway=0)
    good = idp.token("dana")
    kid = jwt.get_unverified_header(good)["kid"]
    cases = {
        "malformed": ("not.a.token", "Authorization: malformed token"),
        "other audience": (idp.token("dana", idp.add_role(f"{idp.tag}-other", "10m",
                                                          f"{idp.tag}-elsewhere")),
                           "token aud: audience"),
        "other issuer": (stand_in_token({"iss": "https://idp.example.test", "aud":
                                         idp.audience}), "token iss: issuer"),
        "unknown key": (stand_in_token({"iss": idp.issuer, "aud": idp.audience}),
                        "token kid: 'stand-in-key' is not a key of the issuer"),
        "forged with the issuer's kid": (
            stand_in_token({"iss": idp.issuer, "aud": idp.audience}, kid=kid),
            "token signature: does not verify"),
        "hmac": (jwt.encode({"iss": idp.issuer, "aud": idp.audience, "sub": "x"},
                            "k" * 32, algorithm="HS256", headers={"kid": kid}),
                 "token alg: 'HS256' is not accepted"),
    }
    for name, (token, message) in cases.items():
        with pytest.raises(Unauthenticated) as e:
            v.verify(token)
        assert message in e.value.message, (name, e.value.message)
    short = idp.token("dana", idp.add_role(f"{idp.tag}-short", "1s", idp.audience))
    time.sleep(2.5)
    with pytest.raises(Unauthenticated, match="token exp: the token expired"):
        v.verify(short)
    assert v.verify(good).name == f"{idp.tag}-dana"  # the refusals broke nothing


def test_rotated_key_is_fetched_once_and_unknown_kids_are_rate_limited(idp: Idp) -> None:
    v = _verifier(idp, refetch_interval=2.0)
    v.verify(idp.token("dana"))
    assert v.fetches == 1
    for _ in range(5):  # made-up key ids: at most one fetch within the interval
        with pytest.raises(Unauthenticated, match="token kid"):
            v.verify(stand_in_token({"iss": idp.issuer, "aud": idp.audience},
                                    kid=f"made-up-{_}"))
    assert v.fetches <= 2
    time.sleep(2.1)
    idp.rotate()
    rotated = idp.token("dana")
    assert v.verify(rotated).name == f"{idp.tag}-dana"  # new kid: fetched again
    fetched = v.fetches
    v.verify(rotated)
    assert v.fetches == fetched  # known now: no fetch


def test_settings_are_checked() -> None:
    with pytest.raises(OidcConfigError, match="--oidc-leeway 600"):
        OidcSettings(issuer="https://idp.example.test", audience="a", leeway=600)
    with pytest.raises(OidcConfigError, match="--oidc-audience"):
        OidcSettings(issuer="https://idp.example.test", audience="")
    with pytest.raises(OidcConfigError, match="--oidc-issuer"):
        OidcSettings(issuer="idp.example.test", audience="a")
