"""The node's HTTP face inside ``dicom-node serve`` (``[web]``).

- ``probes``: ``/healthz``, ``/readyz`` and ``/metrics`` (no login);
- ``auth``: password hashes, sessions, CSRF tokens; ``context``: what the handlers share;
- ``api``: the JSON REST API under ``/api/``; ``openapi``: its OpenAPI document;
- ``pages``: the server-rendered dashboard; ``server``: the Starlette app and the uvicorn thread.
"""

from dicom_node.web.probes import NodeFacts, readiness_problems
from dicom_node.web.server import WebServer, build_app

__all__ = ["NodeFacts", "WebServer", "build_app", "readiness_problems"]
