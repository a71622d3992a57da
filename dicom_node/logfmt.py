"""Log line formats: the default text line, or one JSON object per line for log shippers.

The format is chosen by ``DICOM_NODE_LOG_FORMAT`` (``text`` or ``json``; ``serve --log-format`` sets it), an
environment variable so that the spawned worker and receiver processes log the same way as the main one.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

ENV = "DICOM_NODE_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``process``, ``logger``, ``message``
    and, for an exception, ``exception`` (the traceback text)."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": record.processName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def handler() -> logging.Handler:
    """A stderr handler in the format ``DICOM_NODE_LOG_FORMAT`` asks for (text when unset or unknown)."""
    out = logging.StreamHandler()
    out.setFormatter(JsonFormatter() if os.environ.get(ENV) == "json" else logging.Formatter(TEXT))
    return out
