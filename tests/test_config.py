"""Pipeline files: the three shipped ones load; bad ones name the file and the key."""

from __future__ import annotations

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
