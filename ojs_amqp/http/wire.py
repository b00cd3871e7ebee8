"""The bytes of a response head: status lines and the Date header, prepared once."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


def header_block(headers: list[tuple[str, str]]) -> bytes:
    parts = []
    for name, value in headers:
        if "\r" in value or "\n" in value:  # never let a value split the header block
            value = value.replace("\r", " ").replace("\n", " ")
        parts.append(f"{name}: {value}\r\n")
    return "".join(parts).encode("latin-1", "replace")


class DateClock:
    """The Date header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._line
