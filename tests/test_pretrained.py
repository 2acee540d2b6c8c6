"""train --pretrained: a local file, or a hub name timm resolves; a backbone keeps its own input
normalisation and takes grey weights. Nothing here downloads: the network is refused."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from fercure.train import augment
from fercure.train.config import TrainConfig
from fercure.train.loop import predict
from fercure.train.model import FerNet, PretrainedWeightsError, build_model, is_hub_name, load_pretrained
from tests.test_cli_chain import invoke


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: huggingface_hub offline with an empty cache, and any socket connect refused."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*a, **k):
        raise OSError("network refused in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_pretrained_value_is_a_file_or_a_hub_name(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    assert not is_hub_name(str(weights))
    assert not is_hub_name("missing.pt")  # a file name, even absent: the file check says so
    assert not is_hub_name("./resnet18")
    assert is_hub_name("resnet18.a1_in1k")
    assert is_hub_name("hf-hub:timm/resnet18.a1_in1k")
    assert is_hub_name("timm/resnet18.a1_in1k")


def test_hub_name_offline_says_how_to_pass_a_local_file(offline):
    config = TrainConfig(backbone="resnet18", pretrained="resnet18.a1_in1k", image_size=32, device="cpu")
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(config, 3)
    message = str(err.value)
    assert "resnet18.a1_in1k" in message
    assert "--pretrained weights.pth --backbone resnet18.a1_in1k" in message


def test_train_command_with_hub_name_offline_exits_with_the_hint(offline, tmp_path, small_workspace):
    ws, _ = small_workspace(tmp_path / "ws", 12, size=24)
    result = invoke("train", "-w", ws.root, "--pretrained", "hf-hub:timm/resnet18.a1_in1k", "--epochs", "1",
                    "--device", "cpu", code=1)
    assert "Cannot get the pretrained weights 'hf-hub:timm/resnet18.a1_in1k'" in result.output
    assert "--pretrained weights.pth" in result.output
    assert not list((ws.root / "runs").glob("*/predictions.parquet")) if (ws.root / "runs").exists() else True


def test_hub_name_beside_another_backbone_is_refused(tmp_path, small_workspace):
    ws, _ = small_workspace(tmp_path / "ws", 12, size=24)
    result = invoke("train", "-w", ws.root, "--pretrained", "resnet18.a1_in1k", "--backbone", "resnet34",
                    "--device", "cpu", code=1)
    assert "weights for resnet18, not for --backbone resnet34" in result.output


def test_named_backbone_keeps_its_own_normalisation(tmp_path):
    """Weights for a backbone that was trained on (x - 0.5) / 0.5 get that input, not ImageNet's."""
    name = "vit_tiny_patch16_224.augreg_in21k"
    path = tmp_path / "vit.pth"
    torch.save(FerNet(name, 3, image_size=32).backbone.state_dict(), path)
    config = TrainConfig(backbone=name, image_size=32, device="cpu", pretrained=str(path))
    vit = build_model(config, 3)
    assert vit.mean == pytest.approx((0.5, 0.5, 0.5)) and vit.std == pytest.approx((0.5, 0.5, 0.5))
    cnn = FerNet("resnet10t", 3)
    assert cnn.mean == pytest.approx(augment.MEAN) and cnn.std == pytest.approx(augment.STD)
    # What the backbone receives: a mid-grey crop (128) is ~0 under (0.5, 0.5), not ImageNet's 0.1-0.3.
    seen = []
    vit.backbone.patch_embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    predict(vit, np.full((2, 32, 32, 3), 128, np.uint8), config)
    assert float(seen[0].mean()) == pytest.approx((128 / 255 - 0.5) / 0.5, abs=1e-4)


def test_grey_first_conv_weights_fit_the_rgb_backbone(tmp_path):
    """A local state dict from a one-channel (grey) model loads into the RGB backbone: a grey crop
    (R = G = B, as prepare stores grey faces) gives the response of the grey weights."""
    config = TrainConfig(backbone="resnet10t", image_size=32, device="cpu")
    src = build_model(config, 3).backbone.state_dict()
    first = "conv1.0.weight"  # resnet10t's stem (timm's pretrained_cfg first_conv: conv1.0)
    grey_w = torch.randn(src[first].shape[0], 1, *src[first].shape[2:])
    path = tmp_path / "grey.pth"
    torch.save({**src, first: grey_w}, path)
    model = build_model(TrainConfig(backbone="resnet10t", image_size=32, device="cpu", pretrained=str(path)), 3)
    loaded = model.backbone.state_dict()[first]
    assert loaded.shape[1] == 3
    grey = torch.rand(1, 1, 16, 16)
    rgb_out = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), loaded, padding=1)
    grey_out = torch.nn.functional.conv2d(grey, grey_w, padding=1)
    assert torch.allclose(rgb_out, grey_out, atol=1e-5)


def test_local_state_dict_still_loads_without_network(offline, tmp_path):
    config = TrainConfig(backbone="resnet10t", image_size=32, device="cpu")
    src = build_model(config, 3).backbone
    path = tmp_path / "w.pth"
    torch.save({"model": src.state_dict()}, path)  # a timm-style checkpoint
    dst = build_model(TrainConfig(backbone="resnet10t", image_size=32, device="cpu", pretrained=str(path)), 3)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k])
    assert load_pretrained(dst.backbone, path) == []
