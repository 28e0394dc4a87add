"""Fixtures of the cluster tests: a real redis-server on a free loopback port, in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import RedisServer, find_redis_server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, stopped after it."""
    if find_redis_server() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no redis-server (CI=true: this test must run)", pytrace=False)
        pytest.skip("no redis-server (as root: apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    yield server
    server.close()
