"""The wire: envelopes round-trip, bad frames are refused with a message, fuzzing finds no other exception."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sdl.wire import PROTOCOL_VERSION, Event, ProtocolError, Reply, Request, decode, encode


def test_request_round_trip_keeps_every_field():
    request = Request(service="instrument.a", method="run", payload={"x": 1}, idempotency_key="k-1", timeout_s=0.5)
    decoded = decode(encode(request))
    assert decoded == request
    assert decoded.version == PROTOCOL_VERSION
    assert decoded.id and decoded.sent_at_unix_s > 0


def test_reply_correlates_and_requires_error_iff_not_ok():
    reply = Reply(correlation_id="abc", ok=True, payload={"a": 1})
    assert decode(encode(reply)).correlation_id == "abc"
    with pytest.raises(ValidationError, match="error exactly when ok is false"):
        Reply(correlation_id="abc", ok=False)


def test_event_round_trip():
    event = Event(topic="experiment.done", payload={"experiment_id": "e1"})
    assert decode(encode(event)) == event


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"kind": "launch_missiles", "version": 2}', "unknown message kind 'launch_missiles'; allowed: request"),
        (b'{"kind": "request", "version": 99}', "version 99 is not supported"),
        (b'{"kind": "request", "version": 2, "method": "run"}', "service: Field required"),
        (b'{"kind": "request", "version": 2, "service": "Bad Name!", "method": "run"}', "service: String should match"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b'{"kind": "request", "version": 2, "service": "a", "method": "m", "payload": ' + b'{"a": ' * 100_000 + b"1"
         + b"}" * 100_001, "nests too deeply"),
    ],
)
def test_decode_rejects_with_a_message_that_says_what_is_wrong(body, fragment):
    with pytest.raises(ProtocolError, match=fragment.replace("(", r"\(")):
        decode(body)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_decode_never_raises_anything_but_protocol_error(body):
    try:
        decode(body)
    except ProtocolError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["kind", "version", "id", "service", "method", "payload", "ok", "error", "topic",
                         "idempotency_key", "timeout_s", "correlation_id", "capacity", "worker"]),
        json_values,
        max_size=10,
    )
)
def test_fuzz_structured_garbage_is_accepted_or_rejected_cleanly(fields):
    try:
        message = decode(json.dumps(fields).encode())
    except ProtocolError:
        return
    assert decode(encode(message)) == message  # whatever is accepted round-trips


@settings(max_examples=200, deadline=None)
@given(
    service=st.from_regex(r"[a-z][a-z0-9_]{0,10}(\.[a-z0-9_]{1,8}){0,2}", fullmatch=True),
    method=st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True),
    payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    key=st.none() | st.text(min_size=1, max_size=40),
)
def test_valid_requests_round_trip(service, method, payload, key):
    request = Request(service=service, method=method, payload=payload, idempotency_key=key)
    assert decode(encode(request)) == request
