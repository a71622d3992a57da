"""Model bundles: MONAI-bundle-layout folders, plus bring-your-own TorchScript / torch.export files.

A bundle folder looks like MONAI's::

    <bundle>/configs/metadata.json   version, intended use, inputs/outputs, "networks" (see below)
    <bundle>/models/model.pt         weights
    <bundle>/docs/README.md          model card

``models/model.pt`` is either our state file (``torch.save`` of ``{"format": STATE_FORMAT, "networks":
{name: {"builder": "module:function", "kwargs": {...}, "state_dict": {...}}}}``, loaded with
``weights_only=True`` so no code is unpickled) or a TorchScript archive (``torch.jit.save``), which is
then the bundle's single network, named by ``metadata["networks"][0]`` or "network".

A plain file (``.ts``, ``.pt``, ``.pt2``) is loaded as TorchScript, or as a ``torch.export`` program
(``.pt2``); it becomes a bundle with one network named "network" and empty metadata.

Builders must live in ``dicom_node.networks`` (a state file cannot name arbitrary code). State files written
before the package was renamed name ``dicom_node.nets.*`` builders; they load as the same ``networks`` module.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATE_FORMAT = "dicom-node-state-v1"
ALLOWED_BUILDER_PREFIX = "dicom_node.networks."
LEGACY_BUILDER_PREFIX = "dicom_node.nets."


@dataclass
class Bundle:
    """Loaded networks (eval mode, on ``device``) plus the bundle's metadata."""

    path: Path
    metadata: dict[str, Any]
    networks: dict[str, Any]
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    def network(self, name: str) -> Any | None:
        """The network called ``name``; None when the bundle has none of that name."""
        if name in self.networks:
            return self.networks[name]
        return None


def _builder(spec: str) -> Any:
    module_name, _, func = spec.partition(":")
    if module_name.startswith(LEGACY_BUILDER_PREFIX):
        module_name = ALLOWED_BUILDER_PREFIX + module_name[len(LEGACY_BUILDER_PREFIX) :]
    if not module_name.startswith(ALLOWED_BUILDER_PREFIX) or not func:
        raise ValueError(f"network builder {spec!r} is not in {ALLOWED_BUILDER_PREFIX}*")
    return getattr(importlib.import_module(module_name), func)


def save_state(path: Path, networks: dict[str, tuple[str, dict[str, Any], Any]]) -> None:
    """Write a state file: ``networks`` maps name -> (builder "module:function", kwargs, nn.Module)."""
    import torch

    payload = {
        "format": STATE_FORMAT,
        "networks": {
            name: {
                "builder": builder,
                "kwargs": kwargs,
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
            }
            for name, (builder, kwargs, module) in networks.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load_file(path: Path, device: str) -> dict[str, Any]:
    import torch

    if path.suffix == ".pt2":
        program = torch.export.load(str(path))
        return {"network": program.module()}
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location=device)
            return {"network": module.eval()}
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{path.name}: a TorchScript archive that does not load ({exc})") from exc
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(f"{path.name}: not a loadable model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path.name}: neither TorchScript, torch.export nor a {STATE_FORMAT} state file")
    nets: dict[str, Any] = {}
    for name, entry in state["networks"].items():
        net = _builder(str(entry["builder"]))(**dict(entry.get("kwargs") or {}))
        net.load_state_dict(entry["state_dict"])
        nets[str(name)] = net.to(device).eval()
    return nets


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding compiled ``code/``); a ``torch.save``
    state file is a zip without it, so it is never handed to the deprecated ``torch.jit.load``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_bundle(path: str | Path, device: str = "cpu") -> Bundle:
    """Load a bundle folder or a single TorchScript / torch.export / state file.

    Raises:
        FileNotFoundError: nothing at ``path`` or no ``models/model.pt`` (or ``model.ts``) in the folder.
        ValueError: the file is not a loadable model.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model bundle not found: {p}")
    if p.is_dir():
        meta_path = p / "configs" / "metadata.json"
        metadata: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        candidates = [p / "models" / "model.pt", p / "models" / "model.ts", p / "models" / "model.pt2"]
        weights = next((c for c in candidates if c.exists()), None)
        if weights is None:
            raise FileNotFoundError(f"{p}: no models/model.pt, model.ts or model.pt2")
        networks = _load_file(weights, device)
        names = metadata.get("networks")
        if list(networks) == ["network"] and isinstance(names, list) and names:
            networks = {str(names[0]): networks["network"]}
        return Bundle(path=p, metadata=metadata, networks=networks, device=device)
    return Bundle(path=p, metadata={"version": p.stem}, networks=_load_file(p, device), device=device)
