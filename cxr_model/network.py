"""torchvision backbones with a new classification head.

``CXRNet`` keeps the torchvision backbone (its own head replaced by
``Identity``, so it returns pooled features) and a separate ``head``. Keeping
them apart lets stage-1 training run the frozen backbone without autograd and
train only the head, and gives Grad-CAM a stable layer to hook.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision
from torch import nn

SUPPORTED_BACKBONES = (
    "densenet161",
    "densenet121",
    "densenet169",
    "densenet201",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "convnext_tiny",
)

# Old torchvision DenseNet checkpoints name layers "norm.1"; current modules say "norm1".
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, or a bad path)."""


class CXRNet(nn.Module):
    def __init__(self, backbone_name: str, backbone: nn.Module, num_features: int, num_outputs: int):
        super().__init__()
        self.backbone_name = backbone_name
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled backbone features the out-of-scope gate measures."""
        features = self.backbone(x)
        return self.head(features), features

    def gradcam_layer(self) -> nn.Module:
        """The last spatial feature block: DenseNet's last dense block by default."""
        features = getattr(self.backbone, "features", None)
        if features is not None and hasattr(features, "denseblock4"):
            return features.denseblock4
        if hasattr(self.backbone, "layer4"):
            return self.backbone.layer4
        if isinstance(features, nn.Sequential):
            return features[-1]
        raise ValueError(f"no Grad-CAM layer known for {self.backbone_name}")


def _detach_head(name: str, model: nn.Module) -> int:
    """Replace torchvision's head with Identity in place; return its input width."""
    if name.startswith("densenet"):
        width = model.classifier.in_features
        model.classifier = nn.Identity()
    elif name.startswith("resnet"):
        width = model.fc.in_features
        model.fc = nn.Identity()
    elif isinstance(getattr(model, "classifier", None), nn.Sequential):
        # mobilenet / efficientnet / convnext: keep dropout and norms, drop the Linear.
        width = model.classifier[-1].in_features
        model.classifier[-1] = nn.Identity()
    else:
        raise ValueError(f"unsupported backbone {name!r}; supported: {', '.join(SUPPORTED_BACKBONES)}")
    return width


def _load_local_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {_DENSENET_KEY.sub(r"\1\2", key): value for key, value in state.items()}
    own_head = {k for k in state if k.startswith(("classifier.", "fc."))}
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in own_head}, strict=False)
    # The ImageNet head is dropped on purpose; anything else missing is a wrong file.
    missing = [k for k in missing if not k.startswith(("classifier.", "fc."))]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{path} does not match the backbone: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def build_model(backbone: str, num_outputs: int, weights: str = "none") -> CXRNet:
    """A torchvision backbone by name with a fresh ``num_outputs``-wide head.

    ``weights``: ``imagenet`` (torchvision's weights enum; downloads, so it needs
    internet or a primed ``$TORCH_HOME`` cache), a local ``.pth``/``.pt`` state
    dict of the torchvision model, or ``none`` for random initialisation.
    """
    if backbone not in SUPPORTED_BACKBONES:
        raise ValueError(f"unsupported backbone {backbone!r}; supported: {', '.join(SUPPORTED_BACKBONES)}")
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(backbone).DEFAULT
        try:
            model = torchvision.models.get_model(backbone, weights=enum)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"could not fetch ImageNet weights {enum} ({exc.__class__.__name__}: {exc}). "
                "This machine may be offline: download the file elsewhere, then pass its "
                "path as --weights /path/to/file.pth, or use --weights none."
            ) from exc
    else:
        model = torchvision.models.get_model(backbone, weights=None)
        if weights not in ("none", "", None):
            _load_local_weights(model, Path(weights))
    width = _detach_head(backbone, model)
    return CXRNet(backbone, model, width, num_outputs)
