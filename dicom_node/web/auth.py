"""Logins for the dashboard and the REST API: password hashes, in-memory sessions, CSRF tokens.

Accounts are the ``[[web.users]]`` of the config (``name`` + ``password_hash`` printed by
``dicom-node hash-password``). A login makes a session: a random token in an ``HttpOnly``,
``SameSite=Strict`` cookie, with its own CSRF token that every state-changing request must carry (form
field ``csrf`` or header ``X-CSRF-Token``). Scripts may instead send HTTP Basic credentials on each
request (no cookie, so no CSRF exposure). Sessions live in the serving process: a restart logs everyone out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dicom_node.config import WebUser

COOKIE = "dn_session"
CSRF_HEADER = "x-csrf-token"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
FAILED_LOGIN_WINDOW_S = 900.0


def hash_password(password: str) -> str:
    """A salted scrypt hash: ``scrypt$N$r$p$salt$hash`` (base64), what ``[[web.users]] password_hash`` holds."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (scrypt, or ``pbkdf2_sha256$iterations$salt$hash``)."""
    try:
        parts = stored.split("$")
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(x) for x in parts[1:4])
            salt, want = base64.b64decode(parts[4]), base64.b64decode(parts[5])
            got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want), maxmem=2**27)
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(parts[1]), dklen=len(want))
        else:
            return False
    except (ValueError, binascii.Error):  # a malformed hash in the config matches no password
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Session:
    """One login: who, the CSRF token its forms carry, and when it ends."""

    user: str
    csrf: str
    expires: float


class Accounts:
    """The configured users, their live sessions and the failed-login counts per client address."""

    def __init__(self, users: Sequence[WebUser], session_hours: float, max_failed: int) -> None:
        self.users = {u.name: u.password_hash for u in users}
        self.lifetime = session_hours * 3600
        self.max_failed = max_failed
        self._sessions: dict[str, Session] = {}
        self._failed: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def check(self, name: str, password: str) -> bool:
        """Whether the name and password belong to a configured user (constant work for unknown names)."""
        stored = self.users.get(name)
        if stored is None:
            verify_password(password, _DUMMY_HASH)  # same cost as a real check: no user enumeration by timing
            return False
        return verify_password(password, stored)

    def locked_out(self, address: str) -> bool:
        """Whether ``address`` has used up its failed logins for the current window."""
        with self._lock:
            recent = [t for t in self._failed.get(address, []) if t > time.time() - FAILED_LOGIN_WINDOW_S]
            self._failed[address] = recent
            return len(recent) >= self.max_failed

    def failed(self, address: str) -> None:
        """Count one failed login from ``address``."""
        with self._lock:
            self._failed.setdefault(address, []).append(time.time())

    def login(self, name: str) -> tuple[str, Session]:
        """A new session for ``name``: (cookie token, session)."""
        token = secrets.token_urlsafe(32)
        session = Session(name, secrets.token_urlsafe(24), time.time() + self.lifetime)
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > time.time()}
            self._sessions[token] = session
        return token, session

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie token, or None."""
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
        if session is None or session.expires <= time.time() or session.user not in self.users:
            return None  # expired, or the user was removed by a config reload
        return session

    def logout(self, token: str | None) -> None:
        """End the session of ``token`` (if any)."""
        with self._lock:
            self._sessions.pop(token or "", None)

    def basic(self, header: str | None) -> str | None:
        """The user named by a valid ``Authorization: Basic`` header, or None."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            name, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        return name if self.check(name, password) else None


_DUMMY_HASH = hash_password(secrets.token_hex(8))
