"""Model configuration: dataclass defaults, dict/YAML loading, presets, checked errors."""

from __future__ import annotations

import json

import pytest

from llmi3d_core.errors import ConfigError
from llmi3d_core.geometry import VirtualCamera
from llmi3d_core.model import (
    PRESETS,
    config_from_dict,
    get_preset,
    load_config_file,
    resolve_config,
)
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.paths import config_path


def test_defaults_come_from_the_virtual_camera():
    config = ModelConfig()
    assert config.virtual_camera == VirtualCamera()


def test_dict_round_trip_for_every_preset():
    for name in PRESETS:
        config = get_preset(name)
        data = json.loads(json.dumps(config.to_dict()))
        assert config_from_dict(data) == config


def test_lists_become_tuples_and_ints_floats():
    config = config_from_dict({"high_res": {"image_size": [32, 64]}, "heads": {"depth_scale": 5}})
    assert config.high_res.image_size == (32, 64)
    assert isinstance(config.heads.depth_scale, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"heads": {"readouts": "query"}}, "heads.readouts; did you mean 'readout'"),
        ({"colour": 1}, "Unknown config key: colour "),
        ({"llm": {"lora_rank": "64"}}, "llm.lora_rank: expected int, got '64'"),
        ({"llm": {"lora_rank": True}}, "llm.lora_rank: expected int, got True"),
        ({"high_res": {"image_size": [1, 2, 3]}}, r"high_res.image_size: expected 2 values"),
        ({"heads": 3}, "heads: expected a mapping"),
        ({"low_res": {"image_size": 100, "patch_size": 16}}, "not a multiple of"),
        ({"high_res": {"depths": [1]}}, "must have the same length"),
        ({"high_res": {"image_size": [32, 48]}}, r"\(32, 48\) must be multiples of 32"),
        ({"detector": {"max_objects": 0}}, "detector.max_objects must be >= 1, got 0"),
        ({"detector": {"nms_kernel": 2}}, "detector.nms_kernel must be odd and >= 1, got 2"),
        ({"detector": {"candidate_nms": "soft"}}, "detector.candidate_nms 'soft' is unknown"),
        ({"detector": {"candidate_nms_iou": 1.0}}, r"candidate_nms_iou must be in \(0, 1\)"),
        ({"heads": {"height_extent": "box"}}, "heads.height_extent 'box' is unknown; allowed"),
        ({"heads": {"depth_fusion": "max"}}, "heads.depth_fusion 'max' is unknown; allowed"),
        ({"heads": {"location": "xyz"}}, "heads.location 'xyz' needs heads.pointer: false"),
        ({"high_res": {"enabled": False}}, "heads.pointer needs the HR branch"),
        (
            {"high_res": {"depth_branch": False}, "heads": {"use_height_depth": False}},
            "leaves no depth estimate",
        ),
    ],
)
def test_bad_config_data_is_rejected(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_replace_with_dotted_keys():
    config = get_preset("tiny").replace(**{"heads.rotation": "euler", "fusion.kind": "concat"})
    assert config.heads.rotation == "euler" and config.fusion.kind == "concat"
    with pytest.raises(ConfigError, match=r"Unknown config key: heads.nope "):
        config.replace(**{"heads.nope": 1})


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown model preset 'big'; available: tiny, smol, hf"):
        get_preset("big")


def test_yaml_file_overrides_a_preset(tmp_path):
    path = tmp_path / "ablation.yaml"
    path.write_text("preset: tiny\nheads:\n  use_height_depth: false\n")
    config = resolve_config(path)
    assert config.name == "tiny" and not config.heads.use_height_depth
    assert config.llm == get_preset("tiny").llm


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"Could not read model config"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping, got list"):
        load_config_file(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("preset: tiny\nheads:\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"Unknown config key: heads.colour "):
        load_config_file(unknown)


@pytest.mark.parametrize("name", ["tiny.yaml", "smol.yaml", "hf_paper.yaml"])
def test_shipped_yaml_files_load(name):
    config = load_config_file(config_path("model", name))
    assert isinstance(config, ModelConfig)


def test_paper_yaml_matches_the_paper_lora():
    config = load_config_file(config_path("model", "hf_paper.yaml"))
    assert (config.llm.lora_rank, config.llm.lora_alpha) == (64, 16)
    assert config.low_res.kind == "clip" and config.high_res.kind == "convnext"


def test_hf_preset_without_paths_says_what_to_set():
    from llmi3d_core.model import LLMI3D

    with pytest.raises(ConfigError, match=r"llm.kind 'pretrained' needs llm.path"):
        LLMI3D(get_preset("hf"))
