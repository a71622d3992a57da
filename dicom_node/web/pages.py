"""The dashboard: small server-rendered HTML pages (no framework, no external assets) over the same
read-outs as the API, with forms for the admin actions (each carries the session's CSRF token).

Pages: overview (up / ready, version, queue, disk, recent problems, config file vs running config),
studies and a study's timeline, jobs (retry, cancel), deliveries (retry now), events (incl. the audit trail).
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from dicom_node import admin
from dicom_node.queue import JOB_STATES
from dicom_node.web.api import echo, node_summary
from dicom_node.web.auth import COOKIE, Session
from dicom_node.web.context import WebContext, client_address, read_form
from dicom_node.web.routetest import script

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#222}
header{background:#1f3b57;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#fff;text-decoration:none}header form{margin-left:auto}
main{padding:16px}table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef}
.bad{color:#a00;font-weight:bold}.ok{color:#070;font-weight:bold}.msg{background:#ffd;padding:6px}
td form{display:inline}code{font-size:12px}
"""
Renderer = Callable[[WebContext, Request, Session], str]  # a page's body, rendered in a worker thread
NAV = (
    ("/", "Overview"),
    ("/studies", "Studies"),
    ("/jobs", "Jobs"),
    ("/deliveries", "Deliveries"),
    ("/events", "Events"),
    ("/config", "Config"),
)


def esc(value: Any) -> str:
    """HTML-escaped text of a value (None as an empty cell)."""
    return "" if value is None else html.escape(str(value))


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], extra: Callable[[dict[str, Any]], str] | None = None
) -> str:
    """An HTML table of ``rows`` (dicts) showing ``columns``; ``extra`` renders a last cell (buttons)."""
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{esc(c)}</th>" for c in columns) + ("<th></th>" if extra else "")
    body = "".join(
        "<tr>"
        + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns)
        + (f"<td>{extra(r)}</td>" if extra else "")
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return esc(", ".join(f"{k} {v}" for k, v in value.items()))
    return esc(value)


def button(action: str, label: str, csrf: str, back: str) -> str:
    """A one-button POST form carrying the CSRF token and where to come back to."""
    return (
        f'<form method="post" action="{esc(action)}"><input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<input type="hidden" name="next" value="{esc(back)}"><button>{esc(label)}</button></form>'
    )


def page(title: str, body: str, session: Session | None, message: str | None = None) -> HTMLResponse:
    """A whole page: header with navigation and logout, an optional message, the body."""
    nav = "".join(f'<a href="{href}">{name}</a>' for href, name in NAV) if session else ""
    logout = (
        f'<form method="post" action="/logout"><input type="hidden" name="csrf" value="{esc(session.csrf)}">'
        f"{esc(session.user)} <button>Log out</button></form>"
        if session
        else ""
    )
    note = f'<p class="msg" id="message">{esc(message)}</p>' if message else ""
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)} - dicom-node</title>'
        f'<style>{STYLE}</style><script src="/ui/app.js"></script></head>'
        f"<body><header><b>dicom-node</b>{nav}{logout}</header>"
        f"<main><h1>{esc(title)}</h1>{note}{body}</main></body></html>"
    )


def _overview(ctx: WebContext, session: Session) -> str:
    s = node_summary(ctx)
    node = s["node"]
    ready = '<span class="ok">ready</span>' if node["ready"] else '<span class="bad">NOT ready</span>'
    why = "".join(f"<li>{esc(p)}</li>" for p in node["not_ready_because"])
    disk = shutil.disk_usage(ctx.config.node.storage).free / 1e9
    config = node["config"]
    config_line = ""
    if config:
        differs = config.get("file_differs")
        config_line = (
            f'<p id="config-state">config {esc(config.get("path"))}: '
            + (
                '<span class="bad">the file on disk differs from the running config</span> '
                if differs
                else "as running "
            )
            + (button("/ui/config/reload", "Reload config", session.csrf, "/") if ctx.facts.reload else "")
            + (
                f"<br>last reload {esc(last['at'])}: {esc(last['message'])}"
                if (last := config.get("last_reload"))
                else ""
            )
            + (f"<br>the file does not load: {esc(config['file_error'])}" if config.get("file_error") else "")
            + "</p>"
        )
    counts = [{"what": k, "counts": s[k]} for k in ("series", "jobs", "deliveries")] + [
        {"what": "studies", "counts": s["studies"]},
        {"what": "instances", "counts": s["instances"]},
    ]
    return (
        f"<p>{esc(node['ae_title'])} version {esc(node['version'])}, up {node['uptime_s']:.0f} s, receiver "
        f"{'listening' if node['receiver_listening'] else 'NOT listening'}: {ready}</p><ul>{why}</ul>"
        f"<p>storage disk: {disk:.1f} GB free</p>{config_line}"
        + table(counts, ["what", "counts"])
        + "<h2>Recent problems</h2>"
        + table(s["recent_problems"], ["at", "kind", "message", "calling_ae"])
        + "<h2>Dead jobs</h2>"
        + table(s["dead_jobs"], ["id", "route", "pipeline", "attempts", "error"])
        + "<h2>Unrouted series</h2>"
        + table(s["unrouted_series"], ["modality", "description", "instances", "why"])
    )


def _jobs_page(ctx: WebContext, request: Request, session: Session) -> str:
    state = request.query_params.get("state")
    rows = admin.job_rows(ctx.engine, state=state if state in JOB_STATES else None, limit=200)
    filters = " ".join(f'<a href="/jobs?state={s}">{s}</a>' for s in JOB_STATES)

    def actions(r: dict[str, Any]) -> str:
        out = ""
        if r["state"] in ("dead", "failed", "cancelled"):
            out += button(f"/ui/jobs/{r['id']}/retry", "Retry", session.csrf, "/jobs")
        if r["state"] == "succeeded":
            out += button(f"/ui/jobs/{r['id']}/rerun", "Re-run", session.csrf, "/jobs")
        if r["state"] in ("queued", "failed", "running"):
            out += button(f"/ui/jobs/{r['id']}/cancel", "Cancel", session.csrf, "/jobs")
        return out

    columns = [
        "id",
        "state",
        "attempts",
        "route",
        "pipeline",
        "patient_id",
        "accession",
        "study_uid",
        "summary",
        "last_error",
    ]
    return f'<p>filter: <a href="/jobs">all</a> {filters}</p>' + table(rows, columns, actions)


def _deliveries_page(ctx: WebContext, request: Request, session: Session) -> str:
    rows = admin.delivery_rows(ctx.engine, state=request.query_params.get("state"), limit=300)

    def actions(r: dict[str, Any]) -> str:
        if r["state"] in ("pending", "dead"):
            return button(f"/ui/deliveries/{r['id']}/retry-now", "Retry now", session.csrf, "/deliveries")
        return ""

    columns = ["id", "destination", "state", "attempts", "next_try", "give_up_at", "last_error", "kind", "sent"]
    return table(rows, columns, actions)


def _studies_page(ctx: WebContext, request: Request, session: Session) -> str:
    rows = admin.study_rows(ctx.engine, limit=200)
    return table(rows, ["patient_id", "accession", "first_seen", "last_seen", "series", "jobs"], _open_study)


def _study_page(ctx: WebContext, request: Request, session: Session) -> str:
    timeline = admin.study_timeline(ctx.engine, str(request.path_params["study_uid"]))
    if timeline is None:
        return "<p>no such study</p>"
    return (
        f"<p>patient {esc(timeline['patient_id'])}, accession {esc(timeline['accession'])}, "
        f"study <code>{esc(timeline['study_uid'])}</code>; first received {esc(timeline['first_seen'])}</p>"
        "<h2>Series (received, routed)</h2>"
        + table(
            timeline["series"],
            [
                "modality",
                "description",
                "calling_ae",
                "instances",
                "state",
                "first_received",
                "last_received",
                "routed",
                "routing_note",
            ],
        )
        + "<h2>Jobs</h2>"
        + table(
            timeline["jobs"],
            [
                "id",
                "state",
                "route",
                "pipeline",
                "attempts",
                "created",
                "started",
                "finished",
                "timings",
                "summary",
                "last_error",
            ],
        )
        + "<h2>Results</h2>"
        + table(timeline["results"], ["id", "job_id", "kind", "created"])
        + "<h2>Deliveries</h2>"
        + table(
            timeline["deliveries"],
            ["id", "destination", "kind", "state", "attempts", "next_try", "sent", "last_error"],
        )
    )


def _events_page(ctx: WebContext, request: Request, session: Session) -> str:
    rows = admin.event_rows(ctx.engine, kind=request.query_params.get("kind"), limit=300)
    for r in rows:
        r["details"] = json.dumps(r["details"]) if r["details"] else None
    return '<p><a href="/events?kind=admin">audit trail only</a></p>' + table(
        rows, ["at", "level", "kind", "message", "calling_ae", "details"]
    )


def _config_page(ctx: WebContext, request: Request, session: Session) -> str:
    config = ctx.config
    state = ctx.facts.config_state()
    differs = state.get("file_differs")
    head = (
        f'<p id="config-file">{esc(state.get("path", "(no file)"))}: '
        + ('<span class="bad">the file on disk differs from the running config</span>' if differs else "as running")
        + (f"<br>the file does not load: {esc(state['file_error'])}" if state.get("file_error") else "")
        + "</p>"
        + (button("/ui/config/reload", "Reload config", session.csrf, "/config") if ctx.facts.reload else "")
    )
    routes = [
        {
            "name": r.name,
            "match": ", ".join(f"{k}={v!r}" for k, v in r.match.items()) or "(everything)",
            "pipelines": ", ".join(r.pipelines),
            "destinations": ", ".join(r.destinations),
            "wait_for": r.wait_for,
            "priority": r.priority,
        }
        for r in config.routes
    ]
    dests = [
        {
            "name": d.name,
            "ae_title": d.ae_title,
            "address": f"{d.host}:{d.port}" + (" (TLS)" if d.tls else ""),
            "outputs": ", ".join(d.outputs),
            "retry_for_hours": d.retry_for_hours,
        }
        for d in config.destinations
    ]
    peers = [
        {"ae_title": p.ae_title, "host": p.host or "(any host)", "certificate": p.certificate_name or "(any)"}
        for p in config.peers
    ]

    def echo(row: dict[str, Any]) -> str:
        return button(f"/ui/destinations/{quote(row['name'])}/echo", "Echo", session.csrf, "/config")

    route_test = (
        '<p>Test the routes on a file: <input type="file" id="rt-file"> as calling AE <input id="rt-ae" size="16"> '
        f'<button id="rt-go" data-csrf="{esc(session.csrf)}">Test routes</button></p><pre id="rt-out"></pre>'
    )
    return (
        head
        + "<h2>Routes</h2>"
        + table(routes, ["name", "match", "pipelines", "destinations", "wait_for", "priority"])
        + route_test
        + "<h2>Destinations</h2>"
        + table(dests, ["name", "ae_title", "address", "outputs", "retry_for_hours"], echo)
        + "<h2>Peers (calling AEs allowed)</h2>"
        + (table(peers, ["ae_title", "host", "certificate"]) if peers or not config.node.accept_unknown_callers else "")
        + ("<p>any calling AE is accepted</p>" if config.node.accept_unknown_callers else "")
    )


def page_routes(ctx: WebContext) -> list[Route]:
    """The dashboard's routes bound to ``ctx``."""

    def authed(render: Renderer, title: Callable[[Request], str]) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            session = ctx.session(request)
            if session is None:
                return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)
            body = await run_in_threadpool(render, ctx, request, session)
            return page(title(request), body, session, request.query_params.get("msg"))

        return endpoint

    async def action(request: Request) -> Response:
        session = ctx.session(request)
        form = await read_form(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if not ctx.csrf_ok(request, form):
            return HTMLResponse("missing or wrong CSRF token", status_code=403)
        kind, ident, verb = (str(request.path_params.get(k, "")) for k in ("kind", "ident", "verb"))
        message = await run_in_threadpool(_act, ctx, session.user, kind, ident, verb)
        back = local_path(form.get("next", "/"))
        return RedirectResponse(f"{back}?msg={quote(message)}", status_code=303)

    def title_of(name: str) -> Callable[[Request], str]:
        return lambda _: name

    return [
        Route("/login", _login(ctx), methods=["GET", "POST"]),
        Route("/logout", _logout(ctx), methods=["POST"]),
        Route("/", authed(lambda c, r, s: _overview(c, s), title_of("Overview"))),
        Route("/studies", authed(_studies_page, title_of("Studies"))),
        Route("/studies/{study_uid}", authed(_study_page, title_of("Study"))),
        Route("/jobs", authed(_jobs_page, title_of("Jobs"))),
        Route("/deliveries", authed(_deliveries_page, title_of("Deliveries"))),
        Route("/events", authed(_events_page, title_of("Events and audit trail"))),
        Route("/config", authed(_config_page, title_of("Configuration"))),
        Route("/ui/app.js", script),
        Route("/ui/{kind}/{ident}/{verb}", action, methods=["POST"]),
        Route("/ui/{kind}/{verb}", action, methods=["POST"]),
    ]


def local_path(value: str) -> str:
    """``value`` if it is a path on this server, else ``/``: no redirect to another site (``//host``,
    ``/\\host``, a scheme)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value or any(ord(c) < 32 for c in value):
        return "/"
    return value


def _open_study(row: dict[str, Any]) -> str:
    return f'<a href="/studies/{quote(row["study_uid"])}">timeline</a>'


def _act(ctx: WebContext, user: str, kind: str, ident: str, verb: str) -> str:
    """Run one dashboard action; the message shown after it."""
    if kind == "config" and verb == "reload" and ctx.facts.reload is not None:
        return ctx.facts.reload(user)[1]
    if kind == "destinations" and verb == "echo":
        return echo(ctx, ident, user)[1]
    if not ident.isdigit():
        return f"not an id: {ident}"
    if kind == "jobs" and verb in ("retry", "rerun", "cancel"):
        ok, before = admin.change_job(ctx.config, int(ident), verb, engine=ctx.engine, user=user)
        what = f"job {ident}"
    elif kind == "deliveries" and verb == "retry-now":
        ok, before = admin.retry_delivery_now(ctx.engine, int(ident), config=ctx.config, user=user)
        what = f"delivery {ident}"
    else:
        return f"unknown action {kind}/{verb}"
    if before is None:
        return f"{what}: no such item"
    return f"{what}: {verb} done (was {before})" if ok else f"{what}: {verb} not possible while {before}"


def _login_form(next_path: str) -> str:
    return (
        '<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<p><label>User <input name="user" id="user" autocomplete="username" required></label></p>'
        '<p><label>Password <input name="password" id="password" type="password" autocomplete="current-password" '
        'required></label></p><p><button id="login">Log in</button></p></form>'
    )


def _login(ctx: WebContext) -> Callable[[Request], Any]:
    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page("Log in", _login_form(request.query_params.get("next", "/")), None)
        form = await read_form(request)
        address = client_address(request)
        next_path = local_path(form.get("next", "/"))
        if ctx.accounts.locked_out(address):
            reply = page("Log in", '<p class="bad">too many failed logins; try again later</p>', None)
            reply.status_code = 429
            return reply
        name = form.get("user", "")
        if not await run_in_threadpool(ctx.accounts.check, name, form.get("password", "")):
            ctx.accounts.failed(address)
            admin_note = (
                "" if ctx.accounts.users else "<p>No users are configured: add [[web.users]] to the config.</p>"
            )
            reply = page(
                "Log in",
                '<p class="bad" id="error">wrong user name or password</p>' + admin_note + _login_form(next_path),
                None,
            )
            reply.status_code = 401
            return reply
        token, _ = ctx.accounts.login(name)
        redirect = RedirectResponse(next_path, status_code=303)
        redirect.set_cookie(
            COOKIE,
            token,
            max_age=int(ctx.accounts.lifetime),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return redirect

    return login


def _logout(ctx: WebContext) -> Callable[[Request], Any]:
    async def logout(request: Request) -> Response:
        form = await read_form(request)
        if ctx.session(request) is not None and ctx.csrf_ok(request, form):
            ctx.accounts.logout(request.cookies.get(COOKIE))
        reply = RedirectResponse("/login", status_code=303)
        reply.delete_cookie(COOKIE)
        return reply

    return logout
