"""Ledger records, keys and anchor on their own: encoding, input checks, key files, and
the anchor's atomic, monotonic writes."""

import hashlib
import json
import re

import pytest

from aegis_controller.ledger import (
    APPENDABLE,
    GENESIS,
    AnchorError,
    KeyFileError,
    LedgerInputError,
    init_keys,
    load_signer,
    load_verifier,
    read_anchor,
)
from aegis_controller.ledger.anchor import advance
from aegis_controller.ledger.records import (
    MAX_BODY_BYTES,
    canonical,
    check_entry,
    now_ts,
    record_hash,
)

pytestmark = pytest.mark.unit


def test_canonical_encoding_is_sorted_compact_utf8():
    assert canonical({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == \
        '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()


def test_record_hash_is_sha256_of_the_canonical_fields_including_prev_hash():
    fields = {"seq": 1, "ts": "2025-01-01T00:00:00.000Z", "kind": "order", "subject": "n1",
              "actor": "controller", "body": {"x": 1}, "prev_hash": GENESIS}
    expected = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"))
                              .encode()).hexdigest()
    assert record_hash(**fields) == expected
    assert record_hash(**{**fields, "prev_hash": "1" * 64}) != expected


def test_timestamps_are_utc_rfc3339_with_milliseconds():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now_ts())


@pytest.mark.parametrize(("kind", "subject", "body", "actor", "needle"), [
    ("reboot", "n1", {}, "c", "unknown record kind 'reboot': use one of enrollment"),
    ("checkpoint", "", {}, "c", "ledger checkpoint"),
    ("order", "n1", [1, 2], "c", "body must be a JSON object"),
    ("order", "n1", "text", "c", "body must be a JSON object"),
    ("order", "n1", {"x": float("nan")}, "c", "cannot be encoded as JSON"),
    ("order", "n1", {"x": object()}, "c", "cannot be encoded as JSON"),
    ("order", "n1", {1: "x"}, "c", "keys must be strings"),
    ("order", "n1", {}, "", "actor must not be empty"),
    ("order", 7, {}, "c", "subject must be a string"),
    ("order", "n\n1", {}, "c", "without control characters"),
    ("order", "n1", {"x": "a" * MAX_BODY_BYTES}, "c", "store bulky evidence in a file"),
])
def test_bad_entries_are_refused_saying_what_is_wrong(kind, subject, body, actor, needle):
    with pytest.raises(LedgerInputError, match=re.escape(needle)):
        check_entry(kind, subject, body, actor)


def test_every_appendable_kind_is_accepted():
    for kind in APPENDABLE:
        assert check_entry(kind, "", {"ok": True}, "controller").kind == kind


def test_keys_init_writes_a_0600_private_key_and_refuses_to_replace_it(tmp_path):
    private, public, key_id = init_keys(tmp_path / "keys")
    assert private.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    signer, verifier = load_signer(private), load_verifier(public)
    assert signer.key_id == verifier.key_id == key_id
    digest = hashlib.sha256(b"x").hexdigest()
    assert verifier.record_ok(digest, signer.sign_record(digest))
    assert not verifier.anchor_ok(bytes.fromhex(digest), signer.sign_record(digest))
    with pytest.raises(KeyFileError, match="already exists"):
        init_keys(tmp_path / "keys")
    assert load_signer(private).key_id == key_id
    _, _, new_id = init_keys(tmp_path / "keys", force=True)
    assert new_id != key_id


def test_key_file_errors_say_how_to_fix_them(tmp_path):
    with pytest.raises(KeyFileError, match=r"run `aegis-controller keys init`"):
        load_signer(tmp_path / "missing.key")
    private, _, _ = init_keys(tmp_path)
    private.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"chmod 600"):
        load_signer(private)
    bogus = tmp_path / "bogus.key"
    bogus.write_text("not a key\n")
    bogus.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"bogus.key is not an unencrypted PEM private key"):
        load_signer(bogus)
    with pytest.raises(KeyFileError, match=r"bogus.key is not a PEM public key"):
        load_verifier(bogus)


def test_anchor_is_signed_monotonic_and_refuses_a_fork(tmp_path):
    private, _, _ = init_keys(tmp_path / "keys")
    signer = load_signer(private)
    path = tmp_path / "anchor.json"
    assert read_anchor(path) is None
    first = advance(path, 11, "a" * 64, 11, signer)
    assert first.signature_ok(signer.verifier)
    second = advance(path, 21, "b" * 64, 21, signer)
    assert read_anchor(path) == second
    # Never backwards: an older checkpoint leaves the newer anchor in place.
    assert advance(path, 11, "a" * 64, 11, signer) == second
    assert read_anchor(path).seq == 21
    with pytest.raises(AnchorError, match="ledger was rewritten"):
        advance(path, 21, "c" * 64, 21, signer)
    assert not list(tmp_path.glob(".anchor.json.*.tmp"))


def test_anchor_files_that_are_not_anchors_are_named(tmp_path):
    private, _, _ = init_keys(tmp_path / "keys")
    path = tmp_path / "anchor.json"
    path.write_text("{broken")
    with pytest.raises(AnchorError, match=rf"{re.escape(str(path))} is not JSON"):
        read_anchor(path)
    path.write_text('{"seq": 3}')
    with pytest.raises(AnchorError, match="missing or wrong fields"):
        read_anchor(path)
    # A writer refuses to build on an anchor it cannot trust.
    with pytest.raises(AnchorError, match=r"missing or wrong fields.*move the file aside"):
        advance(path, 5, "a" * 64, 5, load_signer(private))
    other = tmp_path / "other"
    advance(path.with_name("a2.json"), 5, "a" * 64, 5, load_signer(init_keys(other)[0]))
    path.write_text(path.with_name("a2.json").read_text())
    with pytest.raises(AnchorError, match="valid signature of this ledger key"):
        advance(path, 6, "b" * 64, 6, load_signer(private))
