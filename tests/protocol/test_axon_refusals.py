"""Every bad request gets its typed 4xx JSON error; the handler never runs and no nonce is kept."""

from __future__ import annotations

import time

import pytest

from protocol.synapse import Echo
from tests.support.network import raw_post, signed_headers

PATH = Echo.route()
BODY = b'{"text":"hello"}'


def assert_refused(served, status: int, error_type: str, result) -> dict:
    code, payload, _ = result
    assert code == status, payload
    assert set(payload) == {"error"}
    assert payload["error"]["type"] == error_type
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    assert served.spy.calls == [], "the handler must not run"
    assert served.store.stored == [], "nothing may be stored"
    return payload["error"]


async def test_unsigned_request_is_malformed_auth(echo_axon):
    headers = {"Content-Type": "application/json", "X-Canopy-Protocol": "1.0"}
    result = await raw_post(echo_axon.url + PATH, BODY, headers)
    assert_refused(echo_axon, 401, "malformed_auth", result)


async def test_garbage_signature_is_malformed_auth(echo_axon, wallets):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, BODY)
    headers["X-Bittensor-Signature"] = "0xnot-hex"
    assert_refused(echo_axon, 401, "malformed_auth", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_stale_nonce(echo_axon, wallets):
    old = time.time_ns() - 60 * 10**9
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, BODY, nonce_ns=old)
    assert_refused(echo_axon, 401, "stale", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_nonce_from_the_future_is_stale(echo_axon, wallets):
    ahead = time.time_ns() + 60 * 10**9
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, BODY, nonce_ns=ahead)
    assert_refused(echo_axon, 401, "stale", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_replayed_request(echo_axon, wallets):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, BODY)
    status, payload, _ = await raw_post(echo_axon.url + PATH, BODY, headers)
    assert status == 200 and payload == {"text": "hello"}
    assert len(echo_axon.spy.calls) == 1 and len(echo_axon.store.stored) == 1

    status, payload, _ = await raw_post(echo_axon.url + PATH, BODY, headers)
    assert status == 401 and payload["error"]["type"] == "replayed"
    assert len(echo_axon.spy.calls) == 1, "the replay must not reach the handler"
    assert len(echo_axon.store.stored) == 1


async def test_wrong_receiver(echo_axon, wallets):
    headers = signed_headers(wallets.validator, wallets.whale.hotkey.ss58_address, PATH, BODY)
    assert_refused(echo_axon, 401, "wrong_receiver", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_missing_receiver_is_wrong_receiver(echo_axon, wallets):
    headers = signed_headers(wallets.validator, None, PATH, BODY)
    assert_refused(echo_axon, 401, "wrong_receiver", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_tampered_body(echo_axon, wallets):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, BODY)
    tampered = b'{"text":"HELLO"}'
    assert_refused(echo_axon, 401, "bad_signature", await raw_post(echo_axon.url + PATH, tampered, headers))


async def test_signature_for_another_path(echo_axon, wallets):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, "/synapse/Ping", BODY)
    assert_refused(echo_axon, 401, "bad_signature", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_unknown_hotkey(echo_axon, wallets):
    headers = signed_headers(wallets.stranger, echo_axon.hotkey, PATH, BODY)
    assert_refused(echo_axon, 403, "unknown_hotkey", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_caller_without_validator_permit(echo_axon, wallets):
    headers = signed_headers(wallets.nopermit, echo_axon.hotkey, PATH, BODY)
    assert_refused(echo_axon, 403, "not_validator", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_permit_not_required_serves_registered_miner(make_axon, wallets):
    served = await make_axon(require_permit=False)
    headers = signed_headers(wallets.nopermit, served.hotkey, PATH, BODY)
    status, payload, _ = await raw_post(served.url + PATH, BODY, headers)
    assert status == 200 and payload == {"text": "hello"}


async def test_low_stake(echo_axon, wallets):
    headers = signed_headers(wallets.minnow, echo_axon.hotkey, PATH, BODY)
    error = assert_refused(echo_axon, 403, "low_stake", await raw_post(echo_axon.url + PATH, BODY, headers))
    assert "below the minimum" in error["message"]


async def test_malformed_json(echo_axon, wallets):
    body = b'{"text": "unterminated'
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, body)
    assert_refused(echo_axon, 400, "malformed_json", await raw_post(echo_axon.url + PATH, body, headers))


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b'{"txt":"hello"}', {"text", "txt"}),  # missing field and unknown field
        (b'{"text":42}', {"text"}),  # wrong type
        (b"[1,2,3]", {""}),  # not an object at all
    ],
)
async def test_wrong_schema_names_the_failing_field(echo_axon, wallets, body, fields):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, body)
    error = assert_refused(echo_axon, 422, "invalid_payload", await raw_post(echo_axon.url + PATH, body, headers))
    assert {problem["loc"] for problem in error["detail"]} == fields


async def test_oversized_body_by_content_length(make_axon, wallets):
    served = await make_axon(max_body_bytes=1024)
    body = b'{"text":"' + b"x" * 4096 + b'"}'
    headers = signed_headers(wallets.validator, served.hotkey, PATH, body)
    assert_refused(served, 413, "payload_too_large", await raw_post(served.url + PATH, body, headers))


async def test_oversized_chunked_body_is_cut_off_while_streaming(make_axon, wallets):
    served = await make_axon(max_body_bytes=1024)
    body = b'{"text":"' + b"x" * 64_000 + b'"}'
    headers = signed_headers(wallets.validator, served.hotkey, PATH, body)

    async def chunks():  # no Content-Length: aiohttp sends Transfer-Encoding: chunked
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    assert_refused(served, 413, "payload_too_large", await raw_post(served.url + PATH, chunks(), headers))


async def test_protocol_major_mismatch(echo_axon, wallets):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, BODY, protocol="2.0")
    assert_refused(echo_axon, 400, "protocol_mismatch", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_missing_protocol_header(echo_axon, wallets):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, BODY, protocol=None)
    assert_refused(echo_axon, 400, "protocol_mismatch", await raw_post(echo_axon.url + PATH, BODY, headers))


async def test_newer_minor_version_is_accepted(echo_axon, wallets):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, PATH, BODY, protocol="1.7")
    status, payload, _ = await raw_post(echo_axon.url + PATH, BODY, headers)
    assert status == 200 and payload == {"text": "hello"}


async def test_unknown_route_and_method_are_typed(echo_axon, wallets):
    headers = signed_headers(wallets.validator, echo_axon.hotkey, "/synapse/Nope", BODY)
    status, payload, _ = await raw_post(echo_axon.url + "/synapse/Nope", BODY, headers)
    assert status == 404 and payload["error"]["type"] == "not_found"
    status, payload, _ = await raw_post(echo_axon.url + "/health", BODY, {})
    assert status == 405 and payload["error"]["type"] == "method_not_allowed"


async def test_handler_exception_is_500_without_traceback(make_axon, wallets):
    async def explode(request, caller):
        raise RuntimeError("secret database password in /etc/canopy")

    served = await make_axon(handler=explode)
    headers = signed_headers(wallets.validator, served.hotkey, PATH, BODY)
    status, payload, _ = await raw_post(served.url + PATH, BODY, headers)
    assert status == 500 and payload["error"]["type"] == "handler_error"
    text = str(payload)
    assert "secret" not in text and "Traceback" not in text and "RuntimeError" not in text
    headers = signed_headers(wallets.validator, served.hotkey, "/synapse/Ping", b"{}")
    status, payload, _ = await raw_post(served.url + "/synapse/Ping", b"{}", headers)
    assert status == 200 and payload["hotkey"] == served.hotkey, "the axon keeps serving afterwards"
