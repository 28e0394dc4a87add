"""The redis_server fixture: a real server, answering on its own port, gone after the test."""

from __future__ import annotations


def test_redis_server_answers_on_loopback(redis_server):
    client = redis_server.client
    assert client.ping()
    client.xadd("stream", {"index": 0})
    assert client.xlen("stream") == 1
    assert redis_server.url.startswith("redis://127.0.0.1:")
