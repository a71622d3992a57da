"""Config loading: the example validates, and every error names its line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_config, parse_config
from dicom_node.intake.routing_check import load_checked_config, parse_checked_config

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid() -> None:
    config = load_checked_config(REPO / "config" / "node.example.toml")
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
        ("[node]\nport = 11112\n\n[web]\nenabled = true\nport = 11112\n", 6, "web.port: port 11112 is node.port too"),
    ],
)
def test_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_checked_config(text, Path("node.toml"))
    message = str(info.value)
    assert message.startswith(f"node.toml:{line}:"), message
    assert words in message


def test_route_options_are_checked_against_the_pipeline() -> None:
    good = "[[routes]]\nname = 'r'\npipelines = ['ct_lung_nodule']\n[routes.options.ct_lung_nodule]\nbundle = '/x'\n"
    assert parse_checked_config(good).routes[0].options == {"ct_lung_nodule": {"bundle": "/x"}}
    with pytest.raises(ConfigError, match="unexpected keyword argument 'bundel'"):
        parse_checked_config(good.replace("bundle =", "bundel ="))
    with pytest.raises(ConfigError, match="options must be a table per pipeline"):
        parse_checked_config(good.replace("options.ct_lung_nodule", "options.us_lung"))


def test_defaults_live_in_one_place() -> None:
    config = parse_config("")
    assert config.intake.quiet_period_s == 5.0
    assert config.node.max_pdu == 0
    assert config.routes == []


ROUTES = """\
[node]
ae_title = "NODE"

[[routes]]
name = "chest"
pipelines = ["ct_lung_field"]
match = { Modality = "CT" }

[[routes]]
name = "other"
pipelines = ["{pipeline}"]

[routes.match]
Modality = "CT"
{key} = "x"
"""


@pytest.mark.parametrize(
    ("key", "pipeline", "expected"),
    [
        ("FooBar", "ct_lung_field", "node.toml:15: routes.1.match.FooBar: match key 'FooBar': not a DICOM keyword"),
        ("SeriesDescription", "nope", "node.toml:9: routes.1: unknown pipeline 'nope' (known: "),
    ],
)
def test_routes_are_checked_when_the_file_is_loaded_for_use(
    tmp_path: Path, key: str, pipeline: str, expected: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(ROUTES.replace("{key}", key).replace("{pipeline}", pipeline))
    parse_config(path.read_text(), path)  # the file on its own is well formed: config.py does not know routing
    load_config(path)
    with pytest.raises(ConfigError) as info:
        load_checked_config(path)
    assert str(info.value).startswith(f"{tmp_path}/{expected}"), str(info.value)


def test_checked_config_counts_further_route_problems() -> None:
    text = ROUTES.replace("{key}", "FooBar").replace("{pipeline}", "nope").replace('Modality = "CT" }', "Bad = 1 }")
    with pytest.raises(ConfigError) as info:
        parse_checked_config(text, Path("node.toml"))
    assert str(info.value).startswith("node.toml:7: routes.0.match.Bad: match key 'Bad'"), str(info.value)
    assert str(info.value).endswith("(and 1 more problem(s))")


def test_config_module_imports_nothing_of_ours() -> None:
    code = (
        "import sys, dicom_node.config; "
        "print(sorted(m for m in sys.modules if m.startswith('dicom_node') or m in ('numpy', 'scipy', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "['dicom_node', 'dicom_node.config']"
