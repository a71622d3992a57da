"""Where the model bundles are: a site's own folder first (``[node] models``), else those shipped in the package.

The shipped bundles are package data (``dicom_node/models/<name>``; in a source checkout ``models/`` at the
top links to it), found through :mod:`importlib.resources`, so an installed wheel runs from any folder.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_bundle(name: str) -> Path:
    """The folder of the bundle ``name`` that ships inside the installed package."""
    return Path(str(files("dicom_node") / "models" / name))


def find_bundle(name: str, site_models: str | Path | None = None) -> Path:
    """``<site_models>/<name>`` when a site keeps its own bundle of that name there, else the shipped one."""
    if site_models:
        own = Path(site_models) / name
        if own.is_dir():
            return own
    return shipped_bundle(name)
