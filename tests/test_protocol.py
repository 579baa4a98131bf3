import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sdl import protocol
from sdl.protocol import (
    Composition,
    DesignPoint,
    Event,
    ExperimentSpec,
    ProcessStep,
    ProtocolError,
    Reply,
    Request,
    decode,
    encode,
)


def test_request_round_trip_keeps_every_field():
    request = Request(service="instrument.a", method="run", payload={"x": 1}, idempotency_key="k-1", timeout_ms=500)
    decoded = decode(encode(request))
    assert decoded == request
    assert decoded.version == protocol.PROTOCOL_VERSION
    assert decoded.id and decoded.sent_at_unix_s > 0


def test_reply_correlates_and_requires_error_iff_not_ok():
    reply = Reply(correlation_id="abc", ok=True, payload={"a": 1})
    assert decode(encode(reply)).correlation_id == "abc"
    with pytest.raises(ValidationError, match="error exactly when ok is false"):
        Reply(correlation_id="abc", ok=False)


def test_event_round_trip():
    event = Event(topic="campaign.experiment.done", payload={"experiment_id": "e1"})
    assert decode(encode(event)) == event


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"kind": "launch_missiles", "version": 1}', "unknown message kind 'launch_missiles'; allowed: request"),
        (b'{"kind": "request", "version": 99}', "version 99 is not supported"),
        (b'{"kind": "request", "version": 1, "method": "run"}', "service: Field required"),
        (b'{"kind": "request", "version": 1, "service": "Bad Name!", "method": "run"}', "service: String should match"),
    ],
)
def test_decode_rejects_with_a_message_that_says_what_is_wrong(body, fragment):
    with pytest.raises(ProtocolError, match=fragment.replace("(", r"\(")):
        decode(body)


def test_composition_accepts_a_valid_alloy():
    c = Composition({"Ni": 0.75, "Al": 0.15, "Cr": 0.1})
    assert c["Ni"] == 0.75


@pytest.mark.parametrize(
    "fractions, fragment",
    [
        ({"Ni": 0.5, "Xx": 0.5}, "unknown element symbol"),
        ({"Ni": 1.2, "Al": -0.2}, "must lie in \\[0, 1\\]"),
        ({"Ni": 0.5, "Al": 0.4}, "sum to 0.9"),
        ({"Ni": 0.5, "Al": 0.5 + 2e-6}, "must sum to 1 within 1e-06"),
        ({}, "at least one element"),
        ({"Ni": math.nan, "Al": 1.0}, "must lie in"),
    ],
)
def test_composition_rejects(fractions, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Composition(fractions)


def test_composition_tolerates_rounding_within_1e_6():
    Composition({"Ni": 0.7, "Al": 0.3 + 5e-7})


def test_process_step_has_units_in_its_names_and_refuses_others():
    step = ProcessStep(operation="age", temperature_k=1023.0, duration_s=3600.0)
    assert step.temperature_k == 1023.0
    with pytest.raises(ValidationError, match="temperature_c"):
        ProcessStep.model_validate({"operation": "age", "temperature_c": 750, "duration_s": 10})
    with pytest.raises(ValidationError, match="greater than 0"):
        ProcessStep(operation="age", temperature_k=-5.0, duration_s=1.0)


def test_experiment_spec_nests_validation():
    with pytest.raises(ValidationError, match="sum to"):
        ExperimentSpec.model_validate(
            {"experiment_id": "e1", "campaign_id": "c", "point": {"composition": {"Ni": 0.6, "Al": 0.6}}}
        )
    with pytest.raises(ValidationError, match="finite"):
        DesignPoint(parameters={"x": math.inf})


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
                         "idempotency_key", "timeout_ms", "correlation_id", "capacity", "worker"]),
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


def test_temperatures_with_units_are_converted_and_bare_strings_refused():
    assert ProcessStep(operation="age", temperature_k="827 °C", duration_s=1).temperature_k == pytest.approx(1100.15)
    assert ProcessStep(operation="age", temperature_k="827 C", duration_s=1).temperature_k == pytest.approx(1100.15)
    assert ProcessStep(operation="age", temperature_k="1100 K", duration_s=1).temperature_k == 1100.0
    with pytest.raises(ValidationError, match="ambiguous; give kelvin as a number"):
        ProcessStep(operation="age", temperature_k="1100", duration_s=1)
    with pytest.raises(ValidationError, match="temperature"):
        ProcessStep.model_validate({"operation": "age", "temperature": 1100, "duration_s": 1})
