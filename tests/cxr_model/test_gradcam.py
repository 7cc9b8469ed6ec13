import numpy as np
import pytest
import torch
from PIL import Image

from cxr_model.classifier import load_checkpoint
from cxr_model.gradcam import gradcam, overlay_heatmap
from cxr_model.network import build_model


def test_gradcam_on_a_served_classifier(tiny_checkpoint):
    classifier = load_checkpoint(tiny_checkpoint, device="cpu")
    assert not any(p.requires_grad for p in classifier.model.parameters())
    x = torch.randn(3, 64, 64)
    before = classifier.predict_batch(x[None])
    cam, index = gradcam(classifier.model, x)
    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert cam.std() > 0.01  # not a constant map
    assert index == int(before.argmax())
    # Explaining leaves the model as it was.
    assert np.array_equal(before, classifier.predict_batch(x[None]))
    assert all(p.grad is None for p in classifier.model.parameters())


def test_gradcam_targets_differ_and_survive_inplace_relu():
    torch.manual_seed(0)
    model = build_model("densenet121", 4, "none").eval()
    x = torch.randn(3, 64, 64)
    cam0, _ = gradcam(model, x, target=0)
    cam1, _ = gradcam(model, x, target=1)
    assert not np.allclose(cam0, cam1)
    # torchvision's DenseNet applies F.relu(inplace=True) right after `features`.
    cam_features, _ = gradcam(model, x, target=0, layer=model.backbone.features)
    assert cam_features.shape == (64, 64) and np.isfinite(cam_features).all()


def test_gradcam_for_resnet_and_overlay():
    # Seeded: a random-init network's Grad-CAM can be all zero for some draws, and the suite's order
    # (shuffled or not) must not decide this test.
    torch.manual_seed(0)
    model = build_model("resnet50", 4, "none").eval()
    cam, _ = gradcam(model, torch.randn(1, 3, 64, 64), target=2)
    base = Image.new("L", (120, 90), 100)
    overlay = overlay_heatmap(base, cam)
    assert overlay.size == (120, 90) and overlay.mode == "RGB"
    assert np.asarray(overlay).std() > 0


def test_gradcam_rejects_bad_target():
    model = build_model("densenet121", 4, "none")
    with pytest.raises(ValueError):
        gradcam(model, torch.randn(3, 64, 64), target=9)
