"""The REST API under ``/api/`` (JSON; every endpoint needs a login: session cookie or HTTP Basic).

Reads reuse :mod:`dicom_node.admin` (what ``dicom-node status`` and ``jobs list`` print); actions go through
the same functions as the CLI, so each is written to the audit trail with the user's name. A POST made with
a session cookie must carry the session's CSRF token in ``X-CSRF-Token``. The OpenAPI document is
``GET /api/openapi.json`` (:mod:`dicom_node.web.openapi`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicom_node import __version__, admin
from dicom_node.queue import JOB_STATES
from dicom_node.web.context import WebContext
from dicom_node.web.openapi import openapi_document
from dicom_node.web.probes import readiness_problems
from dicom_node.web.routetest import route_test

DELIVERY_STATES = ("pending", "sent", "dead")
MAX_LIMIT = 1000


class BadRequest(ValueError):
    """A query parameter the API cannot use; answered 400 with the message."""


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _int_param(request: Request, name: str) -> int:
    raw = str(request.path_params[name])
    if not raw.isdigit():
        raise BadRequest(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


def node_summary(ctx: WebContext) -> dict[str, Any]:
    """The facts of ``dicom-node status --json`` plus what only the running node knows (version, uptime,
    readiness, the config file compared with the running config)."""
    report = admin.status_report(ctx.config, ctx.engine)
    problems = readiness_problems(ctx.config, ctx.engine, ctx.facts)
    report["node"] = {
        "ae_title": ctx.config.node.ae_title,
        "version": __version__,
        "uptime_s": round(time.time() - ctx.facts.started, 1),
        "receiver_listening": ctx.facts.listening(),
        "ready": not problems,
        "not_ready_because": problems,
        "config": ctx.facts.config_state(),
    }
    return report


def _action_reply(ok: bool, before: str | None, what: str) -> JSONResponse:
    if before is None:
        return JSONResponse({"done": False, "error": f"no such {what}"}, status_code=404)
    if not ok:
        return JSONResponse({"done": False, "was": before, "error": f"not possible while {before}"}, status_code=409)
    return JSONResponse({"done": True, "was": before})


def echo(ctx: WebContext, name: str, user: str) -> tuple[bool, str]:
    """C-ECHO a configured destination for ``user`` (audited): (Success, what happened)."""
    if name not in {d.name for d in ctx.config.destinations}:
        return False, f"no destination {name!r}"
    ok, message = admin.echo_destination(ctx.config, name)
    admin.audit(ctx.engine, user, f"echo {name}", ok, None, "Success" if ok else "failed")
    return ok, message


def api_routes(ctx: WebContext) -> list[Route]:
    """The ``/api/`` routes bound to ``ctx``."""

    def guard(handler: Callable[[Request, str], Any], post: bool = False) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            user = ctx.user(request)
            if user is None:
                return JSONResponse(
                    {"error": "login required (session cookie from /login, or HTTP Basic)"}, status_code=401
                )
            if post and not ctx.csrf_ok(request):
                return JSONResponse({"error": "missing or wrong X-CSRF-Token"}, status_code=403)
            try:
                result = handler(request, user)
            except BadRequest as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    def study(request: Request, _: str) -> Any:
        found = admin.study_timeline(ctx.engine, str(request.path_params["study_uid"]))
        return found if found is not None else JSONResponse({"error": "no such study"}, status_code=404)

    def job_action(action: str) -> Callable[[Request, str], Any]:
        def run(request: Request, user: str) -> Any:
            job_id = _int_param(request, "job_id")
            ok, before = admin.change_job(ctx.config, job_id, action, engine=ctx.engine, user=user)
            return _action_reply(ok, before, "job")

        return run

    def retry_now(request: Request, user: str) -> Any:
        delivery_id = _int_param(request, "delivery_id")
        ok, before = admin.retry_delivery_now(ctx.engine, delivery_id, config=ctx.config, user=user)
        return _action_reply(ok, before, "delivery")

    def echo_route(request: Request, user: str) -> Any:
        name = str(request.path_params["name"])
        if name not in {d.name for d in ctx.config.destinations}:
            return JSONResponse({"done": False, "error": f"no destination {name!r}"}, status_code=404)
        ok, message = echo(ctx, name, user)
        return {"done": ok, "message": message}

    def config(_: Request, __: str) -> Any:
        running = ctx.config.model_dump(mode="json", include={"routes", "peers", "destinations"})
        return {**ctx.facts.config_state(), "running": running}

    def reload(_: Request, user: str) -> Any:
        if ctx.facts.reload is None:
            return JSONResponse({"done": False, "error": "this node cannot reload its config"}, status_code=409)
        ok, message = ctx.facts.reload(user)
        return JSONResponse({"done": ok, "message": message}, status_code=200 if ok else 422)

    gets: dict[str, Callable[[Request, str], Any]] = {
        "/api/status": lambda r, u: node_summary(ctx),
        "/api/me": lambda r, u: {"user": u, "csrf_token": (s.csrf if (s := ctx.session(r)) else None)},
        "/api/studies": lambda r, u: admin.study_rows(ctx.engine, limit=_limit(r, 50)),
        "/api/studies/{study_uid}": study,
        "/api/jobs": lambda r, u: admin.job_rows(
            ctx.engine, state=_choice(r, "state", JOB_STATES), limit=_limit(r, 50)
        ),
        "/api/deliveries": lambda r, u: admin.delivery_rows(
            ctx.engine,
            state=_choice(r, "state", DELIVERY_STATES),
            destination=r.query_params.get("destination"),
            limit=_limit(r, 100),
        ),
        "/api/events": lambda r, u: admin.event_rows(ctx.engine, kind=r.query_params.get("kind"), limit=_limit(r, 100)),
        "/api/config": config,
        "/api/openapi.json": lambda r, u: openapi_document(),
    }
    posts: dict[str, Callable[[Request, str], Any]] = {
        "/api/jobs/{job_id}/retry": job_action("retry"),
        "/api/jobs/{job_id}/rerun": job_action("rerun"),
        "/api/jobs/{job_id}/cancel": job_action("cancel"),
        "/api/deliveries/{delivery_id}/retry-now": retry_now,
        "/api/config/reload": reload,
        "/api/destinations/{name}/echo": echo_route,
    }
    return [
        *(Route(path, guard(h), methods=["GET"]) for path, h in gets.items()),
        *(Route(path, guard(h, post=True), methods=["POST"]) for path, h in posts.items()),
        Route("/api/route-test", partial(route_test, ctx), methods=["POST"]),
    ]
