"""Grad-CAM (Selvaraju et al., 2017) for ``CXRNet``.

torchvision's DenseNet applies ``F.relu(..., inplace=True)`` after its feature
stack, and dense layers use in-place ReLU modules, so module backward hooks
(or keeping a reference to a layer's output) see tensors that were overwritten
later in the forward pass. Instead the forward hook hands the rest of the
network a clone of a fresh leaf made from the activation, and the gradient is
taken with ``torch.autograd.grad`` with respect to that leaf: in-place
operations downstream act on the clone, never on what we differentiate, and
it works even when every parameter has ``requires_grad=False`` (serving).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_model.network import CXRNet
from cxr_model.preprocessing import display_image


def gradcam(
    model: CXRNet, inputs: torch.Tensor, target: int | None = None, layer: torch.nn.Module | None = None
) -> tuple[np.ndarray, int]:
    """Heatmap in [0, 1] at input resolution for one image [3, S, S] or [1, 3, S, S].

    ``target`` is the label index (default: the top-scoring label). Returns the
    heatmap [S, S] and the target index used.
    """
    layer = layer if layer is not None else model.gradcam_layer()
    x = inputs.unsqueeze(0) if inputs.dim() == 3 else inputs
    if x.shape[0] != 1:
        raise ValueError("gradcam explains one image at a time")
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured["activation"] = leaf
        # Downstream in-place ops (DenseNet's relu_) then act on this copy, not on the leaf.
        return leaf.clone()

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            logits = model(x.float())
            index = int(logits[0].argmax()) if target is None else int(target)
            if not 0 <= index < logits.shape[1]:
                raise ValueError(f"target {index} out of range for {logits.shape[1]} labels")
            activation = captured["activation"]
            (grads,) = torch.autograd.grad(logits[0, index], activation)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    return cam.cpu().numpy().astype(np.float32), index


def _jet(values: np.ndarray) -> np.ndarray:
    """A small jet-like colour map, to avoid matplotlib in the serving path."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    red = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.concatenate([red, green, blue], axis=-1)


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a [0, 1] heatmap, coloured, over the image at the image's own size."""
    base = np.asarray(display_image(image).convert("RGB"), dtype=np.float32) / 255.0
    heat = Image.fromarray((heatmap * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    colour = _jet(np.asarray(heat, dtype=np.float32) / 255.0)
    weight = alpha * (np.asarray(heat, dtype=np.float32) / 255.0)[..., None]
    blended = base * (1 - weight) + colour * weight
    return Image.fromarray((blended * 255).round().astype(np.uint8))
