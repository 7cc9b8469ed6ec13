"""Model core: label sets, preprocessing, networks, checkpoints, Grad-CAM.

No Ray and no web framework here: training and serving both build on it.
"""

from cxr_model.checkpoint import ModelCard, save_checkpoint
from cxr_model.classifier import Classifier, load_checkpoint, resolve_device
from cxr_model.labels import COVID4, MULTICLASS, MULTILABEL, NIH14, LabelSet, normalize_class_name
from cxr_model.network import CXRNet, build_model
from cxr_model.preprocessing import PREPROCESSING_VERSION, ImageDecodeError, PreprocessSpec, preprocess

__all__ = [
    "COVID4",
    "MULTICLASS",
    "MULTILABEL",
    "NIH14",
    "PREPROCESSING_VERSION",
    "CXRNet",
    "Classifier",
    "ImageDecodeError",
    "LabelSet",
    "ModelCard",
    "PreprocessSpec",
    "build_model",
    "load_checkpoint",
    "normalize_class_name",
    "preprocess",
    "resolve_device",
    "save_checkpoint",
]
