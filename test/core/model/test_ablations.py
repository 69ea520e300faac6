"""Each baseline / ablation switch changes the computation it names (tiny preset)."""

from __future__ import annotations

import pytest
import torch

from llmi3d_core import geometry
from llmi3d_core.errors import ConfigError, ModelOutputError
from llmi3d_core.model import text3d
from llmi3d_core.model.secba import build_fusion, windows_to_grid


def _outputs(model, batch):
    with torch.no_grad():
        return model.eval()(batch)


def test_default_combines_virtual_and_height_depth(make_model, make_batch):
    model = make_model()
    out = _outputs(model, make_batch(model.config))
    boxes, outputs = out.boxes, out.outputs
    size, K = torch.tensor([640.0, 480.0]), make_batch(model.config)["K"]
    z1 = outputs["depth"][:, 0] * (K[:, 0, 0] / 512.0) * (448.0 / size[0])
    h_px = (outputs["box2d"][:, 3] - outputs["box2d"][:, 1]) * size[1]
    z2 = K[:, 1, 1] * outputs["dims"][:, 2] / h_px
    assert torch.allclose(boxes["z_head"], z1, rtol=1e-5)
    assert torch.allclose(boxes["z_height"], z2, rtol=1e-5)
    assert torch.allclose(boxes["z"], (z1 + z2) / 2, rtol=1e-5)
    assert torch.allclose(boxes["center"][:, 2], boxes["z"], rtol=1e-5)


def test_no_height_depth_uses_the_head_depth_alone(make_model, make_batch):
    model = make_model(**{"heads.use_height_depth": False})
    boxes = _outputs(model, make_batch(model.config)).boxes
    assert "z_height" not in boxes
    assert torch.equal(boxes["z"], boxes["z_head"])


def test_no_virtual_depth_reads_metric_depth(make_model, make_batch):
    model = make_model(**{"heads.use_virtual_depth": False, "heads.use_height_depth": False})
    batch = make_batch(model.config)
    out = _outputs(model, batch)
    assert torch.allclose(out.boxes["z"], out.outputs["depth"][:, 0])
    model.train()
    losses = model(batch).losses
    expected = (out.outputs["depth"] - batch["center_cam"][:, 2:]).abs().mean() / 10.0
    assert losses["depth"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_xyz_regression_has_no_uv_or_depth_head(make_model, make_batch):
    model = make_model(**{"heads.location": "xyz"})
    batch = make_batch(model.config)
    out = _outputs(model, batch)
    assert set(out.outputs) == {"xyz", "rot6d", "dims", "box2d", "score_logit"}
    assert torch.equal(out.boxes["center"], out.outputs["xyz"])
    uv = geometry.project(out.outputs["xyz"], batch["K"])
    assert torch.allclose(out.boxes["center_uv_px"], uv)


def test_euler_rotation_head_and_target(make_model, make_batch):
    model = make_model(**{"heads.rotation": "euler"})
    batch = make_batch(model.config)
    out = _outputs(model, batch)
    assert out.outputs["euler"].shape == (2, 3) and "rot6d" not in out.outputs
    uv = out.boxes["center_uv_px"]
    R_allo = geometry.euler_to_matrix(out.outputs["euler"])
    expected = geometry.allocentric_to_egocentric(R_allo, uv[:, 0], uv[:, 1], batch["K"])
    assert torch.allclose(out.boxes["R"], expected, atol=1e-6)
    assert "rotation" in model.train()(batch).losses


def test_no_hr_branch_feeds_only_vit_tokens(make_model, make_batch):
    model = make_model(**{"high_res.enabled": False})
    assert model.high_res is None and model.fusion is None
    batch = make_batch(model.config)
    out = model(batch)
    assert out.depth_map is None and "depth_map" not in out.losses
    features = model.encode_image(batch["image_lr"], batch["image_hr"])
    assert features.tokens.shape[1] == model.config.low_res.grid**2
    batch["image_hr"] = torch.zeros_like(batch["image_hr"])
    assert torch.equal(
        model.encode_image(batch["image_lr"], batch["image_hr"]).tokens, features.tokens
    )


def test_no_depth_branch_has_no_depth_map(make_model, make_batch):
    model = make_model(**{"high_res.depth_branch": False})
    assert not hasattr(model.high_res, "conv_spatial")
    assert not hasattr(model.high_res, "depth_head")
    out = model(make_batch(model.config))
    assert out.depth_map is None and "depth_map" not in out.losses


@pytest.mark.parametrize(
    ("kind", "multiplier"),
    [
        ("secba", 1),
        ("secba_local", 1),
        ("maxpool", 1),
        ("concat", 2),
    ],
)
def test_fusion_variants_token_counts(make_model, make_batch, kind, multiplier):
    model = make_model(**{"fusion.kind": kind})
    batch = make_batch(model.config)
    tokens = model.encode_image(batch["image_lr"], batch["image_hr"]).tokens
    assert tokens.shape[1] == multiplier * model.config.low_res.grid**2
    assert "total" in model(batch).losses


@pytest.mark.parametrize(
    ("kind", "local"), [("secba", False), ("secba_local", True), ("maxpool", True)]
)
def test_local_variants_only_see_their_window(tiny_config, kind, local):
    """Changing HR features far from LR token 0 changes it only for global attention."""
    torch.manual_seed(0)
    config = tiny_config.replace(**{"fusion.kind": kind}).fusion
    fusion = build_fusion(config, lr_dim=8, hr_dim=6, grid=4)
    tokens = torch.randn(1, 16, 8)
    features = torch.randn(1, 6, 8, 8)  # r = 2: token 0 owns rows 0-1, columns 0-1
    changed = features.clone()
    changed[..., 4:, 4:] += 5.0
    before, after = fusion(tokens, features), fusion(tokens, changed)
    assert torch.equal(before[:, 0], after[:, 0]) == local
    assert not torch.equal(before[:, -1], after[:, -1])


def test_secba_position_encoding_tells_tokens_apart(tiny_config):
    """Identical LR tokens attend identically unless their positions are encoded."""
    torch.manual_seed(0)
    tokens = torch.zeros(1, 16, 8)
    features = torch.randn(1, 6, 8, 8)
    for encoded in (True, False):
        config = tiny_config.replace(**{"fusion.position_encoding": encoded}).fusion
        fusion = build_fusion(config, lr_dim=8, hr_dim=6, grid=4)
        assert (fusion.lr_position is not None) == encoded
        with torch.no_grad():
            out = fusion(tokens, features)
        assert torch.allclose(out[:, 0], out[:, -1]) != encoded


def test_no_pointer_ablation_is_the_plain_readout(make_model, make_batch):
    model = make_model(**{"heads.pointer": False})
    assert model.pointer is None
    out = model(make_batch(model.config))
    assert out.pointer_logits is None and "pointer" not in out.losses
    pointed = make_model()
    out = pointed(make_batch(pointed.config))
    grid = pointed.config.low_res.grid
    assert out.pointer_logits is not None and out.pointer_logits.shape[1] == grid**2
    assert torch.isfinite(out.losses["pointer"])


def test_windows_to_grid_layout():
    features = torch.arange(16.0).view(1, 1, 4, 4)
    windows, r = windows_to_grid(features, grid=2)
    assert r == 2
    assert windows[0, 0, :, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert windows[0, 3, :, 0].tolist() == [10.0, 11.0, 14.0, 15.0]


@pytest.mark.parametrize(
    ("readout", "uses_query"), [("query", True), ("pos_token", False), ("text_feature", False)]
)
def test_readouts_use_the_3d_query_only_when_named(make_model, make_batch, readout, uses_query):
    model = make_model(**{"heads.readout": readout})
    model(make_batch(model.config)).losses["total"].backward()
    grad = model.query_embedding.grad
    assert (grad is not None and bool(grad.abs().sum() > 0)) == uses_query


def test_pos_token_and_text_feature_read_different_positions(make_model, make_batch):
    outs = {}
    for readout in ("pos_token", "text_feature"):
        model = make_model(seed=3, **{"heads.readout": readout})
        outs[readout] = _outputs(model, make_batch(model.config)).outputs["center_uv"]
    assert not torch.allclose(outs["pos_token"], outs["text_feature"])


def test_text3d_has_no_heads_and_supervises_numbers(make_model, make_batch):
    model = make_model(**{"heads.readout": "text"})
    assert model.heads is None
    batch = make_batch(model.config)
    out = model(batch)
    assert out.outputs == {} and out.boxes == {}
    assert set(out.losses) == {"text", "depth_map", "total"}
    numbers = model._text3d_ids(batch, 0)
    assert len(numbers) > 30 and numbers[-1] == model.llm.eos_token_id


def test_text3d_format_parse_round_trip(tiny_config):
    config = tiny_config.heads
    values = {
        "center_uv": torch.tensor([0.5, 0.25]),
        "depth": torch.tensor([12.345]),
        "rot6d": torch.tensor([1.0, 0, 0, 0, 1, 0]),
        "dims": torch.tensor([1.0, 0.5, 2.0]),
        "box2d": torch.tensor([0.1, 0.2, 0.3, 0.4]),
    }
    text = text3d.format_numbers(values, config)
    assert text.startswith("0.500 0.250 12.35 1.000")
    parsed = text3d.parse_numbers(text, config)
    for name, value in values.items():
        assert torch.allclose(parsed[name][0], value, atol=5e-3), name


def test_text3d_unparsable_output_raises(tiny_config):
    with pytest.raises(ModelOutputError, match=r"holds 2 numbers, expected 16"):
        text3d.parse_numbers("lamp 1.0 2.0", tiny_config.heads)


def test_text3d_inference_reports_unparsable_text(make_model, make_batch):
    model = make_model(**{"heads.readout": "text", "llm.max_text_tokens": 4}).eval()
    batch = make_batch(model.config, size=1)
    context = model.prepare_context(model.encode_image(batch["image_lr"], batch["image_hr"]))
    with pytest.raises(ModelOutputError, match=r"Text3D output holds"):
        model.locate(context, "find the lamp", policy="ground")
    assert context.cache.get_seq_length() == context.prefix_length


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("heads.readout", "magic", "unknown heads.readout 'magic'; available: pos_token, query"),
        ("heads.location", "polar", "unknown heads.location 'polar'"),
        ("heads.rotation", "quat", "unknown heads.rotation 'quat'"),
        ("fusion.kind", "sum", "unknown fusion.kind 'sum'"),
        ("high_res.kind", "resnet", "unknown high_res.kind 'resnet'"),
        ("low_res.kind", "dino", "unknown low_res.kind 'dino'"),
        ("llm.kind", "gpt", "unknown llm.kind 'gpt'"),
    ],
)
def test_unknown_variant_names_are_rejected(make_model, key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_model(**{key: value})
