"""Model bundles: state files, TorchScript and torch.export files, refusal of foreign builders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from dicom_node.networks.bundle import load_bundle, save_state
from dicom_node.networks.resmtnet import build_resmtnet
from dicom_node.networks.unet2d import build_unet2d

torch.set_num_threads(1)


def test_state_bundle_round_trip(tmp_path: Path) -> None:
    unet = build_unet2d().eval()
    save_state(tmp_path / "models" / "model.pt", {"unet": ("dicom_node.networks.unet2d:build_unet2d", {}, unet)})
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"version": "9.9.9"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # a state file never goes near torch.jit.load
        bundle = load_bundle(tmp_path)
    assert bundle.version == "9.9.9"
    loaded = bundle.network("unet")
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), unet(x), atol=1e-5)


def test_torchscript_file_and_folder(tmp_path: Path) -> None:
    net = build_resmtnet().eval()
    scripted = torch.jit.trace(build_unet2d().eval(), torch.rand(1, 3, 32, 32))
    path = tmp_path / "site_unet.ts"
    torch.jit.save(scripted, str(path))
    bundle = load_bundle(path)
    assert list(bundle.networks) == ["network"]
    folder = tmp_path / "b"
    (folder / "models").mkdir(parents=True)
    (folder / "configs").mkdir()
    torch.jit.save(scripted, str(folder / "models" / "model.ts"))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "2", "networks": ["unet"]}))
    assert load_bundle(folder).network("unet") is not None
    assert net is not None


def test_torch_export_file(tmp_path: Path) -> None:
    net = build_unet2d().eval()
    program = torch.export.export(net, (torch.rand(1, 3, 32, 32),))
    path = tmp_path / "unet.pt2"
    torch.export.save(program, str(path))
    out = load_bundle(path).network("network")(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 1, 32, 32)


def test_foreign_builder_refused(tmp_path: Path) -> None:
    entry = {"builder": "os:system", "kwargs": {}, "state_dict": {}}
    payload = {"format": "dicom-node-state-v1", "networks": {"x": entry}}
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"not in dicom_node\.networks"):
        load_bundle(tmp_path / "model.pt")


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        load_bundle(tmp_path / "empty")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises((ValueError, RuntimeError)):
        load_bundle(tmp_path / "junk.pt")


def test_state_file_from_before_the_rename_loads(tmp_path: Path) -> None:
    """State files written when the package was ``dicom_node.nets`` name their builders so; they still load."""
    net = build_unet2d()
    save_state(tmp_path / "models" / "model.pt", {"unet": ("dicom_node.nets.unet2d:build_unet2d", {}, net)})
    bundle = load_bundle(tmp_path)
    assert type(bundle.networks["unet"]) is type(net)
