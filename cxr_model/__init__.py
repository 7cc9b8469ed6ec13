"""Model core: label sets, preprocessing, networks, checkpoints, Grad-CAM.

No Ray and no web framework here: training and serving both build on it.

The names below load on first use (PEP 562), so that importing a light module of this package
(``cxr_model.cli``, ``cxr_model.dicom``) does not load torch: every ``cxr`` command starts
through ``cxr_model.cli``, and ``cxr keys`` or ``cxr gateway`` need no network.
"""

from importlib import import_module

_EXPORTS = {
    "ModelCard": "cxr_model.checkpoint",
    "save_checkpoint": "cxr_model.checkpoint",
    "Classifier": "cxr_model.classifier",
    "load_checkpoint": "cxr_model.classifier",
    "resolve_device": "cxr_model.classifier",
    "COVID4": "cxr_model.labels",
    "MULTICLASS": "cxr_model.labels",
    "MULTILABEL": "cxr_model.labels",
    "NIH14": "cxr_model.labels",
    "LabelSet": "cxr_model.labels",
    "normalize_class_name": "cxr_model.labels",
    "CXRNet": "cxr_model.network",
    "build_model": "cxr_model.network",
    "PREPROCESSING_VERSION": "cxr_model.preprocessing",
    "ImageDecodeError": "cxr_model.preprocessing",
    "PreprocessSpec": "cxr_model.preprocessing",
    "preprocess": "cxr_model.preprocessing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxr_model' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
