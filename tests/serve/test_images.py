"""What gets drawn into the annotated image, without Ray: the caption rounds like the page."""

from __future__ import annotations

import pytest

from cxr_model.annotate import caption
from serve.model_results import ModelInfo, ModelOutput
from serve.prediction import Prediction
from ui.views import probability


def model_info(**overrides) -> ModelInfo:
    fields = dict(
        runtime="torch",
        precision="fp32",
        name="m",
        version="1",
        backbone="densenet121",
        task="multiclass",
        labels=["Normal"] + [f"Other {i}" for i in range(9)],
        thresholds=[],
        weights_sha256="ab" * 32,
        preprocessing_version="cxr-pre-1",
        input_size=64,
        synthetic_demo=False,
        calibration_temperature=1.0,
        low_confidence_below=0.6,
        code_version="0.1.0",
        scope_gate={},
    )
    return ModelInfo(**(fields | overrides))


@pytest.mark.parametrize(
    "confidence, shown",
    [(0.9994, "99.9%"), (0.99951, ">99.9%"), (1.0, ">99.9%"), (0.5, "50.0%"), (0.12345, "12.3%")],
)
def test_the_annotated_caption_rounds_like_the_page_and_never_reads_certain(confidence, shown):
    # The rest spread over nine other labels, so that Normal is the top label even at 12%.
    output = ModelOutput([confidence] + [(1 - confidence) / 9] * 9, ["Normal"], False, model_info(), 1)
    prediction = Prediction(request=None, output=output)
    assert prediction.top_label == "Normal"
    assert caption(prediction.top_label, prediction.confidence) == f"Normal {shown}"
    assert shown == probability(confidence)  # the page's filter for the bars and the headline
