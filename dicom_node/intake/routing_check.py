"""Checks of a parsed config against the router's grammar and the pipeline registry.

:mod:`dicom_node.config` validates the file on its own (types, ranges, AE titles, destination names)
and imports nothing else of the package. What needs the rest of the node is checked here: every
route ``match`` key and pattern against :mod:`dicom_node.intake.rules`, every pipeline name and its
options against the pipeline registry (which imports the pipelines). Errors name the file's line the
same way: ``node.toml:42: routes.1.match.FooBar: ...``.

``load_checked_config`` / ``parse_checked_config`` are what loads a config for use (the CLI, the demo).
"""

from __future__ import annotations

from pathlib import Path

from dicom_node.config import NodeConfig, config_error, parse_config, read_config_text
from dicom_node.intake.rules import check_match

Problem = tuple[tuple[str | int, ...], str]  # (config path such as ("routes", 1, "match", "Foo"), message)


def route_problems(config: NodeConfig) -> list[Problem]:
    """What is wrong with the routes: bad ``match`` keys or patterns (the first per route), else the
    first unknown pipeline or bad pipeline option."""
    problems: list[Problem] = []
    for i, route in enumerate(config.routes):
        for key, spec in route.match.items():
            try:
                check_match(key, spec)
            except ValueError as exc:
                problems.append((("routes", i, "match", key), f"match key '{key}': {exc}"))
                break
    if problems:
        return problems
    problem = _pipeline_problem(config)
    return [problem] if problem else []


def _pipeline_problem(config: NodeConfig) -> Problem | None:
    from dicom_node.pipelines import available  # imports every shipped pipeline module
    from dicom_node.pipelines.base import check_options

    known = set(available())
    for i, route in enumerate(config.routes):
        for pipeline in route.pipelines:
            if pipeline not in known:
                return ("routes", i), f"unknown pipeline {pipeline!r} (known: {', '.join(sorted(known))})"
        for pipeline, options in route.options.items():
            try:
                check_options(pipeline, options)
            except ValueError as exc:
                return ("routes", i), str(exc)
    return None


def check_config(config: NodeConfig, text: str, path: Path = Path("<config>")) -> NodeConfig:
    """Return ``config`` if its routes pass; else raise :class:`~dicom_node.config.ConfigError` naming
    the line of ``text`` (the file ``config`` was parsed from) that holds the first problem."""
    problems = route_problems(config)
    if problems:
        loc, msg = problems[0]
        raise config_error(text, path, loc, msg, more=len(problems) - 1)
    return config


def parse_checked_config(text: str, path: Path = Path("<config>")) -> NodeConfig:
    """:func:`~dicom_node.config.parse_config`, then :func:`check_config`."""
    return check_config(parse_config(text, path), text, path)


def load_checked_config(path: str | Path) -> NodeConfig:
    """:func:`~dicom_node.config.load_config`, then :func:`check_config`: a config ready to serve."""
    path = Path(path)
    return parse_checked_config(read_config_text(path), path)
