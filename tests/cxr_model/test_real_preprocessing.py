"""Real radiographs reach the model bit for bit the same through training, evaluation and serving:
as the PNGs they are, and as DICOM files made from them (8, 12 and 16 bits, MONOCHROME2 and
MONOCHROME1), each of which shows the PNG's anatomy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from cxr_model.classifier import Classifier
from cxr_model.dicom import decode
from cxr_model.engine import stack_levels
from cxr_model.labels import normalize_class_name
from cxr_model.preprocessing import PreprocessSpec, levels_to_unit, open_image, preprocess, resize_levels
from serve.inputs import decode_upload, model_levels
from tests.helpers import make_card, make_dicom
from training.dataset import ManifestDataset
from training.evaluate import predict_entries

SIZES = (224, 64)
DEPTHS = (8, 12, 16)
PHOTOMETRICS = ("MONOCHROME2", "MONOCHROME1")
MAX_PIXELS = PreprocessSpec().max_pixels


@pytest.fixture(scope="module")
def pngs(real_sample) -> list[Path]:
    """Five mode-L radiographs spread over the classes (three using the whole 0-255 range, two a
    narrower one) and three of the few stored as RGB."""
    by_mode: dict[str, list[Path]] = {}
    for path in sorted(real_sample.glob("*/images/*.png")):
        with Image.open(path) as image:  # the header alone: no pixels are decoded here
            by_mode.setdefault(image.mode, []).append(path)
    rgb = by_mode["RGB"]
    assert len(rgb) >= 3, "the sample's RGB files are part of what this test covers"
    ranges = {path: (grey_levels(path).min(), grey_levels(path).max()) for path in spread(by_mode["L"], 20)}
    whole = [path for path, extent in ranges.items() if extent == (0, 255)]
    narrower = [path for path, extent in ranges.items() if extent != (0, 255)]
    assert len(whole) >= 3 and len(narrower) >= 2
    return spread(whole, 3) + spread(narrower, 2) + spread(rgb, 3)


def spread(paths: list[Path], n: int) -> list[Path]:
    """n of the (sorted) paths, evenly spaced: across the class folders."""
    return [paths[i * len(paths) // n] for i in range(n)]


def grey_levels(png: Path) -> np.ndarray:
    """The PNG's 8-bit grey levels, converted as preprocessing converts RGB."""
    return np.asarray(Image.open(png).convert("L"))


def dicom_bytes(png: Path, bits: int, photometric: str) -> bytes:
    """A DX chest radiograph holding the PNG's grey levels scaled to ``bits``; MONOCHROME1 stores
    them inverted, so that it displays the same image."""
    top = 2**bits - 1
    stored = np.round(grey_levels(png) * (top / 255)).astype(np.uint8 if bits == 8 else np.uint16)
    if photometric == "MONOCHROME1":
        stored = top - stored
    data = make_dicom(stored, bits_stored=bits, photometric=photometric, patient_id=f"REAL-{png.stem[-3:]}")
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.ViewPosition = "PA"  # a modality's frontal chest film says so; make_dicom leaves it out
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dicoms(pngs, tmp_path_factory) -> dict[tuple[str, int, str], Path]:
    """(PNG name, bits, photometric) -> a DICOM file in a temporary folder (never in the repo)."""
    folder = tmp_path_factory.mktemp("real-dicom")
    files = {}
    for png in pngs:
        for bits in DEPTHS:
            for photometric in PHOTOMETRICS:
                path = folder / f"{png.stem}-{bits}-{photometric}.dcm"
                path.write_bytes(dicom_bytes(png, bits, photometric))
                files[png.name, bits, photometric] = path
    return files


class RecordingModel(Classifier):
    """Stands in for the network in ``predict_entries``: keeps the batches evaluation feeds it."""

    def __init__(self, card):  # no network: only the model input matters here
        self.card, self.batches = card, []

    def predict_batch(self, x: torch.Tensor) -> np.ndarray:
        self.batches.append(x.clone())
        return np.zeros((len(x), len(self.card.labels)), np.float32)


def label(png: Path) -> list[str]:
    return [normalize_class_name(png.parent.parent.name)]  # Kaggle layout: COVID/images/x.png


@pytest.mark.parametrize("size", SIZES)
def test_training_evaluation_and_serving_give_the_same_model_input(size, pngs, dicoms):
    spec = PreprocessSpec(input_size=size)
    card = make_card(size=size)
    by_name = {png.name: png for png in pngs}
    # Each file with its class; a DICOM copy has its PNG's.
    labels = {png: label(png) for png in pngs} | {path: label(by_name[key[0]]) for key, path in dicoms.items()}
    files = list(labels)
    references, levels = [], []
    # One manifest per folder, as a data set's manifest is relative to its root.
    for folder in dict.fromkeys(path.parent for path in files):
        group = [path for path in files if path.parent == folder]
        entries = [{"path": path.name, "labels": labels[path]} for path in group]
        training = ManifestDataset(folder, entries, card.label_set, spec)  # no augmentation
        recorder = RecordingModel(card)
        # In-process loading: loader workers only change which process runs the same decoding.
        predict_entries(recorder, card, folder, entries, batch_size=5, loader_workers=0)
        evaluation = torch.cat(recorder.batches)
        assert len(evaluation) == len(group)
        for index, path in enumerate(group):
            data = path.read_bytes()
            reference = preprocess(data, spec)
            assert reference.shape == (3, size, size) and reference.dtype == torch.float32
            # Serving: the Ingress decodes and resizes, the BatchedClassifier stacks and normalises
            # (through cxr_model.engine.stack_levels).
            served_levels = model_levels(decode_upload(data, spec.max_pixels), spec)
            assert served_levels.dtype == (np.uint8 if path.suffix == ".png" else np.float32)
            served = stack_levels([served_levels], spec)[0]
            for via, x in (("training", training[index][0]), ("evaluation", evaluation[index]), ("serving", served)):
                assert torch.equal(x, reference), f"{path.name} at {size} px differs via {via}"
            references.append(reference)
            levels.append(served_levels)
    # A served batch mixes uploads: 8-bit PNG levels and 16-bit DICOM levels stack row by row.
    assert torch.equal(stack_levels(levels, spec), torch.stack(references))


@pytest.mark.parametrize("bits", DEPTHS)
def test_monochrome1_and_monochrome2_decode_to_the_same_levels(bits, pngs, dicoms):
    for png in pngs:
        plain, header = decode(dicoms[png.name, bits, "MONOCHROME2"].read_bytes(), MAX_PIXELS)
        inverted, inverted_header = decode(dicoms[png.name, bits, "MONOCHROME1"].read_bytes(), MAX_PIXELS)
        assert header.bits_stored == bits and (header.photometric, inverted_header.photometric) == PHOTOMETRICS
        assert (header.modality, header.body_part, header.patient_id) == ("DX", "CHEST", f"REAL-{png.stem[-3:]}")
        assert np.array_equal(np.asarray(plain), np.asarray(inverted)), f"{png.name} at {bits} bits"


def test_eight_and_sixteen_bit_dicoms_decode_alike(pngs, dicoms):
    # The 16-bit file stores each 8-bit level times 257 exactly, so nothing may tell them apart.
    for png in pngs:
        eight = open_image(dicoms[png.name, 8, "MONOCHROME2"].read_bytes(), MAX_PIXELS)
        sixteen = open_image(dicoms[png.name, 16, "MONOCHROME2"].read_bytes(), MAX_PIXELS)
        assert np.array_equal(np.asarray(eight), np.asarray(sixteen)), png.name


# dicom.py maps the modality LUT's output through the file's VOI LUT or window when it has one; these
# files have none, so it windows to the file's own range: its lowest value black, its highest white
# (then 16-bit levels). In the PNG's grey levels (0-255) that display is lo + unit * (hi - lo), and
# it differs from the PNG by the rounding below, never by anatomy or contrast:
#  - 8 and 16 bits: only the decoder's rounding to 16-bit levels, half a step of (hi - lo) / 65535.
#  - 12 bits: each stored value is within half a 12-bit step (255 / 4095 / 2 PNG levels) of the
#    exact one, and so are the lowest and highest, which set the window: the pixel's own rounding
#    and the window's add up to at most 2 * 255 / 4095 (plus the 16-bit rounding above).
# At the model's input size the PNG's levels are also rounded by Pillow's 8-bit resize, once after
# each of its two passes (horizontal, then vertical): at most one more PNG grey level in all, while
# DICOM levels are resized as floats.
FULL_SIZE_BOUND = {8: 0.0, 12: 2 * 255 / 4095, 16: 0.0}
EPS = 1e-4  # float32 arithmetic on values up to 255


@pytest.mark.parametrize("bits", DEPTHS)
def test_dicom_shows_the_anatomy_of_its_png(bits, pngs, dicoms):
    exact = 0
    for png in pngs:
        grey = grey_levels(png)
        lo, hi = float(grey.min()), float(grey.max())
        rounding = FULL_SIZE_BOUND[bits] + 0.5 * (hi - lo) / 65535
        for photometric in PHOTOMETRICS:
            image = open_image(dicoms[png.name, bits, photometric].read_bytes(), MAX_PIXELS)
            shown = lo + np.asarray(image, np.float64) / 65535 * (hi - lo)
            assert np.abs(shown - grey).max() <= rounding + EPS, f"{png.name} {photometric}"
            if bits != 12 and (lo, hi) == (0, 255):  # a PNG using the whole range: the same levels exactly
                assert np.array_equal(levels_to_unit(grey), np.asarray(image, np.float32) / 65535)
                exact += 1
            for size in SIZES:
                dicom_input = lo + levels_to_unit(resize_levels(image, size)).astype(np.float64) * (hi - lo)
                png_input = levels_to_unit(resize_levels(Image.open(png), size)).astype(np.float64) * 255
                assert np.abs(dicom_input - png_input).max() <= 1 + rounding + EPS, f"{png.name} at {size} px"
    assert bits == 12 or exact, "no chosen PNG spans 0-255: the exact comparison never ran"


def test_monochrome1_matches_its_twin_where_rounding_ties():
    # Stored values 0-10 put (value / 10) * 65535 on a .5 tie for every odd value, where x and 1 - x
    # can round apart in float unless the inversion is done on the stored values. Several of the real
    # sample's narrower ranges meet such ties too (1 of 65535 off); this file makes sure one is met.
    ramp = np.tile(np.arange(11, dtype=np.uint8), (4, 1))
    plain, _ = decode(make_dicom(ramp, bits_stored=8), MAX_PIXELS)
    inverted, _ = decode(make_dicom(10 - ramp, bits_stored=8, photometric="MONOCHROME1"), MAX_PIXELS)
    assert np.array_equal(np.asarray(plain), np.asarray(inverted))
