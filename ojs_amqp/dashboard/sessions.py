"""Dashboard sessions: an admin token, presented once in the login form, is kept here under a
random session id that travels in an HttpOnly, SameSite=Strict cookie, so page scripts never
hold the token and another site cannot make the browser use it."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "ojs_admin_session"
#: A session ends this long after its login, whatever happens in between.
SESSION_TTL_S = 8 * 3600
#: The oldest sessions are forgotten past this many (logins cannot grow memory without bound).
MAX_SESSIONS = 1000


@dataclass(frozen=True, slots=True)
class Session:
    token: str  # the bearer token the session stands for
    scope: str
    expires_at: float


class SessionStore:
    """In memory: a restart logs everyone out, which is what a token change should do too."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def open(self, token: str, scope: str) -> str:
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = Session(token, scope, time.monotonic() + self._ttl_s)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expires_at <= time.monotonic():
            del self._sessions[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def cookie_value(cookie_header: str, name: str = COOKIE) -> str | None:
    """The value of cookie `name` in a Cookie header, if present."""
    for part in cookie_header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return None
