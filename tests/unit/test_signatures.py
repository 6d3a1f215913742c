"""Standard Webhooks verification: the full signature matrix, rotation, secrets, and header handling."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.signatures import (
    SignatureError,
    secret_bytes,
    sign_webhook,
    standard_webhook_headers,
    verify_webhook,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-key-another-key-another!").decode()
NOW = 1_700_000_000
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
BODY = b'{"external_id":"form-1","customer_email":"ada@example.com","body":"hi"}'


def _headers(*, secret: str = SECRET, timestamp: int = NOW, body: bytes = BODY) -> dict[str, str]:
    return standard_webhook_headers(secret, MSG_ID, body, timestamp=timestamp)


def _reason(headers: dict[str, str], body: bytes = BODY, secret: str = SECRET) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_webhook(secret, headers, body, now=NOW)
    return caught.value.reason


def test_valid_signature_returns_the_webhook_id() -> None:
    assert verify_webhook(SECRET, _headers(), BODY, now=NOW) == MSG_ID


def test_signature_matches_the_reference_computation() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{MSG_ID}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert sign_webhook(SECRET, MSG_ID, NOW, BODY) == "v1," + base64.b64encode(digest).decode()


def test_matches_the_standard_webhooks_spec_example() -> None:
    # The worked example from the Standard Webhooks specification / reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign_webhook(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": expected,
    }
    assert verify_webhook(secret, headers, body, now=1614265330) == "msg_p5jXN8AQM9LWM0D4loKWxJek"


@pytest.mark.parametrize(
    ("missing", "reason"),
    [
        ("webhook-id", "missing webhook-id header"),
        ("webhook-timestamp", "missing webhook-timestamp header"),
        ("webhook-signature", "missing webhook-signature header"),
    ],
)
def test_each_missing_header_is_rejected(missing: str, reason: str) -> None:
    headers = _headers()
    del headers[missing]
    assert _reason(headers) == reason


def test_empty_headers_are_rejected() -> None:
    assert _reason({}) == "missing webhook-id header"
    assert _reason({**_headers(), "webhook-signature": ""}) == "missing webhook-signature header"


def test_bad_signature_is_rejected() -> None:
    forged = "v1," + base64.b64encode(b"\x00" * 32).decode()
    assert _reason({**_headers(), "webhook-signature": forged}) == "no matching signature"


def test_one_body_byte_changed_is_rejected() -> None:
    tampered = bytearray(BODY)
    tampered[-3] ^= 0x01
    assert _reason(_headers(), body=bytes(tampered)) == "no matching signature"
    assert _reason(_headers(), body=BODY + b" ") == "no matching signature"


def test_wrong_secret_is_rejected() -> None:
    assert _reason(_headers(secret=OTHER_SECRET)) == "no matching signature"


def test_changed_id_or_timestamp_is_rejected() -> None:
    assert _reason({**_headers(), "webhook-id": "msg_other"}) == "no matching signature"
    assert _reason({**_headers(), "webhook-timestamp": str(NOW + 1)}) == "no matching signature"


@pytest.mark.parametrize("offset", [301, -301, 86_400, -NOW])
def test_timestamp_outside_tolerance_is_rejected(offset: int) -> None:
    # Correctly signed, just too old or too far in the future: a replay or a skewed clock.
    assert _reason(_headers(timestamp=NOW + offset)) == "timestamp outside tolerance"


@pytest.mark.parametrize("offset", [300, -300, 0])
def test_timestamp_at_the_tolerance_edge_is_accepted(offset: int) -> None:
    assert verify_webhook(SECRET, _headers(timestamp=NOW + offset), BODY, now=NOW) == MSG_ID


def test_custom_tolerance() -> None:
    with pytest.raises(SignatureError, match="timestamp outside tolerance"):
        verify_webhook(SECRET, _headers(timestamp=NOW - 11), BODY, now=NOW, tolerance_s=10)


@pytest.mark.parametrize("timestamp", ["soon", "1.7e9", "-5", "", " ", "١٧٠٠٠٠٠٠٠٠", "9" * 5000])
def test_malformed_timestamp_is_rejected(timestamp: str) -> None:
    headers = {**_headers(), "webhook-timestamp": timestamp}
    assert _reason(headers) in (
        "webhook-timestamp is not a unix time in seconds",
        "missing webhook-timestamp header",
    )


def test_rotation_second_signature_matches() -> None:
    old = sign_webhook(OTHER_SECRET, MSG_ID, NOW, BODY)
    current = sign_webhook(SECRET, MSG_ID, NOW, BODY)
    headers = {**_headers(), "webhook-signature": f"{old} {current}"}
    assert verify_webhook(SECRET, headers, BODY, now=NOW) == MSG_ID
    # And the receiver still on the old secret accepts the same header.
    assert verify_webhook(OTHER_SECRET, headers, BODY, now=NOW) == MSG_ID


def test_unknown_versions_and_garbage_entries_are_skipped() -> None:
    current = sign_webhook(SECRET, MSG_ID, NOW, BODY)
    noisy = f"v1a,abc v1,!!!notbase64!!! v2,{current[3:]} v1,ü {current}"
    assert verify_webhook(SECRET, {**_headers(), "webhook-signature": noisy}, BODY, now=NOW) == MSG_ID
    only_noise = "v1a,abc v1,!!! v1 ,,,"
    assert _reason({**_headers(), "webhook-signature": only_noise}) == "no matching signature"


def test_whsec_prefix_and_raw_secrets() -> None:
    assert secret_bytes(SECRET) == b"0123456789abcdef0123456789abcdef"
    assert secret_bytes("plain-shared-secret") == b"plain-shared-secret"
    raw_headers = standard_webhook_headers("plain-shared-secret", MSG_ID, BODY, timestamp=NOW)
    assert verify_webhook("plain-shared-secret", raw_headers, BODY, now=NOW) == MSG_ID
    # whsec_ is only an encoding: the same key bytes written either way verify the same signatures.
    encoded = "whsec_" + base64.b64encode(b"plain-shared-secret").decode()
    assert verify_webhook(encoded, raw_headers, BODY, now=NOW) == MSG_ID
    with pytest.raises(ValueError, match="base64"):
        secret_bytes("whsec_not base64!")


def test_header_names_are_case_insensitive() -> None:
    shouty = {name.upper(): value for name, value in _headers().items()}
    assert verify_webhook(SECRET, shouty, BODY, now=NOW) == MSG_ID
    mixed = {name.title(): value for name, value in _headers().items()}
    assert verify_webhook(SECRET, mixed, BODY, now=NOW) == MSG_ID


def test_standard_webhook_headers_default_to_now() -> None:
    headers = standard_webhook_headers(SECRET, MSG_ID, BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert verify_webhook(SECRET, headers, BODY) == MSG_ID


@settings(max_examples=150)
@given(body=st.binary(max_size=2048), msg_id=st.text(min_size=1, max_size=40).filter(str.strip))
def test_sign_then_verify_round_trips(body: bytes, msg_id: str) -> None:
    headers = standard_webhook_headers(SECRET, msg_id, body, timestamp=NOW)
    assert verify_webhook(SECRET, headers, body, now=NOW) == msg_id


@settings(max_examples=150)
@given(
    headers=st.dictionaries(
        st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "x-other"]),
        st.text(st.characters(exclude_categories=()), max_size=80),
    ),
    body=st.binary(max_size=256),
)
def test_arbitrary_headers_only_ever_raise_signature_error(headers: dict[str, str], body: bytes) -> None:
    try:
        verify_webhook(SECRET, headers, body, now=NOW)
    except SignatureError as exc:
        reason = exc.reason
    else:
        reason = "accepted"
    assert reason
