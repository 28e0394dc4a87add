"""The server's HTTP API, as plain methods that return its JSON or raise ``ClientError``.

Exceptions::

    ClientError          one line that says what went wrong (the CLI prints it and exits 1)
    ├── ServerError      the server answered 4xx/5xx: .status, .code, .message, .body
    └── ConnectionLost   no answer: refused, reset, cut mid-request (.retryable)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import requests
from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor

DEFAULT_TIMEOUT = 30.0

UploadProgress = Callable[[int, int], None]  # (bytes sent, bytes in all)


class ClientError(Exception):
    """An error to show in one line."""


class ServerError(ClientError):
    """The server answered with an error: its JSON ``message`` is the line shown."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("error", "http_error"))
        self.message = str(body.get("message", f"HTTP {status}"))
        super().__init__(f"{self.message} ({status} {self.code})")

    @property
    def parameter(self) -> str | None:
        return self.body.get("parameter")

    @property
    def retry_after(self) -> float:
        return float(self.body.get("retry_after", 5))


class ConnectionLost(ClientError):
    """The server could not be reached, or the connection broke during a request."""


def _describe_connection_error(url: str, error: Exception) -> str:
    text = str(error)
    if "Connection refused" in text or "Errno 111" in text:
        return f"cannot reach the server at {url}: connection refused (is audio-server running?)"
    if isinstance(error, requests.Timeout):
        return f"the server at {url} did not answer in time"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return f"cannot reach the server at {url}: unknown host"
    return f"lost the connection to the server at {url} ({type(error).__name__})"


class Server:
    """An audio server's HTTP endpoints (thread-safe: one request, one connection)."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, **options: Any) -> requests.Response:
        """Send a request; raise ConnectionLost without an answer, ServerError for an error one."""
        options.setdefault("timeout", self.timeout)
        try:
            response = requests.request(method, self.url + path, **options)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise ConnectionLost(_describe_connection_error(self.url, error)) from error
        if response.status_code >= 400:
            raise _server_error(response)
        return response

    def upload(
        self, path: Path, *, fields: dict[str, str], on_progress: UploadProgress | None = None
    ) -> dict[str, Any]:
        """POST /upload: send a file with its options; return the new task's JSON.

        The multipart body is read from the file as it is sent, a block at a
        time, never held in memory whole; its Content-Length is known up front
        (the server refuses a file that is too large from it, before reading).
        on_progress(sent, total) is called as the body goes out.
        """
        path = Path(path)
        with open(path, "rb") as file:
            encoder = MultipartEncoder(fields=[*fields.items(), ("file", (path.name, file))])
            body = MultipartEncoderMonitor(encoder, _progress_callback(on_progress))
            headers = {"Content-Type": body.content_type}
            return _json(self._request("POST", "/upload", data=body, headers=headers))

    def task(self, task_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """GET /tasks/<id>: the task's status and progress."""
        return _json(self._request("GET", f"/tasks/{task_id}", timeout=timeout or self.timeout))

    def stop(self, task_id: str) -> dict[str, Any]:
        """POST /stop-processing."""
        return _json(self._request("POST", "/stop-processing", json={"task_id": task_id}))

    def health(self) -> dict[str, Any]:
        """GET /healthz."""
        return _json(self._request("GET", "/healthz"))

    def steps(self) -> dict[str, Any]:
        """GET /pipeline/steps: the catalogue."""
        return _json(self._request("GET", "/pipeline/steps"))

    def download_result(
        self,
        task_id: str,
        output: Path | None = None,
        *,
        attempts: int = 5,
        on_retry: Callable[[str], None] | None = None,
    ) -> Path:
        """GET /tasks/<id>/result into output (None: the server's file name, here).

        A download cut by a network drop resumes where it stopped (a Range request).
        """
        for attempt in range(1, attempts + 1):
            offset = output.stat().st_size if attempt > 1 and output and output.exists() else 0
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                response = self._request(
                    "GET", f"/tasks/{task_id}/result", headers=headers, stream=True
                )
                if output is None:
                    disposition = response.headers.get("Content-Disposition", "")
                    output = Path(filename_of(disposition) or f"{task_id}_processed")
                self._save(response, output, offset if response.status_code == 206 else 0)
                return output
            except ConnectionLost as error:
                if attempt == attempts:
                    raise
                if on_retry:
                    on_retry(f"download interrupted ({error}); resuming")
        raise AssertionError("unreachable")

    def _save(self, response: requests.Response, output: Path, offset: int) -> None:
        """Write a response's body into output from offset on."""
        try:
            with open(output, "r+b" if offset else "wb") as file:
                file.seek(offset)
                file.truncate()
                for block in response.iter_content(1 << 16):
                    file.write(block)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
            raise ConnectionLost(_describe_connection_error(self.url, error)) from error
        finally:
            response.close()


def _progress_callback(
    on_progress: UploadProgress | None,
) -> Callable[[MultipartEncoderMonitor], None] | None:
    if on_progress is None:
        return None
    return lambda monitor: on_progress(monitor.bytes_read, monitor.len)


def _json(response: requests.Response) -> dict[str, Any]:
    """The JSON object of a successful answer."""
    body: dict[str, Any] = response.json()
    return body


def _server_error(response: requests.Response) -> ServerError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    body.setdefault("error", "http_error")
    body.setdefault("message", f"the server answered {response.status_code} {response.reason}")
    if "Retry-After" in response.headers:
        body.setdefault("retry_after", response.headers["Retry-After"])
    return ServerError(response.status_code, body)


def filename_of(content_disposition: str) -> str | None:
    """Return the file name of a Content-Disposition header (``filename*`` first), or None."""
    extended = re.search(r"filename\*=UTF-8''([^;]+)", content_disposition, re.I)
    if extended:
        name = unquote(extended.group(1))
    else:
        plain = re.search(r'filename="([^"]*)"', content_disposition)
        name = plain.group(1) if plain else ""
    name = Path(name.replace("\\", "/")).name  # never a folder from the server
    return name or None
