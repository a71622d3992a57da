"""The OpenAPI 3.1 document of the node's HTTP face (hand-written; a unit test checks it names every route)."""

from __future__ import annotations

from typing import Any

from dicom_node import __version__


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def _list_of(ref: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}}


def _query(name: str, description: str, enum: list[str] | None = None, integer: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 1000} if integer else {"type": "string"}
    if enum:
        schema["enum"] = enum
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _path(name: str, integer: bool = True) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer" if integer else "string"}}


LIMIT = _query("limit", "at most this many rows", integer=True)
ERRORS = {
    "400": _ok("a parameter the API cannot use", {"$ref": "#/components/schemas/Error"}),
    "401": _ok("no login", {"$ref": "#/components/schemas/Error"}),
}
ACTION = {
    "200": _ok("done", {"$ref": "#/components/schemas/Action"}),
    "403": _ok("a session cookie without its CSRF token", {"$ref": "#/components/schemas/Error"}),
    "404": _ok("no such item", {"$ref": "#/components/schemas/Error"}),
    "409": _ok("not possible in the item's current state", {"$ref": "#/components/schemas/Action"}),
    **ERRORS,
}


def _get(summary: str, reply: dict[str, Any], *params: dict[str, Any], public: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": list(params), "responses": {"200": reply, **ERRORS}}
    if public:
        op["security"] = []
        op["responses"] = {"200": reply}
    return {"get": op}


def _post(summary: str, *params: dict[str, Any]) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": list(params), "responses": ACTION}}


def _schemas() -> dict[str, Any]:
    text, number, nullable = {"type": "string"}, {"type": "integer"}, {"type": ["string", "null"]}
    counts = {"type": "object", "additionalProperties": {"type": "integer"}}
    return {
        "Error": {"type": "object", "properties": {"error": text}, "required": ["error"]},
        "Action": {
            "type": "object",
            "properties": {"done": {"type": "boolean"}, "was": text, "error": text, "message": text},
            "required": ["done"],
        },
        "Job": {
            "type": "object",
            "properties": {
                "id": number,
                "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "dead", "cancelled"]},
                "attempts": number,
                "route": text,
                "pipeline": text,
                "patient_id": nullable,
                "accession": nullable,
                "study_uid": text,
                "series_uid": text,
                "summary": nullable,
                "last_error": nullable,
            },
        },
        "Delivery": {
            "type": "object",
            "properties": {
                "id": number,
                "destination": text,
                "state": {"type": "string", "enum": ["pending", "sent", "dead"]},
                "attempts": number,
                "next_try": nullable,
                "give_up_at": nullable,
                "last_error": nullable,
                "kind": text,
                "study_uid": text,
            },
        },
        "Study": {
            "type": "object",
            "properties": {
                "study_uid": text,
                "patient_id": nullable,
                "accession": nullable,
                "series": counts,
                "jobs": counts,
            },
        },
        "Event": {
            "type": "object",
            "properties": {"id": number, "at": text, "level": text, "kind": text, "message": text},
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document served at ``/api/openapi.json``."""
    paths = {
        "/healthz": _get("alive: version, uptime, receiver listening", _ok("alive"), public=True),
        "/readyz": _get("ready to take studies (503 with the reasons otherwise)", _ok("ready"), public=True),
        "/metrics": _get(
            "Prometheus metrics",
            {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            public=True,
        ),
        "/api/status": _get("what `dicom-node status --json` shows, plus version, uptime, readiness", _ok("status")),
        "/api/me": _get("the logged-in user and the session's CSRF token", _ok("user")),
        "/api/studies": _get("studies, newest first", _ok("studies", _list_of("Study")), LIMIT),
        "/api/studies/{study_uid}": _get(
            "one study's timeline: series, jobs, results, deliveries", _ok("timeline"), _path("study_uid", False)
        ),
        "/api/jobs": _get(
            "jobs with patient, accession and study",
            _ok("jobs", _list_of("Job")),
            _query(
                "state", "only jobs in this state", ["queued", "running", "succeeded", "failed", "dead", "cancelled"]
            ),
            LIMIT,
        ),
        "/api/jobs/{job_id}/retry": _post("give a dead, failed or cancelled job fresh attempts", _path("job_id")),
        "/api/jobs/{job_id}/rerun": _post(
            "run a succeeded job again (same results are not sent twice)", _path("job_id")
        ),
        "/api/jobs/{job_id}/cancel": _post("cancel a queued, failed or running job", _path("job_id")),
        "/api/deliveries": _get(
            "deliveries: attempts, next try, last error",
            _ok("deliveries", _list_of("Delivery")),
            _query("state", "only deliveries in this state", ["pending", "sent", "dead"]),
            _query("destination", "only this destination"),
            LIMIT,
        ),
        "/api/deliveries/{delivery_id}/retry-now": _post(
            "send a pending delivery at the next tick; a dead one is given a new retry period", _path("delivery_id")
        ),
        "/api/events": _get(
            "events, incl. the audit trail (kind admin)",
            _ok("events", _list_of("Event")),
            _query("kind", "only this kind"),
            LIMIT,
        ),
        "/api/config": _get(
            "the running routes, peers and destinations, and the file on disk compared with them", _ok("config state")
        ),
        "/api/destinations/{name}/echo": _post(
            "C-ECHO a configured destination as the node (done: it answered Success)", _path("name", False)
        ),
        "/api/config/reload": _post("reload routes, peers and destinations from the config file"),
        "/api/openapi.json": _get("this document", _ok("OpenAPI document")),
        "/api/route-test": {
            "post": {
                "summary": "which routes a DICOM file (the body) would match, and why each other route does not",
                "parameters": [_query("calling_ae", "pretend the file came from this calling AE")],
                "requestBody": {
                    "required": True,
                    "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {
                    "200": _ok("the routes' verdicts"),
                    "403": _ok("a session cookie without its CSRF token", {"$ref": "#/components/schemas/Error"}),
                    "413": _ok("the file is too large", {"$ref": "#/components/schemas/Error"}),
                    **ERRORS,
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "dicom-node", "version": __version__, "description": "The node's HTTP face."},
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "dn_session"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        "security": [{"session": []}, {"basic": []}],
    }
