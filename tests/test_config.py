"""Pipeline files: the three shipped ones load; bad ones name the file and the key."""

from __future__ import annotations

import re

import pytest

from xrayscatter.config import load_config
from xrayscatter.errors import XrayscatterError

from helpers import REPO


@pytest.mark.parametrize("name", ["smoke", "default", "paper"])
def test_shipped_pipelines_load(name):
    config = load_config(REPO / "pipelines" / f"{name}.toml")
    assert config.name == name


def test_paper_preset_is_resnet50_at_224():
    config = load_config(REPO / "pipelines" / "paper.toml")
    assert config.resnet.input_size == 224 and config.resnet.width_multiplier == 1.0
    assert config.resnet.blocks == (3, 4, 6, 3)
    assert load_config(REPO / "pipelines" / "default.toml").resnet.blocks == (3, 4, 6, 3)  # the default is ResNet-50 too
    assert config.simulate.num_images == 100_000


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[simulate]\nnum_imagez = 3\n')
    with pytest.raises(XrayscatterError, match=r"bad\.toml.*simulate\.num_imagez"):
        load_config(path)


def test_bad_value_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[resnet]\nbatch_size = "big"\n')
    with pytest.raises(XrayscatterError, match=r"bad\.toml.*resnet\.batch_size.*integer"):
        load_config(path)
    path.write_text("[simulate]\nimage_size = 5\n")
    with pytest.raises(XrayscatterError, match=r"simulate\.image_size"):
        load_config(path)


def test_unknown_section(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[simulat]\nx = 1\n")
    with pytest.raises(XrayscatterError, match="unknown key 'simulat'"):
        load_config(path)


def test_missing_and_invalid_toml(tmp_path):
    with pytest.raises(XrayscatterError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "x.toml").write_text("name = ")
    with pytest.raises(XrayscatterError, match="not valid TOML"):
        load_config(tmp_path / "x.toml")


@pytest.mark.parametrize("line, key", [
    ('input_channels = ["log", "rgb"]', "resnet.input_channels"),
    ('input_channels = ["log", "log"]', "resnet.input_channels"),
    ("input_channels = []", "resnet.input_channels"),
    ('input_channels = "log"', "resnet.input_channels"),
    ("gaps_missing_fraction = 1.5", "resnet.gaps_missing_fraction"),
    ("beam_centre_weight = -1.0", "resnet.beam_centre_weight"),
    ("detail_size = 32", "resnet.detail_size"),  # below input_size (64)
    ("beam_centre_weight = 0.0\ndetail_size = 64", "resnet.detail_size"),  # the branch needs the head
    ("detail_crop = 4", "resnet.detail_crop"),
    ("detail_window = 0.0", "resnet.detail_window"),
    ("detail_window = 1.5", "resnet.detail_window"),
    ("batch_norm_images = -1", "resnet.batch_norm_images"),
    ('weight_averaging = "yes"', "resnet.weight_averaging"),
    ("threshold_precision = 0.0", "resnet.threshold_precision"),
    ("threshold_precision = 1.2", "resnet.threshold_precision"),
    ("threshold_floor = 1.0", "resnet.threshold_floor"),
    ("threshold_floor = -0.1", "resnet.threshold_floor"),
    ("blocks = [3, 4, 6]", "resnet.blocks"),
    ("blocks = [3, 0, 6, 3]", "resnet.blocks"),
])
def test_each_new_resnet_key_names_itself_when_bad(tmp_path, line, key):
    path = tmp_path / "bad.toml"
    path.write_text(f"[resnet]\ninput_size = 64\n{line}\n")
    with pytest.raises(XrayscatterError, match=rf"bad\.toml.*'{re.escape(key)}"):
        load_config(path)


def test_new_resnet_keys_load_and_default_to_the_three_channel_network_with_both_heads(tmp_path):
    from xrayscatter.config import INPUT_CHANNELS, ResNetConfig

    default = ResNetConfig()
    assert default.input_channels == ("filled", "contrast", "valid") and set(default.input_channels) <= set(INPUT_CHANNELS)
    assert default.beam_centre_weight > 0 and default.detail_size >= default.input_size
    path = tmp_path / "paper_network.toml"
    path.write_text('[resnet]\ninput_channels = ["log"]\nbeam_centre_weight = 0.0\ndetail_size = 0\n'
                    "weight_averaging = true\nthreshold_precision = 1.0\nthreshold_floor = 0.0\n")
    config = load_config(path)
    assert config.resnet.input_channels == ("log",) and config.resnet.beam_centre_weight == 0.0
    assert config.resnet.weight_averaging and config.resnet.threshold_floor == 0.0
