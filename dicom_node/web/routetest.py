"""``POST /api/route-test``: which routes a DICOM file would match, and why each other route does not (what
``dicom-node route-test`` prints), for a file uploaded from the dashboard. The body is the file itself
(``application/dicom``), at most :data:`MAX_BYTES`; only its header is read, nothing is stored."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicom_node.config import NodeConfig
from dicom_node.web.context import WebContext

MAX_BYTES = 64 * 1024 * 1024

SCRIPT = """
document.addEventListener("DOMContentLoaded", () => {
  const go = document.getElementById("rt-go");
  if (!go) return;
  go.addEventListener("click", async () => {
    const file = document.getElementById("rt-file").files[0];
    const out = document.getElementById("rt-out");
    if (!file) { out.textContent = "choose a DICOM file first"; return; }
    const ae = encodeURIComponent(document.getElementById("rt-ae").value);
    const reply = await fetch("/api/route-test?calling_ae=" + ae, {
      method: "POST", body: file,
      headers: {"Content-Type": "application/dicom", "X-CSRF-Token": go.dataset.csrf},
    });
    const body = await reply.json();
    if (!reply.ok) { out.textContent = body.error; return; }
    const verdicts = body.routes.map(
      r => (r.matched ? "+ " : "- ") + r.route + ": " + (r.reasons.join("; ") || "no conditions"));
    const head = body.matches.length ? "-> " + body.matches.join(", ") : "matches NO route (kept, listed as unrouted)";
    out.textContent = [head, ...verdicts].join("\\n");
  });
});
"""


def explain_file(config: NodeConfig, data: bytes, calling_ae: str) -> dict[str, Any]:
    """The routes' verdicts on one file's header; ``ValueError`` when it is not readable as DICOM."""
    from pydicom import dcmread

    from dicom_node.intake.routing import check_routes, series_attributes

    try:
        header = dcmread(BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # any parse failure is the uploader's problem, reported as such
        raise ValueError(f"not readable as DICOM: {type(exc).__name__}: {exc}") from None
    attrs = series_attributes(header, config, calling_ae=calling_ae, called_ae=config.node.ae_title)
    checks = check_routes(config, attrs)
    return {
        "matches": [c.route.name for c in checks if c.matched],
        "routes": [{"route": c.route.name, "matched": c.matched, "reasons": c.reasons} for c in checks],
    }


async def route_test(ctx: WebContext, request: Request) -> Response:
    """The endpoint: login (and the CSRF token with a session) as for every POST of the API."""
    user = await run_in_threadpool(ctx.user, request)
    if user is None:
        return JSONResponse({"error": "login required (session cookie from /login, or HTTP Basic)"}, status_code=401)
    if not ctx.csrf_ok(request):
        return JSONResponse({"error": "missing or wrong X-CSRF-Token"}, status_code=403)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BYTES:
            return JSONResponse({"error": f"the file is over {MAX_BYTES // 2**20} MiB"}, status_code=413)
    try:
        verdict = await run_in_threadpool(
            explain_file, ctx.config, bytes(body), request.query_params.get("calling_ae", "")
        )
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(verdict)


def script(_: Request) -> Response:
    """The dashboard's only script (served from here: the Content-Security-Policy allows no inline script)."""
    return Response(SCRIPT, media_type="text/javascript")
