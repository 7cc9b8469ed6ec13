"""Class weights counter imbalance; focal loss reduces to cross-entropy at gamma 0."""

import pytest
import torch

from cxr_model.labels import COVID4, LabelSet
from training.losses import FocalLoss, class_weights

LABELS = LabelSet("multiclass", COVID4)


def test_class_weights_counter_imbalance():
    entries = (
        [{"labels": ["Normal"]}] * 6
        + [{"labels": ["COVID-19"]}] * 2
        + [{"labels": ["Lung Opacity"]}] * 2
        + [{"labels": ["Viral Pneumonia"]}] * 2
    )
    weights = class_weights(entries, LABELS)
    assert weights.mean().item() == pytest.approx(1.0)
    # COVID-19 is 3x rarer than Normal, so it weighs 3x as much.
    assert weights[0].item() == pytest.approx(3 * weights[COVID4.index("Normal")].item())


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    focal = FocalLoss("multiclass", gamma=0.0)(logits, target)
    torch.testing.assert_close(focal, torch.nn.functional.cross_entropy(logits, target))
    assert FocalLoss("multiclass", gamma=2.0)(logits, target) < focal
