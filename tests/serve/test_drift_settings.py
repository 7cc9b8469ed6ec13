"""The drift window's settings (serve.settings): one default each, from the environment, checked together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.settings import ServeSettings


def test_drift_window_defaults_environment_and_order(monkeypatch):
    settings = ServeSettings()
    assert (settings.drift_window, settings.drift_min_window) == (500, 100)
    monkeypatch.setenv("CXR_DRIFT_WINDOW", "2000")
    monkeypatch.setenv("CXR_DRIFT_MIN_WINDOW", "400")
    assert (ServeSettings().drift_window, ServeSettings().drift_min_window) == (2000, 400)
    with pytest.raises(ValidationError, match="CXR_DRIFT_MIN_WINDOW"):
        ServeSettings(drift_window=200, drift_min_window=300)
