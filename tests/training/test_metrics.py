import numpy as np
import pytest

from cxr_model.labels import LabelSet
from training.metrics import bootstrap_ci, classification_metrics, expected_calibration_error, macro_f1, tune_thresholds

LABELS = LabelSet("multiclass", ("A", "B", "C"))
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
PROBS = np.array(
    [
        [0.85, 0.10, 0.05],  # A, right, conf .85
        [0.65, 0.30, 0.05],  # A, right, conf .65
        [0.20, 0.75, 0.05],  # B, wrong, conf .75
        [0.10, 0.85, 0.05],  # B, right, conf .85
        [0.55, 0.40, 0.05],  # A, wrong, conf .55
        [0.10, 0.15, 0.75],  # C, right, conf .75
    ]
)


def test_hand_computed_multiclass_case():
    m = classification_metrics(Y_TRUE, PROBS, LABELS, n_bins=10)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["A"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3, "roc_auc": 8 / 9}
    )
    assert m["per_class"]["B"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["B"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["C"]["f1"] == pytest.approx(1.0)
    assert m["per_class"]["C"]["roc_auc"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # Bins (.5,.6]: 1 wrong at .55; (.6,.7]: 1 right at .65; (.7,.8]: 1/2 at .75; (.8,.9]: 2/2 at .85.
    assert m["ece"] == pytest.approx((0.55 + 0.35 + 2 * 0.25 + 2 * 0.15) / 6)
    assert [b["count"] for b in m["calibration_bins"]] == [1, 1, 2, 2]


def test_ece_is_zero_when_confidence_matches_accuracy():
    ece, _ = expected_calibration_error(np.array([0.75] * 4), np.array([1, 1, 1, 0]))
    assert ece == pytest.approx(0.0)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    lo, hi = bootstrap_ci(Y_TRUE, PROBS, LABELS, macro_f1, n_resamples=300, seed=1)
    assert lo <= macro_f1(Y_TRUE, PROBS, LABELS) <= hi and lo < hi
    assert (lo, hi) == bootstrap_ci(Y_TRUE, PROBS, LABELS, macro_f1, n_resamples=300, seed=1)


def test_multilabel_metrics_and_thresholds():
    labels = LabelSet("multilabel", ("Effusion", "Mass"), (0.5, 0.3))
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.35], [0.6, 0.2], [0.4, 0.1]])
    m = classification_metrics(y, p, labels)
    # Predictions: [1,0], [0,1], [1,0], [0,0] -> 3 of 4 rows exactly right.
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["per_class"]["Effusion"]["f1"] == pytest.approx(1.0)
    assert m["per_class"]["Mass"]["recall"] == pytest.approx(0.5)
    assert np.array(m["confusion_matrix"]).shape == (2, 2, 2)
    tuned = tune_thresholds(y, p)
    assert tuned[1] <= 0.2  # catching both Mass cases needs a threshold at or below 0.2


def _overconfident(task: str, n: int = 4000, scale: float = 3.0, seed: int = 0):
    """Labels drawn from softmax/sigmoid(z), logits reported as scale * z: a model overconfident by `scale`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 4))
    if task == "multiclass":
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        y = np.array([rng.choice(4, p=row) for row in p])
    else:
        y = (rng.random((n, 4)) < 1 / (1 + np.exp(-z))).astype(int)
    return scale * z, y


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_temperature_scaling_recovers_the_overconfidence_factor(task):
    from training.metrics import fit_temperature

    logits, y = _overconfident(task)
    temperature = fit_temperature(logits, y, task)
    assert 2.6 < temperature < 3.4
    calibrated, _ = _overconfident(task, scale=1.0)
    assert abs(fit_temperature(calibrated, y, task) - 1.0) < 0.15


def test_temperature_scaling_lowers_ece_and_keeps_the_ranking():
    import torch

    from cxr_model.classifier import probabilities_from_logits
    from cxr_model.labels import COVID4, LabelSet
    from training.metrics import classification_metrics, fit_temperature

    logits, y = _overconfident("multiclass")
    labels = LabelSet("multiclass", COVID4)
    t = fit_temperature(logits, y, "multiclass")
    before = probabilities_from_logits(torch.from_numpy(logits), "multiclass").numpy()
    after = probabilities_from_logits(torch.from_numpy(logits), "multiclass", t).numpy()
    assert (before.argmax(1) == after.argmax(1)).all()
    assert classification_metrics(y, after, labels)["ece"] < classification_metrics(y, before, labels)["ece"] / 2
