"""The out-of-scope gate: image checks on generated pictures, the feature gate's maths and file."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cxr_model.checkpoint import read_card, sha256_file
from cxr_model.preprocessing import open_image, resize_levels
from cxr_model.scope import (
    GATE_FILE,
    LAYOUT_FILE,
    REASONS,
    FeatureGate,
    ImageLimits,
    LayoutGate,
    ScopeGateError,
    ScopeGates,
    check_image,
    fit_feature_gate,
    fit_layout_gate,
    load_scope,
)
from training.synthetic import OUT_OF_SCOPE_KINDS, render_chest, render_out_of_scope

LABELS = ("COVID-19", "Lung Opacity", "Normal", "Viral Pneumonia")


def verdict(image: Image.Image, limits: ImageLimits = ImageLimits()):
    return check_image(image, resize_levels(image, 64)[None], limits)


def encoded(image: Image.Image, fmt: str, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return open_image(buffer.getvalue(), 10**8)


def chest(seed: int) -> Image.Image:
    return Image.fromarray((render_chest(LABELS[seed % 4], np.random.default_rng(seed)) * 255).astype(np.uint8))


def test_chest_radiographs_pass_the_image_checks_in_every_form():
    for seed in range(24):
        image = chest(seed)
        forms = {
            "L": image,
            "RGB": image.convert("RGB"),
            "RGB JPEG": encoded(image.convert("RGB"), "JPEG", quality=80),
            "16-bit": Image.fromarray((np.asarray(image, dtype=np.uint16) * 257)).convert("I;16"),
        }
        for form, picture in forms.items():
            result = verdict(picture)
            assert result.in_scope, (seed, form, result.measures)


@pytest.mark.parametrize(
    "kind, reason", [("colour_photo", "colour_image"), ("blank", "blank_image"), ("noise", "noise_image")]
)
def test_photos_blank_and_noise_fail_the_image_checks_with_their_reason(kind, reason):
    rng = np.random.default_rng(3)
    for _ in range(12):
        result = verdict(encoded(render_out_of_scope(kind, rng), "PNG"))
        assert not result.in_scope and result.reason == reason, result.measures
        assert result.to_dict()["message"] == REASONS[reason]


def test_radiograph_like_pictures_are_left_to_the_feature_gate():
    """Greyscale photos and other body parts look like radiographs to pixel statistics."""
    rng = np.random.default_rng(4)
    for kind in ("greyscale_photo", "limb_radiograph", "skull_radiograph"):
        assert all(verdict(render_out_of_scope(kind, rng)).in_scope for _ in range(6)), kind


def test_image_limits_come_from_the_card_and_bind():
    image = chest(1).convert("RGB")
    tinted = Image.merge("RGB", [c.point(lambda v, k=k: min(255, v + 40 * k)) for k, c in enumerate(image.split())])
    assert not verdict(tinted).in_scope
    assert verdict(tinted, ImageLimits.from_dict({"max_colourfulness": 0.5})).in_scope
    with pytest.raises(TypeError):
        ImageLimits.from_dict({"max_colorfulness": 0.5})  # misspelt keys are errors, not ignored


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown out-of-scope kind"):
        render_out_of_scope("cat", np.random.default_rng(0))
    assert len(set(OUT_OF_SCOPE_KINDS)) == 6


def test_feature_gate_threshold_is_the_validation_quantile_and_far_points_fail():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 2.0, size=16)
    train, val = rng.normal(size=(400, 16)) * scale, rng.normal(size=(1000, 16)) * scale
    gate = fit_feature_gate(train, val, false_rejection=0.05)
    refused = np.mean(gate.distances(val) > gate.threshold)
    assert 0.04 <= refused <= 0.06
    # Distances follow the covariance: a shift along a low-variance axis counts for more.
    low, high = int(np.argmin(scale)), int(np.argmax(scale))
    step_low, step_high = np.zeros((1, 16)), np.zeros((1, 16))
    step_low[0, low] = step_high[0, high] = 3.0
    assert gate.distances(step_low)[0] > gate.distances(step_high)[0]
    far = rng.normal(size=(50, 16)) * scale + 6 * scale
    levels = [np.zeros((1, 8, 8), np.uint8)] * 50
    verdicts = ScopeGates(features=gate).verdicts(far, levels)
    assert all(not v.in_scope and v.reason == "unlike_chest_radiographs" for v in verdicts)
    assert verdicts[0].measures["feature_threshold"] == gate.threshold
    near = ScopeGates(features=gate, reason="unlike_synthetic_demo_images").verdicts(val[:50], levels)
    assert sum(v.in_scope for v in near) >= 45 and {v.reason for v in near} <= {None, "unlike_synthetic_demo_images"}


def chest_levels(seeds, size: int = 64) -> list[np.ndarray]:
    return [resize_levels(chest(seed), size)[None] for seed in seeds]


def test_the_layout_gate_ignores_exposure_and_refuses_what_is_laid_out_otherwise():
    gate = fit_layout_gate(chest_levels(range(100, 180)), chest_levels(range(200, 240)))
    chests = chest_levels(range(300, 320))
    assert np.mean(gate.level_distances(chests) <= gate.threshold) >= 0.9
    # Another window on the same anatomy: the layout part of the descriptor does not move.
    brighter = [np.clip(g.astype(np.float32) / 255 * 0.7 + 0.2, 0, 1) for g in chests]
    grid = LayoutGate.describe(chests[0])[:-10], LayoutGate.describe(brighter[0])[:-10]
    np.testing.assert_allclose(*grid, atol=0.05)
    # The same picture upside down or turned on its side is not a frontal chest radiograph.
    turned = [np.ascontiguousarray(np.rot90(g, k=k, axes=(1, 2))) for g in chests for k in (1, 2)]
    assert np.all(gate.level_distances(turned) > gate.threshold)
    rng = np.random.default_rng(5)
    for kind in ("greyscale_photo", "limb_radiograph", "skull_radiograph"):
        pictures = [resize_levels(render_out_of_scope(kind, rng), 64)[None] for _ in range(10)]
        assert np.all(gate.level_distances(pictures) > gate.threshold), kind


def test_an_image_is_in_scope_only_when_every_fitted_gate_accepts_it():
    rng = np.random.default_rng(6)
    features = fit_feature_gate(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), 0.05)
    layout = fit_layout_gate(chest_levels(range(100, 160)), chest_levels(range(200, 230)), 0.05)
    inside, outside = rng.normal(size=(1, 8)) * 0.1, np.full((1, 8), 9.0)
    chest_like, photo = chest_levels([400]), [resize_levels(render_out_of_scope("greyscale_photo", rng), 64)[None]]
    gates = ScopeGates(features, layout)
    cases = {(0, 0): True, (1, 0): False, (0, 1): False, (1, 1): False}
    for (far_features, far_layout), accepted in cases.items():
        verdict = gates.verdicts(outside if far_features else inside, photo if far_layout else chest_like)[0]
        assert verdict.in_scope is accepted, (far_features, far_layout, verdict.measures)
        assert {"feature_distance", "layout_distance", "layout_threshold"} <= set(verdict.measures)


def test_gate_file_round_trip_keeps_the_served_distances(tmp_path):
    rng = np.random.default_rng(1)
    gate = fit_feature_gate(rng.normal(size=(60, 32)), rng.normal(size=(30, 32)))
    gate.save(tmp_path / GATE_FILE)
    loaded = FeatureGate.load(tmp_path / GATE_FILE)
    probe = rng.normal(size=(20, 32))
    # fit_feature_gate thresholds on float32-rounded parameters, exactly what is stored.
    np.testing.assert_allclose(loaded.distances(probe), gate.distances(probe), rtol=1e-9)
    assert loaded.threshold == gate.threshold


def test_load_scope_verifies_the_gate_file_against_the_card(tiny_checkpoint, tmp_path):
    directory = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, directory)
    card = read_card(directory)
    limits, gates = load_scope(directory, card)
    assert gates.features.threshold == card.scope["feature_gate"]["threshold"]
    assert gates.layout.threshold == card.scope["layout_gate"]["threshold"]
    assert limits == ImageLimits()

    data = dict(np.load(directory / GATE_FILE))
    data["threshold"] = np.float64(1e9)  # a tampered gate that lets everything through
    with open(directory / GATE_FILE, "wb") as handle:
        np.savez(handle, **data)
    with pytest.raises(ScopeGateError, match="sha256"):
        load_scope(directory, card)
    (directory / GATE_FILE).unlink()
    with pytest.raises(ScopeGateError, match="missing"):
        load_scope(directory, card)

    card.scope = {}
    assert load_scope(directory, card) == (ImageLimits(), None)
    json.dumps(card.to_dict())  # the scope section stays JSON


def test_load_scope_reads_both_gates_and_a_demo_model_says_what_it_is(tiny_checkpoint, tmp_path):
    directory = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, directory)
    card = read_card(directory)
    gate = fit_layout_gate(chest_levels(range(100, 140)), chest_levels(range(200, 220)))
    gate.save(directory / LAYOUT_FILE)
    card.scope = card.scope | {"layout_gate": {"file": LAYOUT_FILE, "sha256": sha256_file(directory / LAYOUT_FILE)}}
    _, gates = load_scope(directory, card)
    assert gates.layout.threshold == gate.threshold and gates.reason == "unlike_chest_radiographs"
    card.synthetic_demo = True
    gates = load_scope(directory, card)[1]
    assert gates.reason == "unlike_synthetic_demo_images"
    text = REASONS[gates.reason]
    assert "trained only on generated pictures" in text and "CXR_CHECKPOINT" in text and "CXR_DEMO_DATA" in text
    (directory / LAYOUT_FILE).write_bytes(b"tampered")
    with pytest.raises(ScopeGateError, match="sha256"):
        load_scope(directory, card)


def test_the_image_checks_alone_accept_the_real_radiographs(real_sample):
    """Colour, blank and noise checks are model-independent: they must pass >= 99.5% of real chest
    X-rays, in whatever mode (L or RGB) and at the smallest and the usual model size."""
    files = sorted(real_sample.glob("*/images/*.png"))
    assert len(files) >= 1000
    for size in (64, 224):
        refused = []
        for path in files:
            image = open_image(path.read_bytes(), 10**8)
            result = check_image(image, resize_levels(image, size)[None], ImageLimits())
            if not result.in_scope:
                refused.append((path.name, result.reason, result.measures))
        assert len(refused) <= 0.005 * len(files), refused[:10]
