"""Config loading: the example validates, and every error names its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid() -> None:
    config = load_config(REPO / "config" / "node.example.toml")
    assert config.node.ae_title == "DICOM_NODE"
    assert config.node.storage == (REPO / "storage").resolve()
    assert config.node.database_url().startswith("sqlite:///")
    assert {r.name for r in config.routes} >= {"chest-ct"}
    assert config.destination("pacs").outputs == ["seg", "sr"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[node]\nae_title = 'X'\nport = 70000\n", 3, "node.port"),
        ("[node]\nae_title = 'A\\\\B'\n", 2, "AE title"),
        ("[node]\nport = 1\nnonsense = 2\n", 3, "Extra inputs"),
        ("[node]\nport = [\n", 2, "TOML syntax"),
        (
            "[[routes]]\nname = 'r'\npipelines = ['ct_lung_field']\n[routes.match]\nModality = 'CT'\nBogusKey = 1\n",
            6,
            "BogusKey",
        ),
        (
            "[[routes]]\nname = 'r'\npipelines = ['ct_lung_field']\n[routes.match]\nSeriesDescription = 're:(['\n",
            5,
            "regular expression",
        ),
        (
            "[[routes]]\nname = 'r'\npipelines = ['ct_lung_field']\n\n[[routes]]\nname = 's'\npipelines = ['nope']\n",
            5,
            "unknown pipeline 'nope'",
        ),
        (
            "[[routes]]\nname = 'r'\npipelines = ['ct_lung_field']\ndestinations = ['pacs']\n",
            1,
            "unknown destination 'pacs'",
        ),
        (
            "[[routes]]\nname = 'r'\npipelines = ['ct_lung_field']\n"
            "[routes.match]\nSliceThickness = {min = 5, max = 1}\n",
            5,
            "above max",
        ),
    ],
)
def test_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("node.toml"))
    message = str(info.value)
    assert message.startswith(f"node.toml:{line}:"), message
    assert words in message


def test_route_options_are_checked_against_the_pipeline() -> None:
    good = "[[routes]]\nname = 'r'\npipelines = ['ct_lung_nodule']\n[routes.options.ct_lung_nodule]\nbundle = '/x'\n"
    assert parse_config(good).routes[0].options == {"ct_lung_nodule": {"bundle": "/x"}}
    with pytest.raises(ConfigError, match="unexpected keyword argument 'bundel'"):
        parse_config(good.replace("bundle =", "bundel ="))
    with pytest.raises(ConfigError, match="options must be a table per pipeline"):
        parse_config(good.replace("options.ct_lung_nodule", "options.us_lung"))


def test_defaults_live_in_one_place() -> None:
    config = parse_config("")
    assert config.intake.quiet_period_s == 5.0
    assert config.node.max_pdu == 0
    assert config.routes == []
