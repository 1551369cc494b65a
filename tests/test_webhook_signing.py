"""Webhook signing the Standard Webhooks way (https://www.standardwebhooks.com): stafet's
``sign`` / ``verify`` / ``signed_headers`` and the README's stdlib verifier, without a broker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path

import pytest

from stafet.subscribers import new_secret
from stafet.webhooks import (
    SignatureError,
    check_timestamp,
    secret_key,
    sign,
    signed_headers,
    verify,
    verify_headers,
)

from .webhook_secrets import whsec

# the reference libraries' test vector (standard-webhooks, libraries/*/tests)
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
TS = 1_800_000_000
SECRET, OTHER, WRONG, THIRD = whsec("secret"), whsec("other"), whsec("wrong"), whsec("third")
OLD, NEW = whsec("old-secret"), whsec("new-secret")


def _reason(*args, **kwargs) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(*args, **kwargs)
    return caught.value.reason


def test_the_standard_webhooks_test_vector():
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    verify(
        VECTOR_SECRET, VECTOR_ID, str(VECTOR_TS), VECTOR_BODY, VECTOR_SIGNATURE, now=VECTOR_TS + 10
    )
    tampered = VECTOR_SIGNATURE[:-2] + "A="  # the reference suite's invalid signature
    assert (
        _reason(VECTOR_SECRET, VECTOR_ID, str(VECTOR_TS), VECTOR_BODY, tampered, now=VECTOR_TS)
        == "bad-signature"
    )


def test_only_standard_webhooks_secrets_of_24_bytes_or_more_are_keys():
    assert secret_key(VECTOR_SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert len(secret_key(VECTOR_SECRET)) == 24  # the spec's minimum
    expected = base64.b64encode(hmac.new(b"k" * 24, b"m1.5.{}", hashlib.sha256).digest())
    assert (
        sign("whsec_" + base64.b64encode(b"k" * 24).decode(), "m1", 5, b"{}")
        == "v1," + expected.decode()
    )
    for bad, why in (
        ("secret-aarhus", "must start with whsec_"),
        ("", "must start with whsec_"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_", "decodes to 0 bytes"),
        ("whsec_" + base64.b64encode(b"k" * 23).decode(), "decodes to 23 bytes"),
    ):
        with pytest.raises(ValueError, match=why) as caught:
            secret_key(bad)
        assert not bad or bad not in str(caught.value), "the secret is never in the message"
        with pytest.raises(ValueError):
            sign(bad, "m1", 5, b"{}")  # the signer refuses what the check refuses


def test_new_secrets_are_valid_and_random():
    a, b = new_secret(), new_secret()
    assert a != b and len(secret_key(a)) == 32


def test_id_time_and_body_are_all_signed():
    sig = sign(SECRET, "m1", TS, b"body")
    verify(SECRET, "m1", str(TS), b"body", sig, now=TS)
    assert _reason(SECRET, "m2", str(TS), b"body", sig, now=TS) == "bad-signature", "wrong id"
    assert _reason(SECRET, "m1", str(TS), b"body!", sig, now=TS) == "bad-signature"
    assert _reason(SECRET, "m1", str(TS + 1), b"body", sig, now=TS) == "bad-signature"
    assert _reason(OTHER, "m1", str(TS), b"body", sig, now=TS) == "bad-signature"


def test_the_replay_window_holds_both_ways():
    sig = sign(SECRET, "m1", TS, b"body")
    verify(SECRET, "m1", str(TS), b"body", sig, now=TS + 300)
    verify(SECRET, "m1", str(TS), b"body", sig, now=TS - 300)
    assert _reason(SECRET, "m1", str(TS), b"body", sig, now=TS + 301) == "too-old"
    assert _reason(SECRET, "m1", str(TS), b"body", sig, now=TS - 301) == "too-new"
    assert _reason(SECRET, "m1", str(TS), b"body", sig, tolerance_s=5, now=TS + 6) == "too-old"
    verify(SECRET, "m1", str(TS), b"body", sig, tolerance_s=None, now=TS + 10**6)
    with pytest.raises(SignatureError, match="too-old"):  # the window is checked before the key
        verify(WRONG, "m1", str(TS), b"body", sig, now=TS + 10**6)
    assert check_timestamp(str(TS), 300, now=TS) == TS


def test_key_rotation_several_signatures_one_match_is_enough():
    old, new = sign(OLD, "m1", TS, b"b"), sign(NEW, "m1", TS, b"b")
    both = f"{old} {new}"
    verify(OLD, "m1", str(TS), b"b", both, now=TS)
    verify(NEW, "m1", str(TS), b"b", both, now=TS)
    assert _reason(THIRD, "m1", str(TS), b"b", both, now=TS) == "bad-signature"
    # other versions are skipped: a v1a (asymmetric) or v2 with our MAC does not count
    assert _reason(NEW, "m1", str(TS), b"b", "v2," + new[3:], now=TS) == "bad-signature"
    verify(NEW, "m1", str(TS), b"b", f"v1a,xyz v2,abc {new}", now=TS)


@pytest.mark.parametrize(
    "msg_id, ts, sig, reason",
    [
        (None, str(TS), "v1,x", "missing"),
        ("m1", None, "v1,x", "missing"),
        ("m1", str(TS), None, "missing"),
        ("m1", str(TS), "", "missing"),
        ("m1", "soon", "v1,x", "bad-timestamp"),
        ("m1", "-5", "v1,x", "bad-timestamp"),
        ("m1", f"{TS}.5", "v1,x", "bad-timestamp"),
        ("m1", "١٢٣", "v1,x", "bad-timestamp"),
        ("m 1", str(TS), "v1,x", "bad-id"),
        ("m1", str(TS), "v1,æøå", "bad-signature"),
        ("m1", str(TS), "sha256=abc", "bad-signature"),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(msg_id, ts, sig, reason):
    assert _reason(SECRET, msg_id, ts, b"body", sig, now=TS) == reason


def test_signed_headers_are_the_three_standard_ones():
    h = signed_headers("whsec_" + base64.b64encode(b"k" * 32).decode(), "m1", b"x", now=TS + 0.9)
    assert h == {
        "webhook-id": "m1",
        "webhook-timestamp": str(TS),
        "webhook-signature": sign("whsec_" + base64.b64encode(b"k" * 32).decode(), "m1", TS, b"x"),
    }
    verify(
        "whsec_" + base64.b64encode(b"k" * 32).decode(),
        h["webhook-id"],
        h["webhook-timestamp"],
        b"x",
        h["webhook-signature"],
        now=TS,
    )
    fresh = signed_headers(SECRET, "m1", b"x")  # now
    verify(SECRET, "m1", fresh["webhook-timestamp"], b"x", fresh["webhook-signature"])


def test_the_readme_verifier_agrees_with_stafets():
    """The stdlib-only example a receiver's developer pastes (README, delivery section)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(# stafet webhook verifier.*?)```", readme, re.DOTALL)
    assert match, "the README's receiver-side verifier example"
    scope: dict = {}
    exec(compile(match.group(1), "README.md", "exec"), scope)  # noqa: S102 - our own README
    check = scope["verify_stafet_webhook"]
    for secret in (VECTOR_SECRET, OTHER):
        h = signed_headers(secret, "m1", b"{}")
        check(secret, h, b"{}")
        with pytest.raises(ValueError):
            check(secret, {**h, "webhook-id": "m2"}, b"{}")
        with pytest.raises(ValueError):
            check(secret, h, b"{ }")
    stale = signed_headers(SECRET, "m1", b"{}", now=0)
    with pytest.raises(ValueError):
        check(SECRET, stale, b"{}")
    with pytest.raises(ValueError):  # headers arrive latin-1 decoded: no TypeError
        check(OTHER, {**h, "webhook-signature": "v1,æøå"}, b"{}")
    rotated = {**h, "webhook-signature": "v1,bm9wZQ== " + h["webhook-signature"]}
    check(OTHER, rotated, b"{}")


def test_a_receiver_checks_the_request_headers_as_they_arrive():
    body = b'{"resourceType": "Bundle"}'
    headers = signed_headers(SECRET, "m-7", body)
    verify_headers(SECRET, headers, body)  # signed now: inside the window
    with pytest.raises(SignatureError) as caught:
        verify_headers(OTHER, headers, body)
    assert caught.value.reason == "bad-signature"
    with pytest.raises(SignatureError) as caught:
        verify_headers(SECRET, {k: v for k, v in headers.items() if k != "webhook-id"}, body)
    assert caught.value.reason == "missing"
