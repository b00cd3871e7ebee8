"""A small synchronous client of a running daemon's HTTP API (stdlib `urllib` only)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Mapping
from typing import Any

from ojs_amqp import __version__

CONTENT_TYPE = "application/openjobspec+json"
BASE = "/ojs/v1"


class AdminError(Exception):
    """Base of the errors the CLI reports; `exit_status` is what the process exits with."""

    exit_status = 2


class UsageError(AdminError):
    """The command line asks for something impossible (bad JSON, a missing --yes, ...)."""


class Unreachable(AdminError):
    """No HTTP answer at all: connection refused, timeout, DNS failure, not HTTP."""


class ApiError(AdminError):
    """The daemon answered with an error; `code` and `message` come from its OJS envelope."""

    exit_status = 1

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def job_path(job_id: str) -> str:
    return f"{BASE}/jobs/{urllib.parse.quote(job_id, safe='')}"


def dead_letter_path(job_id: str, action: str = "") -> str:
    path = f"{BASE}/dead-letter/{urllib.parse.quote(job_id, safe='')}"
    return f"{path}/{action}" if action else path


def read_token(path: str | None) -> str:
    """The bearer secret: the first line of the file `path` names, else $OJS_TOKEN, else
    none. Never a flag value: flags show in `ps` (docs/security.md)."""
    if not path:
        return os.environ.get("OJS_TOKEN", "").strip()
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.readline().strip()
    except OSError as exc:
        raise UsageError(f"cannot read --token-file: {exc}") from None
    if not token:
        raise UsageError(f"--token-file {path!r} is empty")
    return token


def error_from(status: int, raw: bytes, reason: str) -> ApiError:
    """The ApiError for an error answer: its OJS envelope, or a stand-in when there is none."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return ApiError(error["code"], str(error.get("message", "")), status)
    text = raw.decode("utf-8", "replace").strip()[:200] if raw else ""
    return ApiError(f"http_{status}", text or reason or "error", status)


class Client:
    """`token`: the bearer secret sent with every request (a daemon started with
    --auth-tokens-file wants one; docs/security.md)."""

    def __init__(self, base_url: str, timeout: float = 30.0, token: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._authorization = f"Bearer {token}" if token else ""

    def url(self, path: str, query: Mapping[str, object | None] | None = None) -> str:
        url = self.base_url + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        return f"{url}?{urllib.parse.urlencode(params)}" if params else url

    def _send(self, method: str, url: str, body: Any, accept: Collection[int]) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("User-Agent", f"ojs-amqp-cli/{__version__}")
        if self._authorization:
            req.add_header("Authorization", self._authorization)
        if data is not None:
            req.add_header("Content-Type", CONTENT_TYPE)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            raw = err.read()
            if err.code in accept:
                return err.code, raw
            error = error_from(err.code, raw, str(err.reason))
            if err.code == 401 and not self._authorization:
                error.message += " (give the CLI a token: OJS_TOKEN or --token-file)"
            raise error from None
        except urllib.error.URLError as err:
            raise self._unreachable(err.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        except ValueError as exc:  # "unknown url type" and friends
            raise UsageError(f"bad --url {self.base_url!r}: {exc}") from None

    def _unreachable(self, reason: object) -> Unreachable:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError | socket.timeout):
            why = f"no answer within {self.timeout:g}s"
        else:
            why = str(reason) or type(reason).__name__
        return Unreachable(
            f"cannot reach the daemon at {self.base_url}: {why} "
            "(is `ojs-amqp serve` running? point --url or OJS_URL at it)"
        )

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, object | None] | None = None,
        accept: Collection[int] = (),
    ) -> Any:
        """The decoded JSON answer; error answers raise ApiError unless their status is in
        `accept`."""
        status, raw = self._send(method, self.url(path, query), body, accept)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise error_from(status, raw, "the answer is not JSON") from None

    def text(self, path: str) -> str:
        _, raw = self._send("GET", self.url(path), None, ())
        return raw.decode("utf-8", "replace")
