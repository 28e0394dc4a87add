"""The Socket.IO layer: every message's packets leave together; every event gets an ack."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from socketio import packet

from audioserver.events import NAMESPACE, Packet, encode_event

CHUNK_LIKE = {
    "task_id": "t",
    "index": 3,
    "peak_db": -1.5,
    "waveform": [[-0.25, 0.5], [-1.0, 0.75]],
    "spectrum": [-90.5, -12.0, 0.0],
    "encoding": "pcm_s16le",
    "worker": None,
    "audio": b"\x00\x01\x02\x03",
}


@pytest.mark.parametrize(
    "data",
    [
        CHUNK_LIKE,
        {**CHUNK_LIKE, "audio": b""},
        {key: value for key, value in CHUNK_LIKE.items() if key != "audio"},
        {"nested": [b"a", {"deeper": [b"b", 1]}], "after": b"c"},
        {"text": '\u00e9\u4e2d "quoted"', "empty": {}, "list": []},
        [1, b"x"],
        None,
    ],
    ids=["chunk", "empty-audio", "no-binary", "nested-binary", "text", "list", "none"],
)
def test_events_are_encoded_as_python_socketio_encodes_them(data):
    ours = encode_event("audio_chunk", data)
    theirs = Packet(packet.EVENT, namespace=NAMESPACE, data=["audio_chunk", data]).encode()
    assert ours == (theirs if isinstance(theirs, list) else [theirs])
    decoded = Packet(encoded_packet=ours[0])
    for attachment in ours[1:]:
        decoded.add_attachment(attachment)
    assert decoded.data == ["audio_chunk", data]


def test_an_event_that_json_cannot_hold_is_refused():
    with pytest.raises(TypeError, match="float32"):
        encode_event("audio_chunk", {"peak_db": np.float32(1.0)})


def test_a_binary_event_cannot_be_split_by_another_send(live_server, listen):
    listener = listen(live_server.url)
    socketio = live_server.app.extensions["socketio"]
    publisher = live_server.engine.publisher
    server = socketio.server
    sent: list[str] = []
    header_sent, resume = threading.Event(), threading.Event()
    send_packet = server.eio.send_packet

    def recording_send_packet(eio_sid, eio_packet):
        data = eio_packet.data
        sent.append("attachment" if isinstance(data, bytes) else data[:1])
        if sent == ["5"]:  # a binary event's header (Socket.IO type 5): hold it here
            header_sent.set()
            resume.wait(10)
        send_packet(eio_sid, eio_packet)

    server.eio.send_packet = recording_send_packet
    try:
        sid = listener.sid
        probe = publisher.encode("probe", {"audio": b"\x00\x01"})
        emitter = threading.Thread(target=publisher.send, args=(sid, probe))
        emitter.start()
        assert header_sent.wait(10), sent
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        ack = packet.Packet(packet.ACK, namespace="/", data=[{"ok": True}], id=1)
        acker = threading.Thread(target=server._send_packet, args=(eio_sid, ack))
        acker.start()
        acker.join(0.3)
        assert acker.is_alive()  # held back: the event's attachment has not gone yet
        resume.set()
        emitter.join(10)
        acker.join(10)
    finally:
        resume.set()
        server.eio.send_packet = send_packet
    assert sent == ["5", "attachment", "3"]  # header, its attachment, then the ack (type 3)


def test_an_unknown_event_or_a_second_argument_gets_an_error_ack(live_server, listen, caplog):
    client = listen(live_server.url).client
    unknown = client.call("no_such_event", {"task_id": "a"}, timeout=10)
    assert unknown["ok"] is False and unknown["error"] == "unknown_event"
    assert "subscribe, unsubscribe, stop" in unknown["message"]
    extra = client.call("stop", ({"task_id": "a"}, "more"), timeout=10)
    assert (extra["ok"], extra["error"]) == (False, "bad_event")
    assert client.call("stop", {"task_id": "a"}, timeout=10)["error"] == "task_not_found"
    assert not [record for record in caplog.records if record.levelname in ("WARNING", "ERROR")]
