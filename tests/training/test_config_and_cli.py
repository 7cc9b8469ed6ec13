import io
from collections import Counter

import pytest
from PIL import Image

from cxr_model.cli import main as cxr
from training.cli import DEMO_CONFIG
from training.config import TrainConfig, add_train_arguments, config_from_args, load_config, save_config


def parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data_dir: /data\nbackbone: resnet50\nstage2: {epochs: 7, lr: 0.0002}\n")
    config = parse(["--config", str(path), "--stage2-lr", "0.0005", "--workers", "2", "--patience", "4"])
    assert config.backbone == "resnet50"
    assert config.stage2.epochs == 7 and config.stage2.lr == 0.0005
    assert config.workers == 2 and config.stage1.patience == config.stage2.patience == 4


@pytest.mark.parametrize(
    "text, key",
    [
        ("data_dir: /d\nbackbon: resnet50\n", "backbon"),
        ("data_dir: /d\nstage2: {epochs: 3, learning_rate: 0.1}\n", "stage2.*learning_rate"),
    ],
)
def test_misspelt_keys_are_errors(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=key):
        load_config(path)


def test_saved_config_loads_back_identically(tmp_path):
    config = TrainConfig(data_dir="/d", split_fractions=(0.8, 0.1, 0.1))
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


def test_demo_config_is_valid():
    config = load_config(DEMO_CONFIG)
    config.data_dir = "/somewhere"
    assert config.validate().synthetic_demo and config.backbone == "densenet161"


def test_make_demo_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cxr(["data", "make-demo", str(out), "--per-class", "12", "--seed", "3"]) == 0
    images = sorted(out.glob("*/images/*.png"))
    assert len(images) == 48
    assert {p.parent.parent.name for p in images} == {"COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"}
    modes = Counter(Image.open(io.BytesIO(p.read_bytes())).mode for p in images)
    sizes = {Image.open(p).size for p in images}
    assert sizes == {(299, 299)}
    assert modes["L"] > modes["RGB"] > 0
    capsys.readouterr()
    assert cxr(["data", "summary", str(out), "--chart", str(tmp_path / "chart.png")]) == 0
    printed = capsys.readouterr().out
    for label in ("COVID-19", "Lung Opacity", "Normal", "Viral Pneumonia"):
        assert label in printed
    assert "25.0%" in printed and "48" in printed
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
