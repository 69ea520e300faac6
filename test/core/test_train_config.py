"""Training config: YAML + base files + key=value overrides, unknown keys and types rejected."""

import itertools
import re
from pathlib import Path

import pytest
import torch

from llmi3d_core.errors import ConfigError
from llmi3d_core.model import get_preset
from llmi3d_core.model.llmi3d import LLMI3D
from llmi3d_core.train_config import (
    OptimConfig,
    TrainConfig,
    apply_overrides,
    config_diff,
    config_from_dict,
    config_to_dict,
    load_train_config,
    parse_override,
    resolve_model_config,
)
from llmi3d_core.train_loop import BACKBONE_PREFIX, _param_groups, get_lr

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "config" / "train").glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_round_trip():
    """config_to_dict -> config_from_dict gives the same config."""
    config = TrainConfig()
    assert config_from_dict(config_to_dict(config)) == config


def test_yaml_with_base_and_overrides(tmp_path):
    """A file's keys override its base; CLI overrides win; YAML 1.1 '1e-3' is read as a float."""
    write(tmp_path / "base.yaml", "name: base\nmax_steps: 10\noptim:\n  lr: 1e-3\n  min_lr: 1e-4\n")
    write(tmp_path / "child.yaml", "base: base.yaml\nname: child\noptim:\n  warmup_steps: 3\n")
    config = load_train_config(tmp_path / "child.yaml", ["max_steps=20", "data.synth.seed=4"])
    assert config.name == "child"
    assert config.max_steps == 20
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.optim.warmup_steps == 3
    assert config.data.synth is not None and config.data.synth.seed == 4
    assert config.data.synth.num_images == 200  # default of the created section


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("nosuchkey=1", "Unknown config key: nosuchkey"),
        ("optim.nope=1", "Unknown config key: optim.nope"),
        ("max_steps=ten", "max_steps: expected int, got 'ten'"),
        ("batch_size=true", "batch_size: expected int"),
        ("optim.schedule=wavy", "optim.schedule 'wavy' is unknown"),
        ("method=magic", "method 'magic' is unknown"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("data.query_types=caption", "data.query_types: expected a list"),
        ("optim.lr", "must look like key=value"),
        ("max_steps.x=1", "max_steps: expected int, got {'x': 1}"),
    ],
)
def test_bad_overrides_are_rejected(override, match):
    """Unknown keys, wrong types and bad values raise ConfigError naming the key."""
    with pytest.raises(ConfigError, match=match):
        load_train_config(None, [override])


def test_random_and_cached_mirrors_exclude_each_other():
    assert load_train_config(None, ["data.mirrored_copies=true"]).data.mirrored_copies
    with pytest.raises(ConfigError, match=r"drop data\.mirrored_copies"):
        load_train_config(None, ["data.augment=true", "data.mirrored_copies=true"])


def test_bad_files(tmp_path):
    """Missing, non-mapping and looping files raise ConfigError."""
    with pytest.raises(ConfigError, match="Could not read training config"):
        load_train_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_train_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="base chain loops"):
        load_train_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(write(tmp_path / "bad.yaml", "a: [1, 2\n"))


def test_parse_override_values():
    """Values are YAML: ints, floats, bools, lists, null."""
    assert parse_override("a=3") == ("a", 3)
    assert parse_override("a=2e-5") == ("a", 2e-5)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=[caption, question]") == ("a", ["caption", "question"])
    assert parse_override("a=null") == ("a", None)
    assert apply_overrides({"x": {"y": 1}}, ["x.z=2"]) == {"x": {"y": 1, "z": 2}}
    with pytest.raises(ConfigError, match="x is 1, not a section"):
        apply_overrides({"x": 1}, ["x.y=2"])


def test_config_diff():
    """Dotted keys of differing values."""
    a = config_to_dict(TrainConfig())
    b = config_to_dict(load_train_config(None, ["optim.lr=0.01", "seed=3"]))
    assert config_diff(a, b) == ["optim.lr", "seed"]


def test_model_section_resolves_and_checks():
    """The model section is a preset plus overrides, checked by the model's own config."""
    model = resolve_model_config({"preset": "tiny", "heads": {"readout": "text"}})
    assert model.name == "tiny" and model.heads.readout == "text"
    with pytest.raises(ConfigError, match="Unknown config key"):
        resolve_model_config({"preset": "tiny", "heads": {"nope": 1}})
    with pytest.raises(ConfigError, match="unknown model preset"):
        resolve_model_config({"preset": "huge"})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    """Every config/train/*.yaml loads, and its model section resolves."""
    config = load_train_config(path)
    if config.method == "model":
        resolve_model_config(config.model)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_stages_suit_their_model(path):
    """A recipe's stages can train its model (checked without building the model).

    The pointer stage trains the candidate pointer alone, so it needs heads.pointer; the crops
    stage trains the crop heads, so it needs detector.crop_heads (and the HR branch), and crop
    heads need it (nothing else fits them); Text3D
    (heads.readout: text) has no pointer (LLMI3D refuses text with heads.pointer).
    """
    config = load_train_config(path)
    if config.method != "model":
        return
    model = resolve_model_config(config.model)
    kinds = [stage.kind for stage in config.stages]
    if "pointer" in kinds:
        assert model.heads.pointer, f"{path.name}: a pointer stage, but heads.pointer is false"
    if "crops" in kinds:
        assert model.detector.crop_heads and model.high_res.enabled, (
            f"{path.name}: a crops stage, but no crop heads"
        )
    if model.detector.crop_heads and model.high_res.enabled:
        assert "crops" in kinds, f"{path.name}: crop heads, but no crops stage fits them"
    if model.heads.readout == "text":
        assert not model.heads.pointer, f"{path.name}: Text3D needs heads.pointer: false"


def test_get_lr_schedule():
    """Warm-up rises to lr, cosine decays to min_lr at decay_steps, then stays there."""
    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4, schedule="cosine")
    lrs = [get_lr(step, optim, 20) for step in range(25)]
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[12] == pytest.approx(0.55)  # half-way through the decay
    assert lrs[20:] == pytest.approx([0.1] * 5)
    linear = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="linear")
    assert get_lr(5, linear, 10) == pytest.approx(0.5)
    constant = OptimConfig(lr=0.5, min_lr=0.0, warmup_steps=0, schedule="constant")
    assert {get_lr(s, constant, 10) for s in range(12)} == {0.5}
    with pytest.raises(ConfigError, match=r"min_lr <= optim\.lr"):
        OptimConfig(lr=0.1, min_lr=0.2)


def test_param_groups_slow_down_the_backbone_alone():
    """optim.backbone_lr_scale: every trainable parameter in exactly one group; the HR backbone's
    groups carry the scale, the others 1; decay on matrices only; frozen parameters left out."""
    model = LLMI3D(get_preset("tiny"))
    model.low_res.requires_grad_(False)
    named = {id(p): n for n, p in model.named_parameters()}
    groups = _param_groups(model, 0.05, backbone_lr_scale=0.1)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    assert {g["lr_scale"] for g in groups} == {0.1, 1.0}
    for group in groups:
        for param in group["params"]:
            assert group["lr_scale"] == (0.1 if named[id(param)].startswith(BACKBONE_PREFIX) else 1)
            assert group["weight_decay"] == (0.05 if param.dim() >= 2 else 0.0)
    plain = _param_groups(model, 0.05)
    assert {g["lr_scale"] for g in plain} == {1.0} and len(plain) == 2
    optimizer = torch.optim.AdamW(groups, lr=1.0)  # the extra key travels with the group
    assert [g["lr_scale"] for g in optimizer.param_groups] == [g["lr_scale"] for g in groups]
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        OptimConfig(backbone_lr_scale=0.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-3", "optim.lrr; did you mean 'lr'?"),
        ("model.heads.pointr=false", "model.heads.pointr; did you mean 'pointer'?"),
        ("model.llm.lora_rnk=4", "model.llm.lora_rnk; did you mean 'lora_rank'?"),
        (
            "data.synth.options.camera_group=[vga_normal]",
            "camera_group; did you mean 'camera_groups'",
        ),
        (
            "data.synth.options.queries.captions_per_imag=2",
            "data.synth.options.queries.captions_per_imag; did you mean 'captions_per_image'?",
        ),
        ("stages=[{kind: detector, max_step: 5}]", "stages[0].max_step; did you mean 'max_steps'?"),
        ("model.heads.xyzzy=1", "model.heads.xyzzy (allowed here: depth_fusion, "),
    ],
)
def test_a_typo_anywhere_fails_at_load_time_with_its_path_and_nearest_name(override, message):
    """Every section, the free-form model and generator ones too, is checked when read."""
    with pytest.raises(ConfigError, match="Unknown config key: .*" + re.escape(message)):
        load_train_config(None, [override, "data.synth.num_images=4"])
