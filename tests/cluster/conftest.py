"""Fixtures of the cluster tests: a real redis-server on a free loopback port, in a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import free_port


class RedisServer:
    """Debian's redis-server on 127.0.0.1, no persistence, its files in a folder of its own."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("no redis-server (CI=true: this test must run)", pytrace=False)
            pytest.skip("no redis-server (as root: apt-get install redis-server)")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = folder / "redis.log"
        arguments = ["--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(folder),
                     "--save", "", "--appendonly", "no", "--logfile", str(self.log)]  # fmt: skip
        self.process = subprocess.Popen([binary, *arguments])
        self.client = redis.Redis.from_url(self.url)
        try:
            self._wait_until_ready()
        except BaseException:
            self.close()
            raise

    def _wait_until_ready(self, timeout: float = 10.0) -> None:
        """Wait on the server's own answer to PING (a refused connection means not yet)."""
        client = redis.Redis(port=self.port, socket_connect_timeout=timeout)
        for _ in range(int(timeout * 20)):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log.read_text()[-2000:]}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                # Not listening yet: ask the process, which returns as soon as it ends.
                try:
                    self.process.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    continue
        raise RuntimeError("redis-server did not answer PING")

    def close(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, stopped after it."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.close()
