"""bench/'s load-test kit against the running service (loopback, bounded in time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_headless_ramp_writes_a_report_and_a_plot(service, tmp_path):
    out = tmp_path / "load"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            "--host",
            service.base_url,
            "--users",
            "1,3",
            "--step-seconds",
            "6",
            "--warmup-seconds",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CXR_API_KEY": service.api_key},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert [s["users"] for s in report["steps"]] == [1, 3]
    for step in report["steps"]:
        assert step["images_per_s"] > 0 and step["total"]["error_rate"] == 0
        assert step["total"]["p50_ms"] <= step["total"]["p99_ms"]
    assert {"predict", "predict+save", "search"} <= set(report["steps"][-1]["endpoints"])
    assert "| users | images/s |" in (out / "report.md").read_text()
    assert Image.open(out / "load.png").size[0] > 600


def test_ramp_refuses_a_non_loopback_host(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--host", "http://10.11.12.13:8000", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "not loopback" in result.stderr
    assert not (tmp_path / "report.json").exists()


def test_locustfile_runs_under_the_locust_command(service):
    locust = Path(sys.executable).with_name("locust")
    result = subprocess.run(
        [
            str(locust),
            "-f",
            str(ROOT / "bench" / "locustfile.py"),
            "--host",
            service.base_url,
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "6s",
            "--only-summary",
            "--exit-code-on-error",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"CXR_LOAD_THINK_S": "0.2", "PATH": "", "CXR_API_KEY": service.api_key},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predict" in result.stderr + result.stdout
