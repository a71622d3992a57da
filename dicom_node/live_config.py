"""Live configuration: the running config compared with the file on disk, reloaded on SIGHUP or from the
dashboard, and the ``running.json`` marker through which ``dicom-node status`` sees the running node.

A reload reads and checks the whole file first (:func:`~dicom_node.intake.routing_check.load_checked_config`):
a bad file changes nothing, and the error, with its ``file:line``, is logged and kept for the status. A good
file's ``routes``, ``peers``, ``destinations`` and ``[[web.users]]`` replace the running ones; a change anywhere
else (``[node]``, the rest of ``[web]``, ``[queue]``, ...) needs a restart, is named as such, and the file keeps
"differing".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node import __version__
from dicom_node.config import ConfigError, NodeConfig, load_config

log = logging.getLogger(__name__)

RELOADABLE = ("routes", "peers", "destinations", "web.users")
MARKER = "running.json"


def digest(config: NodeConfig) -> str:
    """A fingerprint of a config's content (not of its file's spelling: comments and layout do not count)."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def changed_sections(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The top-level sections whose content differs."""
    return [name for name in NodeConfig.model_fields if getattr(old, name) != getattr(new, name)]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class LiveConfig:
    """The config file behind a running node: what it said when the running config was made, reloads."""

    def __init__(self, path: Path, from_file: NodeConfig, storage: Path) -> None:
        self.path = path.resolve()
        self.from_file = from_file  # the file's content the running config was made from
        self.marker = storage / MARKER
        self.last_reload: dict[str, Any] | None = None
        self.started = time.time()
        self._lock = threading.Lock()

    def state(self) -> dict[str, Any]:
        """For ``/api/config``, the dashboard and ``/readyz``: does the file differ, and what the last reload did."""
        out: dict[str, Any] = {"path": str(self.path), "loaded_digest": digest(self.from_file)}
        out.update(compare_file(self.path, digest(self.from_file)))
        out["last_reload"] = self.last_reload
        return out

    def reload(self, apply: Callable[[dict[str, Any]], None], who: str) -> tuple[bool, str]:
        """Check the file and apply its changed reloadable sections via ``apply({section: new value})``.

        Returns (applied, a message for the admin). A bad file leaves everything as it was.
        """
        from dicom_node.intake.routing_check import load_checked_config

        with self._lock:
            try:
                new = load_checked_config(self.path)
            except ConfigError as exc:
                message = f"config NOT reloaded ({who}), the running config stays: {exc}"
                log.error("%s", message)
                self.last_reload = {"at": _when(time.time()), "by": who, "ok": False, "message": message}
                self.write_marker()  # `status` shows the failed reload too
                return False, message
            changed = changed_sections(self.from_file, new)
            if "web" in changed and self.from_file.web.model_copy(update={"users": new.web.users}) == new.web:
                changed[changed.index("web")] = "web.users"  # accounts only: applied live
            live = [s for s in changed if s in RELOADABLE]
            later = [s for s in changed if s not in RELOADABLE]
            update = {name.split(".")[0]: getattr(new, name.split(".")[0]) for name in live}
            if live:
                apply(update)
                self.from_file = self.from_file.model_copy(update=update)
            message = (
                f"config reloaded ({who}): "
                + (", ".join(live) + " applied" if live else "nothing to apply")
                + (f"; {', '.join(later)} changed and need(s) a restart" if later else "")
            )
            log.info("%s", message)
            self.last_reload = {"at": _when(time.time()), "by": who, "ok": True, "message": message}
            self.write_marker()
            return True, message

    def write_marker(self) -> None:
        """Write ``running.json`` (pid, version, config path and fingerprint) for ``dicom-node status``."""
        body = {
            "pid": os.getpid(),
            "version": __version__,
            "started": _when(self.started),
            "config_path": str(self.path),
            "config_digest": digest(self.from_file),
            "last_reload": self.last_reload,
        }
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")
        tmp.replace(self.marker)

    def remove_marker(self) -> None:
        """The node stops: ``status`` must not report it up."""
        self.marker.unlink(missing_ok=True)


def compare_file(path: Path, running_digest: str) -> dict[str, Any]:
    """Whether the config file at ``path`` says something else than the config whose digest is given."""
    try:
        on_disk = load_config(path)
    except ConfigError as exc:
        return {"file_differs": True, "file_error": str(exc)}
    return {"file_differs": digest(on_disk) != running_digest}


def running_node(storage: Path) -> dict[str, Any] | None:
    """What ``running.json`` says about the node serving from ``storage`` (None: no node runs there), plus
    whether its config file now differs from what it runs."""
    try:
        body: dict[str, Any] = json.loads((storage / MARKER).read_text(encoding="utf-8"))
        os.kill(int(body["pid"]), 0)  # raises if no such process
    except (OSError, ValueError, KeyError, TypeError):
        return None
    body.update(compare_file(Path(body["config_path"]), str(body["config_digest"])))
    return body
