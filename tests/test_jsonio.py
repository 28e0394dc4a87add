"""JSON out of the server has no NaN or infinity; JSON into it fails only with ValueError."""

from __future__ import annotations

import math

import pytest
from flask import jsonify

from audioserver import jsonio
from audioserver.events import Packet, encode_event


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_no_answer_or_event_carries_a_non_finite_number(app, number):
    with pytest.raises(ValueError, match="JSON compliant"):
        jsonio.dumps({"peak_db": number})
    with app.app_context(), pytest.raises(ValueError, match="JSON compliant"):
        jsonify({"peak_db": number})
    with pytest.raises(ValueError, match="JSON compliant"):
        Packet(data=["audio_chunk", {"peak_db": number}]).encode()
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_event("audio_chunk", {"peak_db": number})


def test_answers_keep_the_order_of_their_keys(app):
    with app.app_context():
        assert jsonify({"b": 1, "a": 2}).get_data(as_text=True).startswith('{"b":')
    assert Packet(data=["x", {"b": 1, "a": 2}]).encode() == '2["x",{"b":1,"a":2}]'


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": ' + "1" * 5000 + "}", "more than 4300 digits"),
        ('{"a": ', "Expecting value"),
        (b'{"a": "\xff"}', "can't decode"),
    ],
)
def test_reading_fails_only_with_value_error(app, text, words):
    with pytest.raises(ValueError, match=words):
        jsonio.loads(text)
    with pytest.raises(ValueError, match=words):
        app.json.loads(text)
    if isinstance(text, str):  # a Socket.IO packet, as it arrives
        with pytest.raises(ValueError, match=words):
            Packet(encoded_packet="2" + text)


def test_a_deep_body_is_bad_json_not_a_500(client):
    response = client.post(
        "/stop-processing", data="[" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert (response.status_code, response.get_json()["error"]) == (400, "bad_json")
