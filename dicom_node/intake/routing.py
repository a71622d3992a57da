"""Which routes a series matches, and why (shared by the stability sweep and ``dicom-node route-test``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicom_node.config import NodeConfig, Route
from dicom_node.intake.rules import ASSOCIATION_KEYS, attribute_value, explain


@dataclass(frozen=True)
class RouteCheck:
    """The verdict of one route on one series."""

    route: Route
    matched: bool
    reasons: list[str]


def series_attributes(header: Dataset, config: NodeConfig, **association: str | None) -> dict[str, Any]:
    """The attribute values the configured routes look at, taken from one instance's header."""
    keys = {k for route in config.routes for k in route.match if k not in ASSOCIATION_KEYS}
    attrs: dict[str, Any] = {k: attribute_value(header, k) for k in keys}
    attrs.update({k: v for k, v in association.items() if k in ASSOCIATION_KEYS})
    return attrs


def check_routes(config: NodeConfig, attributes: Mapping[str, Any]) -> list[RouteCheck]:
    """Every route's verdict, highest priority first (then config order)."""
    order = sorted(enumerate(config.routes), key=lambda item: (-item[1].priority, item[0]))
    checks = []
    for _, route in order:
        matched, reasons = explain(route.match, attributes)
        checks.append(RouteCheck(route, matched, reasons))
    return checks
