"""What every web handler shares: the running node's config, engine and facts, the accounts, and the
request checks (who is logged in, does a POST carry its CSRF token)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import parse_qs

from sqlalchemy.engine import Engine
from starlette.requests import Request

from dicom_node.config import NodeConfig
from dicom_node.web.auth import COOKIE, CSRF_HEADER, Accounts, Session
from dicom_node.web.probes import NodeFacts


@dataclass
class WebContext:
    """The node as the web face sees it; ``config`` is swapped on a live reload."""

    config: NodeConfig
    engine: Engine
    facts: NodeFacts
    accounts: Accounts

    def session(self, request: Request) -> Session | None:
        """The request's login session (cookie), or None."""
        return self.accounts.session(request.cookies.get(COOKIE))

    def user(self, request: Request) -> str | None:
        """Who sends the request: a session's user, or valid HTTP Basic credentials; None if nobody."""
        session = self.session(request)
        if session is not None:
            return session.user
        header = request.headers.get("authorization")
        if header is None:
            return None
        address = client_address(request)
        if self.accounts.locked_out(address):
            return None
        user = self.accounts.basic(header)
        if user is None:
            self.accounts.failed(address)
        return user

    def csrf_ok(self, request: Request, form: dict[str, str] | None = None) -> bool:
        """A state-changing request is allowed: Basic credentials (no cookie), or a session whose CSRF token
        comes back in the ``X-CSRF-Token`` header or the form's ``csrf`` field."""
        session = self.session(request)
        if session is None:
            return request.headers.get("authorization") is not None
        sent = request.headers.get(CSRF_HEADER) or (form or {}).get("csrf", "")
        return hmac.compare_digest(sent.encode(), session.csrf.encode())


def client_address(request: Request) -> str:
    """The peer address of a request (for the failed-login counts)."""
    return request.client.host if request.client else "?"


async def read_form(request: Request, limit: int = 65536) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (first value of each field); at most ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # stop reading: a form here is a few hundred bytes
            return {}
    return {k: v[0] for k, v in parse_qs(bytes(body).decode("utf-8", "replace"), keep_blank_values=True).items()}
