import socket

import pytest
import torch
import torchvision

from cxr_model.network import WeightsUnavailableError, build_model


@pytest.mark.parametrize(
    "backbone",
    [
        "densenet161",
        "densenet121",
        "densenet169",
        "resnet50",
        "mobilenet_v2",
        "efficientnet_b0",
    ],
)
def test_backbones_get_a_head_sized_to_the_labels(backbone):
    model = build_model(backbone, 5, "none").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert model.head.out_features == 5
    assert model.gradcam_layer() is not None


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="unsupported backbone"):
        build_model("alexnet9000", 4)


def test_local_torchvision_state_dict_is_loaded_without_its_imagenet_head(tmp_path):
    source = torchvision.models.densenet121(weights=None)
    path = tmp_path / "densenet121.pth"
    torch.save(source.state_dict(), path)
    model = build_model("densenet121", 4, str(path))
    for key, value in source.features.state_dict().items():
        assert torch.equal(model.backbone.features.state_dict()[key], value)


def test_old_densenet_key_names_are_remapped(tmp_path):
    source = torchvision.models.densenet121(weights=None)
    legacy = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in source.state_dict().items()}
    assert any(".norm.1." in k for k in legacy)
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    model = build_model("densenet121", 4, str(path))
    key = "features.denseblock1.denselayer1.norm1.weight"
    assert torch.equal(model.backbone.state_dict()[key], source.state_dict()[key])


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="does not match"):
        build_model("densenet121", 4, str(path))
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_model("densenet121", 4, str(tmp_path / "missing.pth"))


def _online() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="only meaningful offline")
def test_imagenet_weights_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="offline"):
        build_model("densenet121", 4, "imagenet")
