"""Checks of written DICOM objects with external tools (dicom3tools, dcmtk) and reference walking."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset


def require_tool(name: str) -> str:
    """Path of an installed command-line tool, or skip the test."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@dataclass
class Verdict:
    """What dciodvfy said about one file."""

    path: Path
    iod: str
    errors: list[str]
    warnings: list[str]

    def unexplained(self, accepted: dict[str, str]) -> list[str]:
        """Warnings that match none of the ``accepted`` regular expressions (pattern -> reason)."""
        return [w for w in self.warnings if not any(re.search(p, w) for p in accepted)]


def dciodvfy(path: Path) -> Verdict:
    """Run dciodvfy on ``path`` and split its output into errors and warnings."""
    proc = subprocess.run(
        [require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    iods = [ln for ln in lines if ln and not ln.startswith(("Error", "Warning"))]
    return Verdict(path, iods[0] if iods else "", errors, warnings)


def dsrdump(path: Path, *options: str) -> str:
    """dcmtk's dsrdump text of an SR file."""
    proc = subprocess.run(
        [require_tool("dsrdump"), *options, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


NON_INSTANCE_REFERENCES = frozenset({"ReferencedStudySequence", "ReferencedPatientSequence"})
"""Patient/study-level references (to retired study management SOPs), copied from the source."""


def referenced_uids(ds: Dataset) -> set[str]:
    """Every Referenced SOP Instance UID of a composite instance anywhere in ``ds`` (nested included)."""
    found: set[str] = set()

    def visit(item: Dataset) -> None:
        for elem in item:
            if elem.keyword == "ReferencedSOPInstanceUID":
                found.add(str(elem.value))
            elif elem.VR == "SQ" and elem.keyword not in NON_INSTANCE_REFERENCES:
                for sub in elem.value:
                    visit(sub)

    visit(ds)
    return found


def keywords(items: Iterable[Dataset]) -> set[str]:
    """Union of the top-level keywords of ``items``."""
    return {elem.keyword for ds in items for elem in ds if elem.keyword}


MEASUREMENT_GROUP = "125007"
TRACKING_UID = "112040"
REFERENCED_SEGMENT = "121191"


def concept(item: Dataset) -> str:
    """The code value of an SR content item's concept name."""
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def sr_items(items: object) -> list[Dataset]:
    """Every SR content item below ``items`` (a ContentSequence), depth first."""
    out: list[Dataset] = []
    for item in items or []:  # type: ignore[attr-defined]
        out.append(item)
        out.extend(sr_items(item.get("ContentSequence")))
    return out


def unlocated_groups(sr: Dataset) -> list[Dataset]:
    """TID 1500 measurement groups without a tracking UID or an image region / referenced segment
    (OHIF's SR loader crashes on those, issue 21)."""
    bad: list[Dataset] = []
    for group in sr_items(sr.ContentSequence):
        if group.ValueType != "CONTAINER" or concept(group) != MEASUREMENT_GROUP:
            continue
        children = sr_items(group.get("ContentSequence"))
        tracked = any(c.ValueType == "UIDREF" and concept(c) == TRACKING_UID for c in children)
        located = any(
            c.ValueType in ("SCOORD", "SCOORD3D") or (c.ValueType == "IMAGE" and concept(c) == REFERENCED_SEGMENT)
            for c in children
        )
        if not (tracked and located):
            bad.append(group)
    return bad
