"""Synapse declarations and the error vocabulary, without any network."""

from __future__ import annotations

from typing import ClassVar

import pytest

from protocol import errors
from protocol.synapse import PROTOCOL_VERSION, Echo, EchoResponse, Ping, Pong, Synapse, SynapseResponse, major_of


def test_routes_default_to_the_class_name_and_can_be_renamed():
    class Inventory(Synapse):
        response_model: ClassVar[type[SynapseResponse]] = Pong

    class Renamed(Synapse):
        route_name: ClassVar[str] = "graval/challenge"

    assert Echo.route() == "/synapse/Echo" and Ping.route() == "/synapse/Ping"
    assert Inventory.route() == "/synapse/Inventory" and Inventory.protocol_version == PROTOCOL_VERSION
    assert Renamed.route() == "/synapse/graval/challenge"


def test_a_bad_protocol_version_is_refused_at_class_definition():
    with pytest.raises(TypeError):
        class Broken(Synapse):  # noqa: F841
            protocol_version: ClassVar[str] = "one"


def test_json_round_trip_and_forward_compatible_responses():
    assert Echo(text="é").to_json() == '{"text":"é"}'.encode()
    assert Echo.parse_response(b'{"text":"x","added_in_1_1":true}') == EchoResponse(text="x")
    assert major_of("1.9") == 1 and major_of("v2") is None


@pytest.mark.parametrize("kind", list(errors.ERROR_TYPES.values()))
def test_every_error_type_survives_the_wire(kind):
    sent = kind("why", detail=[{"loc": "text"}])
    received = errors.error_from_body(kind.status, sent.to_json())
    assert type(received) is kind and received.type == kind.type
    assert received.message == "why" and received.detail == [{"loc": "text"}]


def test_error_types_are_stable():
    assert {
        "malformed_auth", "stale", "replayed", "bad_signature", "wrong_receiver", "unknown_hotkey", "not_validator",
        "low_stake", "busy", "malformed_json", "invalid_payload", "payload_too_large", "protocol_mismatch",
        "not_found", "method_not_allowed", "unavailable", "handler_error", "timeout", "connection_error", "decode_error",
        "chute_unavailable", "remote_error", "instance_crashed", "instance_timeout", "device_busy",
    } == set(errors.ERROR_TYPES)


def test_unknown_or_foreign_error_bodies():
    future = errors.error_from_body(418, b'{"error":{"type":"teapot","message":"short and stout"}}')
    assert isinstance(future, errors.RemoteError) and future.type == "teapot" and future.message == "short and stout"
    proxy = errors.error_from_body(502, b"<html>Bad Gateway</html>")
    assert isinstance(proxy, errors.RemoteError) and proxy.type == "http_502"
