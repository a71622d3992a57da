"""The routing-rule grammar: how a route's ``match`` table is checked against a series.

Keys are DICOM keywords (``Modality``, ``SeriesDescription``, ``ImageType``, ``SliceThickness``...) or
the association's ``calling_ae`` / ``called_ae``. Values:

* a string: case-insensitive equality; with ``*``, ``?`` or ``[`` a glob; ``re:`` a regular expression
  (searched); a leading ``not:`` negates any of these;
* a number: numeric equality; a table ``{min = .., max = ..}``: an inclusive numeric range;
* ``true`` / ``false``: the attribute is present (non-empty) / absent;
* a list: any of its items matches.

Multi-valued attributes (``ImageType``) match when any single value matches, or the whole
backslash-joined value does.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

ASSOCIATION_KEYS = ("calling_ae", "called_ae")


def check_match(key: str, spec: Any) -> None:
    """Raise ValueError if ``key = spec`` is not a valid rule."""
    if key not in ASSOCIATION_KEYS and tag_for_keyword(key) is None:
        raise ValueError(f"not a DICOM keyword nor one of {', '.join(ASSOCIATION_KEYS)}")
    for item in spec if isinstance(spec, list) else [spec]:
        if isinstance(item, str):
            pattern = item.removeprefix("not:")
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"bad regular expression {pattern[3:]!r}: {exc}") from None


def match_keys(routes_match: list[Mapping[str, Any]]) -> set[str]:
    """The DICOM keywords the given match tables look at (the receiver records these per series)."""
    return {k for m in routes_match for k in m if k not in ASSOCIATION_KEYS}


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    text = str(value).strip()
    return [text] if text else []


def _match_one(spec: Any, value: Any) -> bool:
    if isinstance(spec, bool):
        return bool(_values(value)) is spec
    if isinstance(spec, list):
        return any(_match_one(item, value) for item in spec)
    if isinstance(spec, (int, float)):
        return any(_as_float(v) == float(spec) for v in _values(value))
    if isinstance(spec, str):
        if spec.startswith("not:"):
            return not _match_one(spec[4:], value)
        values = _values(value)
        joined = "\\".join(values)
        if spec.startswith("re:"):
            return re.search(spec[3:], joined) is not None
        if any(c in spec for c in "*?["):
            return any(fnmatch.fnmatchcase(v.upper(), spec.upper()) for v in [*values, joined])
        return any(v.upper() == spec.strip().upper() for v in [*values, joined])
    low = getattr(spec, "min", None)
    high = getattr(spec, "max", None)
    for v in _values(value):
        number = _as_float(v)
        if number is None:
            continue
        if (low is None or number >= low) and (high is None or number <= high):
            return True
    return False


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def explain(match: Mapping[str, Any], attributes: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Check a match table against a series' attributes; returns (matched, one reason per key)."""
    ok = True
    reasons: list[str] = []
    for key, spec in match.items():
        value = attributes.get(key)
        hit = _match_one(spec, value)
        ok = ok and hit
        shown = "\\".join(_values(value)) or "(absent)"
        spec_text = spec.model_dump(exclude_none=True) if hasattr(spec, "model_dump") else spec
        reasons.append(f"{key}={shown!r} {'matches' if hit else 'does not match'} {spec_text!r}")
    return ok, reasons


def attribute_value(dataset: Any, keyword: str) -> Any:
    """A JSON-friendly value of ``keyword`` in a pydicom dataset (lists for multi-valued)."""
    if keyword not in dataset:
        return None
    value = dataset.get(keyword)
    if value is None:
        return None
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        return None
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return [str(v) for v in value]
    if isinstance(value, bytes):
        return None
    return str(value)
