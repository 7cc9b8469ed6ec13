"""Prediction's own text, without Ray: what gets drawn into the annotated image."""

from __future__ import annotations

import pytest

from serve.studies import Prediction
from ui.views import percent


@pytest.mark.parametrize("confidence, shown", [(0.9994, "99.9%"), (0.5, "50.0%"), (0.12345, "12.3%")])
def test_the_annotated_caption_rounds_like_the_page(confidence, shown):
    prediction = Prediction(inputs=None, probabilities={"Normal": confidence, "COVID-19": 1 - confidence},
                            top_label="Normal", positives=["Normal"], model={}, batch_size=1)
    assert prediction.caption == f"Normal {shown}"
    assert shown == percent(confidence)  # the page's filter for the bars and the headline
