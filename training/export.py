"""``cxr export``: the verified fp32 ONNX export, and with ``--int8`` the opt-in quantised one.

The int8 export is calibrated on the checkpoint's validation split and must agree with fp32 on its
held-out test split and on out-of-scope pictures (``cxr_model.quantize``); the split comes from the
training run's manifest, checked against the hash in the model card. Every figure is printed and,
when the export is kept, written to the model card under ``exports.onnx_int8``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxr_model.preprocessing import levels_to_unit, normalize, open_image, resize_levels
from training.synthetic import OUT_OF_SCOPE_KINDS, render_out_of_scope


def model_inputs(images, spec) -> np.ndarray:
    """Decoded images -> normalised model inputs, through the serving path's own steps."""
    tensors = [
        normalize(torch.from_numpy(levels_to_unit(resize_levels(im, spec.input_size)[None])), spec) for im in images
    ]
    return torch.stack(tensors).numpy() if tensors else np.zeros((0, 3, spec.input_size, spec.input_size), np.float32)


def split_inputs(manifest: dict, split: str, count: int, spec) -> np.ndarray:
    root = Path(manifest["root"])
    entries = [e for e in manifest["entries"] if e["split"] == split][:count]
    return model_inputs([open_image((root / e["path"]).read_bytes(), spec.max_pixels) for e in entries], spec)


def out_of_scope_inputs(per_kind: int, spec, seed: int = 1) -> np.ndarray:
    """Generated out-of-scope pictures of every kind, through PNG bytes and the upload decoder."""
    from training.scope import _png

    rng = np.random.default_rng(seed)
    images = [
        open_image(_png(render_out_of_scope(kind, rng)), spec.max_pixels)
        for kind in OUT_OF_SCOPE_KINDS
        for _ in range(per_kind)
    ]
    return model_inputs(images, spec)


def _manifest_for(checkpoint: Path, card, path: str | None) -> dict:
    from training.splits import load_manifest

    manifest_path = Path(path) if path else checkpoint.resolve().parent / "split_manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(
            f"no split manifest at {manifest_path}: pass --manifest (the training run's split_manifest.json)"
        )
    manifest = load_manifest(manifest_path)
    if card.data_manifest_sha256 and manifest["sha256"] != card.data_manifest_sha256:
        raise SystemExit(f"{manifest_path} is not the split this checkpoint was trained on (sha256 differs)")
    return manifest


def run_export(args) -> int:
    from cxr_model.checkpoint import read_card, write_card
    from cxr_model.onnx_runtime import export_onnx
    from cxr_model.quantize import AgreementFloors, QuantizationRefused, cpu_int8_support, export_int8

    checkpoint = Path(args.checkpoint)
    record = export_onnx(checkpoint)
    print(
        f"wrote {checkpoint}/model.onnx (max |p_onnx - p_torch| = "
        f"{record['max_abs_probability_diff']:.1e}, tolerance {record['tolerance']:.0e})"
    )
    if not args.int8:
        return 0
    support = cpu_int8_support()
    print("CPU int8/bf16 instructions: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in support.items()))
    if not (support["avx512_vnni"] or support["avx_vnni"]):
        print("  no VNNI: the int8 export still runs, but gains less speed on this CPU")
    card = read_card(checkpoint)
    spec = card.preprocess_spec
    manifest = _manifest_for(checkpoint, card, args.manifest)
    calibration = split_inputs(manifest, "val", args.calibration_images, spec)
    held_out = split_inputs(manifest, "test", args.held_out_images, spec)
    out_of_scope = out_of_scope_inputs(args.ood_per_kind, spec)
    floors = AgreementFloors(top1=args.min_top1, max_abs_dp=args.max_dp, gate=args.min_gate_agreement)
    sources = {
        "calibration": f"val split, {len(calibration)} images",
        "held_out": f"test split, {len(held_out)} images",
    }
    try:
        int8 = export_int8(checkpoint, calibration, held_out, out_of_scope, floors, sources)
    except QuantizationRefused as refused:
        _print_agreement(refused.agreement)
        print(f"REFUSED: {refused}; model.int8.onnx not written")
        return 1
    _print_agreement_dict(int8["agreement"])
    card.exports = {**card.exports, "onnx_int8": int8}
    write_card(card, checkpoint)
    print(f"wrote {checkpoint}/model.int8.onnx; recorded in the model card (exports.onnx_int8)")
    return 0


def _print_agreement(agreement) -> None:
    from dataclasses import asdict

    _print_agreement_dict(asdict(agreement))


def _print_agreement_dict(a: dict) -> None:
    print(
        f"int8 vs fp32 on {a['held_out']} held-out radiographs: top-1 agreement {a['top1']:.4f} on the "
        f"{a['confident']} not flagged low confidence ({a['top1_all']:.4f} on all; "
        f"{a['low_confidence_flips']} flips on low-confidence images), "
        f"max |dp| {a['max_abs_dp']:.4f}; gate decisions on {a['gate_images']} images (held-out + out-of-scope): "
        f"{a['gate']:.4f} agree ({a['gate_disagreements']} differ), with images within "
        f"{a['gate_recheck_band']:.1%} of the threshold re-run in fp32 ({a['gate_rechecked']:.1%} of them)"
    )
