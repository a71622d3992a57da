"""The Starlette application of ``[web]`` and the uvicorn server running it inside ``dicom-node serve``.

uvicorn runs in a thread of the main process with its own event loop: the receiver never waits on it;
database reads run in Starlette's thread pool.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_node import __version__
from dicom_node.config import NodeConfig
from dicom_node.web.api import api_routes
from dicom_node.web.auth import Accounts
from dicom_node.web.context import WebContext
from dicom_node.web.pages import page_routes
from dicom_node.web.probes import DatabaseCollector, NodeFacts, readiness_problems

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


def build_app(config: NodeConfig, engine: Engine, facts: NodeFacts) -> Starlette:
    """The Starlette application behind ``[web]``; ``app.state.ctx`` is its :class:`WebContext`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(config, engine))
    web = config.web
    ctx = WebContext(config, engine, facts, Accounts(web.users, web.session_hours, web.max_failed_logins))

    def healthz(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "alive",
                "version": __version__,
                "ae_title": ctx.config.node.ae_title,
                "uptime_s": round(time.time() - facts.started, 1),
                "receiver_listening": facts.listening(),
            }
        )

    def readyz(_: Request) -> JSONResponse:
        problems = readiness_problems(ctx.config, engine, facts)
        body = {"ready": not problems, "problems": problems, "version": __version__}
        if facts.config_state().get("file_differs"):
            body["config_file_differs"] = True  # a fact for the admin, not a reason to take no studies
        return JSONResponse(body, status_code=200 if not problems else 503)

    def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    app = Starlette(routes=routes + api_routes(ctx) + page_routes(ctx), middleware=[Middleware(SecurityHeaders)])

    app.state.ctx = ctx
    return app


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP reply that does not set them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    if key not in headers:
                        headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class WebServer:
    """uvicorn serving :func:`build_app` in a daemon thread of the main process."""

    def __init__(self, config: NodeConfig, engine: Engine, facts: NodeFacts) -> None:
        import uvicorn

        web = config.web
        self.app = build_app(config, engine, facts)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=web.host, port=web.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)

    def use_config(self, config: NodeConfig) -> None:
        """Serve from a reloaded config: its routes, peers, destinations and users (a removed user's sessions
        end); host, port and the session settings stay those the server started with."""
        ctx = self.app.state.ctx
        ctx.config = config
        ctx.accounts.users = {u.name: u.password_hash for u in config.web.users}

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; returns once the socket listens."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise OSError(f"the web service did not start on {self.server.config.host}:{self.server.config.port}")
        log.info(
            "web service on http://%s:%d (dashboard, /api/, healthz, readyz, metrics)",
            self.server.config.host,
            self.port,
        )

    @property
    def port(self) -> int:
        """The bound port (useful with ``port = 0``)."""
        servers = getattr(self.server, "servers", [])
        if servers and servers[0].sockets:
            return int(servers[0].sockets[0].getsockname()[1])
        return int(self.server.config.port)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
